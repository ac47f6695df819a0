//! Progress bars on stderr, shown only when stderr is a terminal and the user did not ask for quiet.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);

/// The one set of bars on stderr, shared by every variant and by the log writer.
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// Log output on stderr that hides the progress bars while a line is written and redraws them after, so log lines
/// and bars never overwrite each other. Use it as the `tracing_subscriber` writer.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        bars().suspend(|| std::io::stderr().write_all(buf)).map(|()| buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}

/// Turns progress bars off for the whole process (`-q`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// A byte-counting progress bar; hidden when not on a terminal. Cheap to clone and safe to share.
#[derive(Clone, Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar for `total` bytes labelled `label`.
    pub fn bytes(total: u64, label: &str) -> Self {
        let visible = !QUIET.load(Ordering::Relaxed) && std::io::stderr().is_terminal();
        let bar = if visible { ProgressBar::new(total) } else { ProgressBar::hidden() };
        if visible {
            // Variants upload in parallel: their bars stack instead of overwriting each other.
            bars().add(bar.clone());
            if let Ok(style) = ProgressStyle::with_template(
                "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
        }
        bar.set_message(label.to_string());
        Self { bar }
    }

    /// Adds `n` bytes.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Starts the count again (a retried transfer).
    pub fn reset(&self) {
        self.bar.set_position(0);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
