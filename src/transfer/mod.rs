//! Moving bytes to clouds: the one retry policy, the one bounded-concurrency loop and the one poller every provider
//! uses.
//!
//! Providers classify their own errors into [`Verdict::Retry`] (throttling, 5xx, timeouts, connection resets),
//! [`Verdict::RetryAfter`] (the server said how long to wait) and [`Verdict::Fail`] (access denied, validation);
//! everything else about retrying, limiting and waiting lives here.

pub mod channel;
pub mod http;
pub mod session;
pub mod stream;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::cancel::Cancel;
use crate::image::ReadAt;

/// Whether an error is worth another attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Transient: try again after a backoff.
    Retry,
    /// Transient, and the server asked for this pause (`Retry-After`): wait at least that long.
    RetryAfter(Duration),
    /// Permanent: give up at once.
    Fail,
}

impl Verdict {
    /// Whether another attempt may help.
    pub fn is_retry(self) -> bool {
        !matches!(self, Verdict::Fail)
    }
}

/// The longest `Retry-After` honoured; a server asking for more is waited on this long and tried again.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A `Retry-After` header value: delay seconds (HTTP-dates are rare from cloud APIs and read as absent).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

/// Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first.
    pub max_attempts: u32,
    /// Upper bound of the first delay.
    pub base_delay: Duration,
    /// Upper bound of any delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 8, base_delay: Duration::from_millis(250), max_delay: Duration::from_secs(20) }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt` (1-based retries): uniform in `[0, min(max, base * 2^(attempt-1))]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self.base_delay.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(self.max_delay);
        let millis = cap.as_millis() as u64;
        Duration::from_millis(if millis == 0 { 0 } else { rand::rng().random_range(0..=millis) })
    }

    /// The pause before retry `attempt` after an error judged `verdict`: the jittered backoff, or longer if the
    /// server asked for it.
    pub fn pause(&self, attempt: u32, verdict: Verdict) -> Duration {
        match verdict {
            Verdict::RetryAfter(asked) => self.delay(attempt).max(asked.min(MAX_RETRY_AFTER)),
            _ => self.delay(attempt),
        }
    }

    /// Runs `op` until it succeeds, `classify` calls its error permanent, or attempts run out; returns the last
    /// result. `op` gets the 1-based attempt number.
    pub async fn run<T, E, Fut>(&self, mut op: impl FnMut(u32) -> Fut, classify: impl Fn(&E) -> Verdict) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 1;
        loop {
            match op(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < self.max_attempts && classify(&e).is_retry() => {
                    tokio::time::sleep(self.pause(attempt, classify(&e))).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Why [`run_bounded`] or [`poll_until`] stopped without a result.
#[derive(Debug)]
pub enum Stopped<E> {
    /// A task or check failed; the others were aborted.
    Failed(E),
    /// Ctrl-C.
    Interrupted,
    /// [`poll_until`] ran out of time.
    TimedOut,
    /// A task panicked.
    Panicked(String),
}

/// Runs `task(unit)` for every unit with at most `limit` in flight, stopping at the first error or on `cancel`
/// (remaining tasks are aborted). Returns the results in completion order.
pub async fn run_bounded<T, E, Fut>(
    units: impl IntoIterator<Item = u64>,
    limit: usize,
    cancel: &Cancel,
    task: impl Fn(u64) -> Fut,
) -> Result<Vec<T>, Stopped<E>>
where
    T: Send + 'static,
    E: Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limit.max(1)));
    let mut tasks = JoinSet::new();
    let mut results = Vec::new();
    let mut failure = None;
    let record =
        |done: Result<Result<T, E>, tokio::task::JoinError>, results: &mut Vec<T>, failure: &mut Option<Stopped<E>>| {
            match done {
                Ok(Ok(value)) => results.push(value),
                Ok(Err(e)) => {
                    failure.get_or_insert(Stopped::Failed(e));
                }
                Err(e) if e.is_cancelled() => {}
                Err(e) => {
                    failure.get_or_insert(Stopped::Panicked(e.to_string()));
                }
            }
        };
    for unit in units {
        if cancel.is_cancelled() {
            failure.get_or_insert(Stopped::Interrupted);
        }
        while let Some(done) = tasks.try_join_next() {
            record(done, &mut results, &mut failure);
        }
        if failure.is_some() {
            break;
        }
        // Waiting for a slot, the tasks in flight are watched: one that fails stops the run at once (its siblings
        // would otherwise keep retrying until one of them frees a slot). Ctrl-C does not wait for a slot either;
        // in-flight requests are aborted below.
        let permit = loop {
            tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => break permit.ok(),
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    record(done, &mut results, &mut failure);
                    if failure.is_some() {
                        break None;
                    }
                }
                () = cancel.cancelled() => {
                    failure.get_or_insert(Stopped::Interrupted);
                    break None;
                }
            }
        };
        let Some(permit) = permit else { break };
        // The slot may have been freed by a task that failed: no new unit starts after a failure.
        while let Some(done) = tasks.try_join_next() {
            record(done, &mut results, &mut failure);
        }
        if failure.is_some() {
            break;
        }
        let future = task(unit);
        tasks.spawn(async move {
            let _permit = permit;
            future.await
        });
    }
    if failure.is_some() {
        tasks.abort_all();
    }
    loop {
        let done = tokio::select! {
            done = tasks.join_next() => done,
            // In-flight requests are abandoned on Ctrl-C rather than waited for; the caller cleans up.
            () = cancel.cancelled(), if failure.is_none() => {
                failure = Some(Stopped::Interrupted);
                tasks.abort_all();
                continue;
            }
        };
        let Some(done) = done else { break };
        record(done, &mut results, &mut failure);
        if failure.is_some() {
            tasks.abort_all();
        }
    }
    match failure {
        Some(stopped) => Err(stopped),
        None => Ok(results),
    }
}

/// Reads `len` bytes at `offset` on the blocking pool (past the end reads as zeros).
pub async fn read_at<R: ReadAt + ?Sized + 'static>(file: Arc<R>, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        crate::image::read_zero_padded_at(&*file, &mut buf, offset).map(|()| buf)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Calls `check` until it returns `Some`, pausing as [`PollIntervals`] says, for at most `timeout`; `what` names
/// the operation in the `-v` timeline.
pub async fn poll_until<T, E, Fut>(
    what: &str,
    timeout: Duration,
    cancel: &Cancel,
    mut check: impl FnMut() -> Fut,
) -> Result<T, Stopped<E>>
where
    Fut: Future<Output = Result<Option<T>, E>>,
{
    let started = Instant::now();
    crate::timeline::note(format_args!("waiting for {what}"));
    let mut intervals = PollIntervals::default();
    loop {
        if cancel.is_cancelled() {
            return Err(Stopped::Interrupted);
        }
        if let Some(value) = check().await.map_err(Stopped::Failed)? {
            crate::timeline::note(format_args!("{what}: done after {:.2} s", started.elapsed().as_secs_f64()));
            return Ok(value);
        }
        if started.elapsed() > timeout {
            return Err(Stopped::TimedOut);
        }
        tokio::time::sleep(intervals.next_pause()).await;
    }
}

/// The pauses between polls of a long-running operation: 0.5 s, growing by half each time, at most 5 s. Short
/// operations are seen done soon after they are; a long one costs one request every 5 s. (Doubling up to 15 s,
/// as before, let a wait overshoot its operation by up to half its length.)
#[derive(Clone, Copy, Debug)]
pub struct PollIntervals {
    next: Duration,
}

impl Default for PollIntervals {
    fn default() -> Self {
        Self { next: Duration::from_millis(500) }
    }
}

impl PollIntervals {
    /// The pause before the next poll.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 3 / 2).min(Duration::from_secs(5));
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> RetryPolicy {
        RetryPolicy { max_attempts: 4, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(2) }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let result: Result<u32, &str> = fast()
            .run(
                |attempt| {
                    calls.fetch_add(1, Ordering::Relaxed);
                    async move { if attempt < 3 { Err("throttled") } else { Ok(attempt) } }
                },
                |_| Verdict::Retry,
            )
            .await;
        assert_eq!(result, Ok(3));
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn permanent_errors_fail_at_once_and_attempts_are_bounded() {
        let calls = AtomicU32::new(0);
        let result: Result<(), &str> = fast()
            .run(
                |_| {
                    calls.fetch_add(1, Ordering::Relaxed);
                    async { Err("AccessDenied") }
                },
                |_| Verdict::Fail,
            )
            .await;
        assert_eq!(result, Err("AccessDenied"));
        assert_eq!(calls.load(Ordering::Relaxed), 1);

        let calls = AtomicU32::new(0);
        let result: Result<(), &str> = fast()
            .run(
                |_| {
                    calls.fetch_add(1, Ordering::Relaxed);
                    async { Err("503") }
                },
                |_| Verdict::Retry,
            )
            .await;
        assert_eq!(result, Err("503"));
        assert_eq!(calls.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn bounded_runs_all_units_and_stops_at_the_first_failure() {
        let cancel = Cancel::new();
        let ok: Result<Vec<u64>, Stopped<String>> = run_bounded(0..50, 4, &cancel, |u| async move { Ok(u * 2) }).await;
        let Ok(mut values) = ok else { panic!("all units succeed") };
        values.sort();
        assert_eq!(values, (0..50).map(|u| u * 2).collect::<Vec<_>>());

        let started = AtomicU32::new(0);
        let failed: Result<Vec<u64>, Stopped<String>> = run_bounded(0..1000, 2, &cancel, |u| {
            started.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                if u == 3 { Err(format!("unit {u}")) } else { Ok(u) }
            }
        })
        .await;
        assert!(matches!(failed, Err(Stopped::Failed(ref e)) if e == "unit 3"));
        assert!(started.load(Ordering::Relaxed) < 100, "no new units start after a failure");

        cancel.cancel();
        let interrupted: Result<Vec<u64>, Stopped<String>> =
            run_bounded(0..10, 2, &cancel, |u| async move { Ok(u) }).await;
        assert!(matches!(interrupted, Err(Stopped::Interrupted)));
    }

    #[tokio::test]
    async fn a_failure_stops_the_run_while_all_slots_are_busy() {
        // Unit 0 fails at once; the others would run for an hour. The failure must end the run without waiting for
        // a slot to free up.
        let cancel = Cancel::new();
        let started = std::time::Instant::now();
        let failed: Result<Vec<u64>, Stopped<String>> = run_bounded(0..10, 3, &cancel, |u| async move {
            if u == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Err("unit 0".to_string())
            } else {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(u)
            }
        })
        .await;
        assert!(matches!(failed, Err(Stopped::Failed(ref e)) if e == "unit 0"));
        assert!(started.elapsed() < Duration::from_secs(5), "stopped after {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn polling_returns_when_ready_and_times_out() {
        let cancel = Cancel::new();
        let calls = AtomicU32::new(0);
        let ready: Result<u32, Stopped<()>> = poll_until("a test", Duration::from_secs(10), &cancel, || {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move { Ok(if n == 1 { Some(7) } else { None }) }
        })
        .await;
        assert!(matches!(ready, Ok(7)));
        let never: Result<u32, Stopped<()>> =
            poll_until("a test", Duration::ZERO, &cancel, || async { Ok(None) }).await;
        assert!(matches!(never, Err(Stopped::TimedOut)));
    }

    #[test]
    fn poll_pauses_grow_by_half_and_stop_at_five_seconds() {
        let mut intervals = PollIntervals::default();
        let pauses: Vec<u128> = (0..8).map(|_| intervals.next_pause().as_millis()).collect();
        assert_eq!(pauses, [500, 750, 1125, 1687, 2531, 3796, 5000, 5000]);
    }

    #[tokio::test]
    async fn retry_after_is_honoured() {
        // fast() never waits more than 2 ms on its own.
        let policy = fast();
        let started = Instant::now();
        let result: Result<u32, &str> = policy
            .run(
                |attempt| async move { if attempt < 2 { Err("429") } else { Ok(attempt) } },
                |_| Verdict::RetryAfter(Duration::from_millis(300)),
            )
            .await;
        assert_eq!(result, Ok(2));
        assert!(started.elapsed() >= Duration::from_millis(300), "waited {:?}", started.elapsed());
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("99999"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn delays_grow_but_stay_capped() {
        let p =
            RetryPolicy { max_attempts: 10, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) };
        for attempt in 1..20 {
            let cap = Duration::from_millis(100 * (1u64 << (attempt - 1).min(16))).min(Duration::from_secs(1));
            assert!(p.delay(attempt) <= cap);
        }
    }
}
