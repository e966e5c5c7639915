//! Where the memory store gets the time. A trait, so tests can move time by
//! hand and several processes can be given skewed clocks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now_ns(&self) -> u64;
}

/// The system clock, shifted by a fixed offset (0 in production; tests
/// set one to simulate a skewed host).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock {
    pub offset_ns: i64,
}

impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        now.saturating_add_signed(self.offset_ns)
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    pub fn new(now_ns: u64) -> ManualClock {
        ManualClock {
            now: AtomicU64::new(now_ns),
        }
    }

    pub fn set(&self, now_ns: u64) {
        self.now.store(now_ns, Ordering::SeqCst);
    }

    pub fn advance(&self, ns: u64) {
        self.now.fetch_add(ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}
