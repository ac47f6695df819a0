//! Signed-in clients kept for reuse: the preflight signs in once per cloud, and the uploads of all variants of that
//! cloud reuse the session while it is fresh, instead of signing in again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sessions by key (a cloud name, an endpoint), each reused for `reuse` after it was made.
pub struct Sessions<T> {
    entries: Mutex<Vec<(String, Instant, T)>>,
    reuse: Duration,
}

impl<T: Clone> Sessions<T> {
    /// An empty cache whose sessions are reused for `reuse`.
    pub const fn new(reuse: Duration) -> Self {
        Self { entries: Mutex::new(Vec::new()), reuse }
    }

    /// The session of `key`, if one was made less than `reuse` ago.
    pub fn get(&self, key: &str) -> Option<T> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.iter().find(|(k, at, _)| k == key && at.elapsed() < self.reuse).map(|(_, _, session)| session.clone())
    }

    /// Keeps `session` as the session of `key`, replacing an older one.
    pub fn put(&self, key: &str, session: T) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|(k, _, _)| k != key);
        entries.push((key.to_string(), Instant::now(), session));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_reused_while_fresh() {
        let fresh: Sessions<u32> = Sessions::new(Duration::from_secs(60));
        assert_eq!(fresh.get("a"), None);
        fresh.put("a", 1);
        fresh.put("a", 2);
        assert_eq!(fresh.get("a"), Some(2));
        assert_eq!(fresh.get("b"), None);
        let stale: Sessions<u32> = Sessions::new(Duration::ZERO);
        stale.put("a", 1);
        assert_eq!(stale.get("a"), None);
    }
}
