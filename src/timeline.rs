//! The release run's timeline at debug level (`-v`): preflight, image scan, first and last byte, each
//! control-plane wait, each on one clock that starts with the run.
//!
//! Its own module because both the log (which starts the clock) and the progress bars
//! (which note the first and last byte) use it, and those two must not import each other.

use std::sync::OnceLock;

/// When the run started.
static STARTED: OnceLock<std::time::Instant> = OnceLock::new();

/// Starts the clock (the first call wins; [`note`] starts it too if nothing did).
pub fn start() {
    STARTED.get_or_init(std::time::Instant::now);
}

/// A timeline line at debug level: seconds since the run started, then `event`, in the current variant's span, so
/// one run shows which variant waited for what.
pub fn note(event: std::fmt::Arguments<'_>) {
    let at = STARTED.get_or_init(std::time::Instant::now).elapsed().as_secs_f64();
    tracing::debug!("timeline +{at:.2} s: {event}");
}
