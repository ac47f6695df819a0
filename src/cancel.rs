//! Ctrl-C handling: the first SIGINT/SIGTERM asks long loops to stop and clean up (temporary files, multipart
//! uploads); a second one exits at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A shared "please stop" flag.
#[derive(Clone, Debug, Default)]
pub struct Cancel {
    flag: Arc<AtomicBool>,
    /// Raised only by a signal, so a run stopped by `--fail-fast` is told apart from Ctrl-C.
    signalled: Arc<AtomicBool>,
}

impl Cancel {
    /// A flag nobody has raised yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A flag raised by SIGINT and SIGTERM. A second signal prints what may be left (see [`track`]) and exits with
    /// code 130 at once.
    pub fn on_signals() -> Self {
        let cancel = Self::new();
        let signals = [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM];
        match signal_hook::iterator::Signals::new(signals) {
            Ok(mut signals) => {
                let watched = cancel.clone();
                // A plain thread, not a signal handler, so it may lock and print.
                std::thread::spawn(move || {
                    for _ in signals.forever() {
                        if watched.signalled.swap(true, Ordering::SeqCst) {
                            exit_now();
                        }
                        watched.flag.store(true, Ordering::SeqCst);
                    }
                });
            }
            // Without it the default handlers (terminate) stay, which is safe, just less tidy.
            Err(e) => tracing::warn!("cannot watch for Ctrl-C ({e}); an interrupted run may leave resources behind"),
        }
        cancel
    }

    /// Raises the flag.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }

    /// Whether the flag is raised.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Whether SIGINT or SIGTERM raised the flag (rather than [`Cancel::cancel`]).
    pub fn is_signalled(&self) -> bool {
        self.signalled.load(Ordering::Relaxed)
    }

    /// Resolves once the flag is raised (checked every 100 ms), to race against a request with `tokio::select!`.
    pub async fn cancelled(&self) {
        while !self.is_cancelled() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// Resources that exist only while a run is in progress (an image record being filled, a snapshot being written, a
/// temporary file), so a second Ctrl-C, which skips the cleanup, can say what may be left.
static LEFTOVERS: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
static NEXT_LEFTOVER: AtomicU64 = AtomicU64::new(0);

/// An entry in the list of what may be left; removed when dropped (after the resource was finished or cleaned up).
#[derive(Debug)]
#[must_use = "the entry is removed when the guard is dropped"]
pub struct Leftover(u64);

/// Records `what` (how to find and remove it) until the returned guard is dropped.
pub fn track(what: impl Into<String>) -> Leftover {
    let id = NEXT_LEFTOVER.fetch_add(1, Ordering::Relaxed);
    LEFTOVERS.lock().unwrap_or_else(|p| p.into_inner()).push((id, what.into()));
    Leftover(id)
}

impl Drop for Leftover {
    fn drop(&mut self) {
        LEFTOVERS.lock().unwrap_or_else(|p| p.into_inner()).retain(|(id, _)| *id != self.0);
    }
}

/// What is tracked right now.
pub fn leftovers() -> Vec<String> {
    LEFTOVERS.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(_, what)| what.clone()).collect()
}

fn exit_now() -> ! {
    let left = leftovers();
    let mut message = String::from("error: interrupted twice: exiting without cleaning up");
    if left.is_empty() {
        message.push_str("; nothing was in progress\n");
    } else {
        message.push_str("; these may be left:\n");
        for what in left {
            message.push_str(&format!("  - {what}\n"));
        }
    }
    eprint!("{}", crate::logging::redact(&message));
    std::process::exit(130)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_resources_are_listed_until_their_guard_drops() {
        let guard = track("Glance image 1234 (openstack image delete 1234)");
        let other = track("temporary file /tmp/x");
        assert!(leftovers().contains(&"Glance image 1234 (openstack image delete 1234)".to_string()));
        drop(guard);
        let left = leftovers();
        assert!(!left.iter().any(|l| l.contains("1234")) && left.contains(&"temporary file /tmp/x".to_string()));
        drop(other);
    }
}
