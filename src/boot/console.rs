//! The serial console of the booting VM: what it printed, and whether that says the system came up, panicked or
//! fell into an emergency shell.

use std::collections::VecDeque;

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

/// Collects console output, line by line, and judges it.
pub struct Console {
    expect: Regex,
    panic: Regex,
    emergency: Regex,
    partial: Vec<u8>,
    tail: VecDeque<String>,
    /// Everything, for `--serial-log`.
    pub transcript: Vec<u8>,
    verdict: Option<Verdict>,
}

/// Removes ANSI escape sequences (systemd colours its `[  OK  ]`) and carriage returns.
fn plain(line: &str) -> String {
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
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

impl Console {
    /// A console judged by `expect`.
    pub fn new(expect: Regex) -> Self {
        Self {
            expect,
            panic: Regex::new(r"Kernel panic - not syncing").unwrap_or_else(|_| unreachable!("constant pattern")),
            emergency: Regex::new(r"You are in emergency mode|Entering emergency mode|emergency shell")
                .unwrap_or_else(|_| unreachable!("constant pattern")),
            partial: Vec::new(),
            tail: VecDeque::new(),
            transcript: Vec::new(),
            verdict: None,
        }
    }

    /// Adds console output; returns the verdict once there is one (the first one stays).
    pub fn feed(&mut self, bytes: &[u8]) -> Option<Verdict> {
        self.transcript.extend_from_slice(bytes);
        for &b in bytes {
            if b == b'\n' {
                let line = plain(&String::from_utf8_lossy(&std::mem::take(&mut self.partial)));
                self.judge(&line, true);
                self.tail.push_back(line);
                if self.tail.len() > TAIL_LINES {
                    self.tail.pop_front();
                }
            } else {
                self.partial.push(b);
            }
        }
        // A prompt ends without a newline.
        if !self.partial.is_empty() {
            let line = plain(&String::from_utf8_lossy(&self.partial));
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
    }
}
