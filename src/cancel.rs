//! Ctrl-C handling: the first SIGINT/SIGTERM asks long loops to stop and clean up (temporary files, multipart
//! uploads); a second one exits at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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

    /// A flag raised by SIGINT and SIGTERM. A second signal terminates the process with exit code 130.
    pub fn on_signals() -> Self {
        let cancel = Self::new();
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // Registration fails only for forbidden signals, which these are not; without it, the default
            // handler (terminate) stays, which is safe, just less tidy.
            let _ = signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&cancel.signalled));
            let _ = signal_hook::flag::register(signal, Arc::clone(&cancel.flag));
            let _ = signal_hook::flag::register(signal, Arc::clone(&cancel.signalled));
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
