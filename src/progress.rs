//! Progress bars on stderr, shown only when stderr is a terminal and the user did not ask for quiet.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);

/// The one set of bars on stderr, shared by every variant and by the log writer.
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// Variant names by the id of their span (see [`name_span`]), so bars made inside a variant can say whose they are.
static SPAN_NAMES: Mutex<Option<HashMap<tracing::span::Id, String>>> = Mutex::new(None);

/// Records that `span` belongs to variant `name`.
pub fn name_span(span: &tracing::Span, name: &str) {
    if let Some(id) = span.id() {
        SPAN_NAMES.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(HashMap::new).insert(id, name.into());
    }
}

/// The variant whose span is current, if any.
fn current_variant() -> Option<String> {
    let id = tracing::Span::current().id()?;
    SPAN_NAMES.lock().unwrap_or_else(|p| p.into_inner()).as_ref()?.get(&id).cloned()
}

fn visible() -> bool {
    !QUIET.load(Ordering::Relaxed) && std::io::stderr().is_terminal()
}

/// One line per variant on a terminal: its name and stage (waiting, the latest step it logged, done or failed),
/// above the transfer bars. Hidden when stderr is not a terminal, where the log lines say the same.
#[derive(Clone, Debug)]
pub struct StageLine {
    bar: ProgressBar,
    name: String,
}

/// The stage lines of running variants by their span name, for [`stage_from_log`].
static STAGES: Mutex<Option<HashMap<String, StageLine>>> = Mutex::new(None);

/// Shows `message` (a log line of variant `key`) as that variant's stage, if it has a running stage line.
pub fn stage_from_log(key: &str, message: &str) {
    let stages = STAGES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(line) = stages.as_ref().and_then(|s| s.get(key)) {
        let short: String = message.chars().take(100).collect();
        line.set(&short);
    }
}

impl StageLine {
    /// A line for the variant whose span is named `key`, shown as `name`.
    pub fn new(key: &str, name: &str) -> Self {
        let bar = if visible() { bars().add(ProgressBar::new_spinner()) } else { ProgressBar::hidden() };
        if !bar.is_hidden() {
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        let line = Self { bar, name: name.to_string() };
        line.set("waiting");
        if !line.bar.is_hidden() {
            STAGES
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(HashMap::new)
                .insert(key.into(), line.clone());
        }
        line
    }

    /// Shows `stage`.
    pub fn set(&self, stage: &str) {
        self.bar.set_message(format!("{}: {stage}", self.name));
    }

    /// Shows the final `state` and stops the spinner; the line stays.
    pub fn finish(&self, state: &str) {
        if let Some(stages) = STAGES.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            stages.retain(|_, line| line.name != self.name);
        }
        self.bar.finish_with_message(format!("{}: {state}", self.name));
    }
}

/// Runs `f` (writing a log line) with the progress bars hidden, and redraws them after, so log lines and bars
/// never overwrite each other.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    bars().suspend(f)
}

/// Turns progress bars off for the whole process (`-q`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// How often a transfer reports its progress as a log line when stderr is not a terminal (CI logs).
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A byte-counting progress bar; on a terminal a bar, otherwise a log line every [`LOG_INTERVAL`] (in the span it
/// was created in, so the line names its variant) — also while no byte moves, so a stalled transfer shows in CI logs
/// as one. Cheap to clone and safe to share.
#[derive(Clone, Debug)]
pub struct Progress {
    bar: ProgressBar,
    /// For log lines; `None` on a terminal or with `-q`.
    log: Option<Arc<LogLines>>,
    /// Whether the first byte has been counted, for the timeline (shared by clones).
    started: Arc<AtomicBool>,
}

/// The log-line side of a [`Progress`]: shared by its clones and, weakly, by the thread that writes the lines.
#[derive(Debug)]
struct LogLines {
    bar: ProgressBar,
    span: tracing::Span,
    /// When the last line was written.
    last: Mutex<Instant>,
    finished: AtomicBool,
}

impl LogLines {
    /// Writes a line if the last one is [`LOG_INTERVAL`] old.
    fn maybe_log(&self) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() < LOG_INTERVAL || self.finished.load(Ordering::Relaxed) {
            return;
        }
        *last = Instant::now();
        let (done, total) = (self.bar.position(), self.bar.length().unwrap_or(0).max(1));
        let mib = |b: f64| b / f64::from(1u32 << 20);
        self.span.in_scope(|| {
            tracing::info!(
                "{}: {:.1} of {:.1} MiB ({}%), {:.1} MiB/s, eta {} s",
                self.bar.message(),
                mib(done as f64),
                mib(total as f64),
                done * 100 / total,
                mib(self.bar.per_sec()),
                self.bar.eta().as_secs()
            )
        });
    }

    /// A thread that writes the line when the interval is over even if nothing moved; it ends with the transfer.
    fn tick(lines: &Arc<LogLines>) {
        let weak = Arc::downgrade(lines);
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                match weak.upgrade() {
                    Some(lines) if !lines.finished.load(Ordering::Relaxed) => lines.maybe_log(),
                    _ => break,
                }
            }
        });
    }
}

impl Progress {
    /// A bar for `total` bytes labelled `label`.
    pub fn bytes(total: u64, label: &str) -> Self {
        let quiet = QUIET.load(Ordering::Relaxed);
        let visible = visible();
        // A hidden bar still counts, so rate and ETA are there for the log lines.
        let bar = if visible {
            ProgressBar::new(total)
        } else {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
        };
        if visible {
            // Variants upload in parallel: their bars stack instead of overwriting each other.
            bars().add(bar.clone());
            if let Ok(style) = ProgressStyle::with_template(
                "{msg:>20} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
        }
        // Inside a variant, the bar (and its log lines) says whose transfer it is.
        bar.set_message(match current_variant().filter(|n| !n.is_empty()) {
            Some(variant) => format!("{variant} {label}"),
            None => label.to_string(),
        });
        let log = (!visible && !quiet).then(|| {
            let lines = Arc::new(LogLines {
                bar: bar.clone(),
                span: tracing::Span::current(),
                last: Mutex::new(Instant::now()),
                finished: AtomicBool::new(false),
            });
            LogLines::tick(&lines);
            lines
        });
        Self { bar, log, started: Arc::new(AtomicBool::new(false)) }
    }

    /// Adds `n` bytes.
    pub fn inc(&self, n: u64) {
        if n > 0 && !self.started.swap(true, Ordering::Relaxed) {
            crate::timeline::note(format_args!("{}: first byte", self.bar.message()));
        }
        self.bar.inc(n);
        if let Some(log) = &self.log {
            log.maybe_log();
        }
    }

    /// Starts the count again (a retried transfer).
    pub fn reset(&self) {
        self.bar.set_position(0);
    }

    /// Removes the bar (and ends its log lines).
    pub fn finish(&self) {
        crate::timeline::note(format_args!(
            "{}: last byte ({} of {} B)",
            self.bar.message(),
            self.bar.position(),
            self.bar.length().unwrap_or(0)
        ));
        if let Some(log) = &self.log {
            log.finished.store(true, Ordering::Relaxed);
        }
        self.bar.finish_and_clear();
    }
}
