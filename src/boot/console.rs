//! The serial console of the booting VM: what it printed, whether that says the system came up, panicked or
//! fell into an emergency shell, and which line shows what a boot that does not come up is waiting on.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use regex::Regex;

/// What `--expect` matches by default: a login prompt, or systemd reaching multi-user.target or
/// graphical.target (`Reached target multi-user.target - Multi-User System.`, older systemd: `Reached target
/// Multi-User System.`).
pub const DEFAULT_EXPECT: &str =
    r"\blogin: |Reached target (multi-user\.target|graphical\.target|Multi-User System|Graphical Interface)";

/// How many console lines a failure shows.
pub const TAIL_LINES: usize = 20;

/// What the console says about the boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The expected text appeared.
    Up(String),
    /// The kernel panicked.
    Panic(String),
    /// systemd (or the initrd) dropped to an emergency shell.
    Emergency(String),
}

/// Lines that mean the boot waits for a person or has given up: systemd-firstboot's prompt, emergency and rescue
/// mode, a unit that failed for a dependency, a mount that failed, a device that never came. The first one seen is
/// what a failed boot is reported as waiting on.
const STUCK: &str = r"Please configure your system!|-- Press any key to proceed --|You are in (emergency|rescue) mode|Give root password for maintenance|Press Enter for maintenance|Cannot open access to console, the root account is locked|Dependency failed for|Failed to mount|Timed out waiting for device";

/// systemd's status line for a job that takes long; it is rewritten in place, so the last one counts.
const START_JOB: &str = r"A start job is running for";

/// A console line that says what the boot is waiting on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitingOn {
    /// 1-based line number in the console output.
    pub line: usize,
    /// The line, without colours.
    pub text: String,
}

/// Collects console output, line by line, and judges it.
pub struct Console {
    expect: Regex,
    panic: Regex,
    emergency: Regex,
    stuck: Regex,
    start_job: Regex,
    partial: Vec<u8>,
    tail: VecDeque<String>,
    /// Complete lines so far.
    lines: usize,
    /// The first line that says the boot waits for a person or gave up.
    first_stuck: Option<WaitingOn>,
    /// The last "A start job is running for …".
    last_start_job: Option<WaitingOn>,
    /// When output last came.
    last_output: Instant,
    /// Everything, for `--serial-log`.
    pub transcript: Vec<u8>,
    verdict: Option<Verdict>,
}

/// What the line shows on a terminal: ANSI escape sequences (systemd colours its `[  OK  ]`) removed, and of a
/// line rewritten in place with carriage returns (systemd's status line), only the last version.
fn plain(line: &str) -> String {
    let line = line.trim_end_matches('\r');
    let line = line.rsplit('\r').next().unwrap_or(line);
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

impl Console {
    /// A console judged by `expect`.
    pub fn new(expect: Regex) -> Self {
        let constant = |pattern: &str| Regex::new(pattern).unwrap_or_else(|_| unreachable!("constant pattern"));
        Self {
            expect,
            panic: constant(r"Kernel panic - not syncing"),
            emergency: constant(
                r"You are in (emergency|rescue) mode|Entering emergency mode|emergency shell|Give root password for maintenance|Press Enter for maintenance|Cannot open access to console, the root account is locked",
            ),
            stuck: constant(STUCK),
            start_job: constant(START_JOB),
            partial: Vec::new(),
            tail: VecDeque::new(),
            lines: 0,
            first_stuck: None,
            last_start_job: None,
            last_output: Instant::now(),
            transcript: Vec::new(),
            verdict: None,
        }
    }

    /// Notes `line` (number `number`) if it says what the boot waits on.
    fn recognise(&mut self, line: &str, number: usize) {
        if self.first_stuck.is_none() && self.stuck.is_match(line) {
            self.first_stuck = Some(WaitingOn { line: number, text: line.trim().to_string() });
        }
        if self.start_job.is_match(line) {
            self.last_start_job = Some(WaitingOn { line: number, text: line.trim().to_string() });
        }
    }

    /// What the boot is waiting on: the first line that says it waits for a person or gave up, else the last
    /// start job systemd reported; `None` when the console shows neither.
    pub fn waiting_on(&self) -> Option<WaitingOn> {
        self.first_stuck.clone().or_else(|| self.last_start_job.clone())
    }

    /// How long the console has printed nothing.
    pub fn quiet_for(&self) -> Duration {
        self.last_output.elapsed()
    }

    /// Adds console output; returns the verdict once there is one (the first one stays).
    pub fn feed(&mut self, bytes: &[u8]) -> Option<Verdict> {
        self.transcript.extend_from_slice(bytes);
        if !bytes.is_empty() {
            self.last_output = Instant::now();
        }
        for &b in bytes {
            if b == b'\n' {
                let line = plain(&String::from_utf8_lossy(&std::mem::take(&mut self.partial)));
                self.lines += 1;
                self.recognise(&line, self.lines);
                self.judge(&line, true);
                self.tail.push_back(line);
                if self.tail.len() > TAIL_LINES {
                    self.tail.pop_front();
                }
            } else {
                self.partial.push(b);
            }
        }
        // A prompt ends without a newline, and so does a status line rewritten in place.
        if !self.partial.is_empty() {
            let line = plain(&String::from_utf8_lossy(&self.partial));
            if self.start_job.is_match(&line) {
                self.last_start_job = Some(WaitingOn { line: self.lines + 1, text: line.trim().to_string() });
            }
            self.judge(&line, false);
        }
        self.verdict.clone()
    }

    /// Judges one line. An unfinished line is judged only against `expect` (a login prompt ends without a
    /// newline): a panic or emergency line is judged once it is whole, so the verdict names the reason the kernel
    /// gives after "not syncing:", which the serial port may deliver a moment later.
    fn judge(&mut self, line: &str, complete: bool) {
        if self.verdict.is_some() {
            return;
        }
        self.verdict = if complete && self.panic.is_match(line) {
            Some(Verdict::Panic(line.to_string()))
        } else if complete && self.emergency.is_match(line) {
            Some(Verdict::Emergency(line.to_string()))
        } else if self.expect.is_match(line) {
            Some(Verdict::Up(line.to_string()))
        } else {
            None
        };
    }

    /// Judges the unfinished line as a whole one, for when no more output will come (the VM stopped or the time
    /// is up); returns the verdict, if there is one.
    pub fn finish(&mut self) -> Option<Verdict> {
        if !self.partial.is_empty() {
            let line = plain(&String::from_utf8_lossy(&self.partial));
            self.recognise(&line, self.lines + 1);
            self.judge(&line, true);
        }
        self.verdict.clone()
    }

    /// The last [`TAIL_LINES`] lines, the unfinished one included.
    pub fn tail(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.tail.iter().cloned().collect();
        if !self.partial.is_empty() {
            lines.push(plain(&String::from_utf8_lossy(&self.partial)));
        }
        let skip = lines.len().saturating_sub(TAIL_LINES);
        lines.split_off(skip)
    }

    /// Whether anything was printed at all.
    pub fn is_empty(&self) -> bool {
        self.transcript.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console() -> Console {
        Console::new(Regex::new(DEFAULT_EXPECT).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn a_login_prompt_or_multi_user_target_means_up() {
        let mut c = console();
        assert_eq!(c.feed(b"Welcome\r\n"), None);
        assert_eq!(c.feed(b"[\x1b[0;32m  OK  \x1b[0m] Reached target \x1b[0;1;39mmulti-user.target\x1b[0m - Multi-User System.\r\n"), Some(Verdict::Up("[  OK  ] Reached target multi-user.target - Multi-User System.".into())));
        let mut c = console();
        assert!(matches!(c.feed(b"podvm login: "), Some(Verdict::Up(_))), "a prompt without a newline");
        let mut c = console();
        assert_eq!(c.feed(b"Reached target initrd.target\n"), None);
    }

    #[test]
    fn panics_and_emergency_shells_are_failures_and_the_tail_is_kept() {
        let mut c = console();
        for i in 0..30 {
            c.feed(format!("line {i}\n").as_bytes());
        }
        assert!(matches!(
            c.feed(b"[    1.2] Kernel panic - not syncing: Attempted to kill init!\n"),
            Some(Verdict::Panic(_))
        ));
        let tail = c.tail();
        assert_eq!(tail.len(), TAIL_LINES);
        assert!(tail[TAIL_LINES - 1].contains("Kernel panic"));
        let mut c = console();
        assert_eq!(c.feed(b"[    3.2] Kernel panic - not syncing"), None, "the reason is still to come");
        assert_eq!(
            c.feed(b": Attempted to kill init!\n"),
            Some(Verdict::Panic("[    3.2] Kernel panic - not syncing: Attempted to kill init!".into()))
        );
        let mut c = console();
        c.feed(b"[    3.2] Kernel panic - not syncing");
        assert!(matches!(c.finish(), Some(Verdict::Panic(_))), "a VM that stops mid-line still panicked");
        let mut c = console();
        assert!(matches!(c.feed(b"You are in emergency mode. After logging in\n"), Some(Verdict::Emergency(_))));
        let mut c = console();
        assert!(matches!(
            c.feed(b"Cannot open access to console, the root account is locked.\n"),
            Some(Verdict::Emergency(_))
        ));
    }

    #[test]
    fn the_first_line_a_boot_waits_on_is_found_wherever_it_is() {
        let mut c = console();
        for i in 1..913 {
            c.feed(format!("[  OK  ] Started unit {i}.\r\n").as_bytes());
        }
        c.feed(b"\x1b[0;1;31mPlease configure your system!\x1b[0m -- Press any key to proceed --\r\n");
        for i in 914..=950 {
            c.feed(format!("[   {i}.0] random: crng init\r\n").as_bytes());
        }
        assert_eq!(c.finish(), None, "a prompt for a person is no verdict of its own");
        let waiting = c.waiting_on().unwrap_or_else(|| panic!("the firstboot prompt is recognised"));
        assert_eq!(waiting.line, 913);
        assert_eq!(waiting.text, "Please configure your system! -- Press any key to proceed --");
        assert!(!c.tail().iter().any(|l| l.contains("Please configure")), "it is outside the last 20 lines");
    }

    #[test]
    fn given_up_lines_come_before_start_jobs_and_the_last_start_job_counts() {
        let mut c = console();
        c.feed(b"[ ***  ] A start job is running for /dev/disk/by-label/root (5s / 1min 30s)");
        c.feed(b"\r\x1b[K[  *** ] A start job is running for /dev/disk/by-label/root (9s / 1min 30s)");
        assert_eq!(
            c.waiting_on().map(|w| (w.line, w.text)),
            Some((1, "[  *** ] A start job is running for /dev/disk/by-label/root (9s / 1min 30s)".to_string())),
            "a status line rewritten in place counts as it shows last"
        );
        c.feed(b"\r\n[ TIME ] Timed out waiting for device /dev/disk/by-label/root.\r\n");
        c.feed(b"[DEPEND] Dependency failed for sysroot.mount - /sysroot.\r\n");
        let waiting = c.waiting_on().unwrap_or_else(|| panic!("recognised"));
        assert_eq!(
            (waiting.line, waiting.text.as_str()),
            (2, "[ TIME ] Timed out waiting for device /dev/disk/by-label/root.")
        );
        let mut quiet = console();
        quiet.feed(b"nothing to see\n");
        assert_eq!(quiet.waiting_on(), None);
        assert!(quiet.quiet_for() < Duration::from_secs(5));
    }
}
