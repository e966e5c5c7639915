//! Counter stores: where the counts behind every decision live.
//!
//! The engine hands a store a batch of [`Check`]s, one per descriptor that
//! has limits, and gets one [`Outcome`] per check back. A store decides a
//! check atomically: all limits of one check are read, decided and written
//! together, so concurrent requests never over-admit. The memory store
//! lives here; the Redis store will implement the same trait.
//!
//! May depend on: `core`, `secret`, tokio (background sweeping). Never on gRPC,
//! config loading or telemetry.

pub mod memory;
pub mod redis;
pub mod resilient;

use std::future::Future;

use crate::core::algorithm::Outcome;
use crate::core::limit::{ChargePolicy, LimitSpec};

pub use memory::MemoryStore;
pub use redis::RedisStore;

/// One outcome per check, inline for typical request sizes.
pub type Outcomes = smallvec::SmallVec<[Outcome; 4]>;

/// One descriptor's limits to decide.
#[derive(Clone, Copy, Debug)]
pub struct Check<'a> {
    /// The counter key (see [`crate::core::key`]).
    pub key: &'a [u8],
    pub limits: &'a [LimitSpec],
    /// Hits to add; 0 checks without consuming and never writes.
    pub hits: u64,
    pub policy: ChargePolicy,
}

/// A store could not decide.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("counter store unavailable: {0}")]
    Unavailable(String),
    #[error("counter store timed out after {0:?}")]
    Timeout(std::time::Duration),
}

/// Counts and decides [`Check`]s.
pub trait CounterStore: Send + Sync + std::fmt::Debug + 'static {
    /// Decides every check, returning one outcome per check in order.
    ///
    /// # Errors
    /// [`StoreError`] when the backing store cannot answer; nothing is
    /// half-applied within one check.
    fn check(
        &self,
        checks: &[Check<'_>],
    ) -> impl Future<Output = Result<Outcomes, StoreError>> + Send;

    /// Gauges and counters about the store itself, for `/metrics`.
    fn store_stats(&self) -> StoreStats;

    /// Whether the store can serve, for readiness and health.
    fn health(&self) -> StoreHealth {
        StoreHealth::default()
    }
}

/// A store's readiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreHealth {
    /// Decisions are being made as configured (for a shared store: it
    /// answers, or the local fallback stands in for it).
    pub ready: bool,
    /// Decisions are not coming from the shared store.
    pub degraded: bool,
}

impl Default for StoreHealth {
    fn default() -> Self {
        StoreHealth {
            ready: true,
            degraded: false,
        }
    }
}

/// What a store reports about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Counters currently held.
    pub live_counters: u64,
    /// Counters dropped because their windows had passed.
    pub expired: u64,
    /// Checks answered without a counter because the cap was reached.
    pub overflow: u64,
    /// Shared store: script calls sent.
    pub commands: u64,
    /// Shared store: batches written to the network (a lower bound on
    /// round trips saved by pipelining: commands / batches per batch).
    pub batches: u64,
    /// Checks answered by the failure mode while the shared store was
    /// unreachable.
    pub degraded_checks: u64,
    /// Checks answered from the local over-limit cache.
    pub cached_denials: u64,
    /// Calls to the shared store that failed or timed out.
    pub failures: u64,
    /// Circuit breaker: 0 closed, 1 open, 2 half-open.
    pub breaker: u8,
}
