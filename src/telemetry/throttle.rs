//! Aggregating logs that could repeat once per request: during an outage
//! (the counter store or the key store failing, the Redis script and the
//! Rust algorithms disagreeing) a line per request would flood the log and
//! cost more than the request. A [`LogThrottle`] per kind of line lets the
//! first occurrence through, then at most one line per [`WINDOW`], which
//! carries how many times it happened since the previous line.
//!
//! ```ignore
//! static STORE_FAILED: LogThrottle = LogThrottle::new();
//! if let Some(r) = STORE_FAILED.admit() {
//!     tracing::warn!(error = %e, occurrences = r.count, repeated = %r, "counter store failed");
//! }
//! ```
//!
//! Lock-free: two atomics per kind. May depend on: std only.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// At most one line per kind in this time.
pub const WINDOW: Duration = Duration::from_secs(10);

const NEVER: u64 = u64::MAX;

/// One kind of log line, usually a `static` at the line's call site.
#[derive(Debug)]
pub struct LogThrottle {
    /// When the last line was let through (ms on [`now_ms`]'s clock), or
    /// [`NEVER`].
    last: AtomicU64,
    /// Occurrences since that line, this one included.
    count: AtomicU64,
}

/// What a line let through says about the occurrences it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeated {
    /// Occurrences since the previous line, this one included (1 for the
    /// first line).
    pub count: u64,
    /// Seconds since the previous line; `None` for the first line.
    pub over_secs: Option<u64>,
}

impl fmt::Display for Repeated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.over_secs {
            None => write!(
                f,
                "first occurrence; repeats are logged at most once per {} s",
                WINDOW.as_secs()
            ),
            Some(s) => write!(f, "{} times in the last {s} s", self.count),
        }
    }
}

impl Default for LogThrottle {
    fn default() -> Self {
        LogThrottle::new()
    }
}

impl LogThrottle {
    pub const fn new() -> LogThrottle {
        LogThrottle {
            last: AtomicU64::new(NEVER),
            count: AtomicU64::new(0),
        }
    }

    /// Counts one occurrence; `Some` when its line should be logged now.
    pub fn admit(&self) -> Option<Repeated> {
        self.admit_at(now_ms())
    }

    fn admit_at(&self, now: u64) -> Option<Repeated> {
        self.count.fetch_add(1, Relaxed);
        let last = self.last.load(Relaxed);
        let window = u64::try_from(WINDOW.as_millis()).unwrap_or(u64::MAX);
        if last != NEVER && now.saturating_sub(last) < window {
            return None;
        }
        // One of the callers racing past the window wins the line.
        self.last
            .compare_exchange(last, now, Relaxed, Relaxed)
            .ok()?;
        let count = self.count.swap(0, Relaxed).max(1);
        Some(Repeated {
            count,
            over_secs: (last != NEVER).then(|| now.saturating_sub(last) / 1000),
        })
    }
}

/// Milliseconds on a monotonic clock that starts with the process.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_passes_then_one_per_window_with_the_count() {
        let t = LogThrottle::new();
        let first = t.admit_at(1_000).unwrap();
        assert_eq!(
            first,
            Repeated {
                count: 1,
                over_secs: None
            }
        );
        assert!(first.to_string().starts_with("first occurrence"));
        // 199 more within the window: none logged.
        for i in 0..199 {
            assert_eq!(t.admit_at(1_001 + i * 40), None);
        }
        // The first after the window stands for all of them and itself.
        let next = t.admit_at(11_000).unwrap();
        assert_eq!(
            next,
            Repeated {
                count: 200,
                over_secs: Some(10)
            }
        );
        assert_eq!(next.to_string(), "200 times in the last 10 s");
        // A quiet spell, then one occurrence: one line, count 1.
        let later = t.admit_at(71_000).unwrap();
        assert_eq!(later.count, 1);
        assert_eq!(later.over_secs, Some(60));
        assert_eq!(t.admit_at(71_001), None);
    }

    #[test]
    fn kinds_are_independent() {
        let (a, b) = (LogThrottle::new(), LogThrottle::new());
        assert!(a.admit_at(5).is_some());
        assert!(b.admit_at(6).is_some());
        assert!(a.admit_at(7).is_none());
    }

    #[test]
    fn concurrent_callers_log_one_line_per_window() {
        static T: LogThrottle = LogThrottle::new();
        let logged: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| (0..1000).filter(|_| T.admit_at(1_000).is_some()).count() as u64)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        // 4000 occurrences at one instant: the first line only.
        assert_eq!(logged, 1);
    }
}
