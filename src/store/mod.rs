//! Counter stores: where the counts behind every decision live.
//!
//! The engine hands a store a batch of [`Check`]s, one per descriptor that
//! has limits, and gets one [`Outcome`] per check back. A store decides a
//! check atomically: all limits of one check are read, decided and written
//! together, so concurrent requests never over-admit.
//!
//! * [`memory`]: counters in this process, sharded, capped.
//! * [`redis`]: counters shared by every replica (standalone, Cluster or
//!   Sentinel), the checks bound for one node batched into one script call.
//! * [`resilient`]: a shared store made safe to depend on: circuit
//!   breaker, failure mode (allow, deny, decide locally), over-limit
//!   cache; [`resilient::AnyStore`] is what the service runs on.
//! * [`histogram`]: the latency histogram the stores report.
//!
//! Each store reports its own [`StoreStats`] and [`StoreHealth`] (for
//! `/metrics`, readiness and gRPC health).
//!
//! Traces: the Redis store makes one span per request's call (see
//! `redis::CallTrace`), only while tracing is on; the memory store makes
//! none (see [`memory`]).
//!
//! May depend on: `core`, `secret`, tokio (background work), fred (Redis),
//! `telemetry::otel` only for its tracing switch and span helpers (a
//! leaf module), and `telemetry::throttle` (aggregated log lines, std
//! only). Never on gRPC, HTTP, SQL, config loading or the rest of
//! telemetry.

pub mod histogram;
pub mod memory;
pub mod redis;
pub mod resilient;

use std::future::Future;

use crate::core::algorithm::Outcome;
use crate::core::limit::{ChargePolicy, LimitSpec};
pub use histogram::{Histogram, HistogramSnapshot};

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

/// One check's outcome, or why the store could not decide it.
pub type CheckResult = Result<Outcome, StoreError>;

/// One result per check, inline for typical request sizes.
pub type CheckResults = smallvec::SmallVec<[CheckResult; 4]>;

/// A store could not decide.
#[derive(Clone, Debug, thiserror::Error)]
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

    /// Decides every check on its own: one result per check, in order, so
    /// a check the store cannot decide does not fail its neighbours (a
    /// Redis Cluster node that is down fails only the checks it owns).
    /// The default runs [`check`](Self::check) and gives its error to every
    /// check.
    fn check_each(&self, checks: &[Check<'_>]) -> impl Future<Output = CheckResults> + Send {
        async move {
            match self.check(checks).await {
                Ok(o) if o.len() == checks.len() => o.into_iter().map(Ok).collect(),
                Ok(_) => checks
                    .iter()
                    .map(|_| {
                        Err(StoreError::Unavailable(
                            "store answered another number of checks than it was sent".into(),
                        ))
                    })
                    .collect(),
                Err(e) => checks.iter().map(|_| Err(e.clone())).collect(),
            }
        }
    }

    /// One cheap round trip to the store, to tell whether it answers at
    /// all (a failure-mode breaker closes on it). Stores in this process
    /// always answer.
    ///
    /// # Errors
    /// [`StoreError`] when the store does not answer.
    fn probe(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }

    /// Gauges and counters about the store itself, for `/metrics`.
    fn store_stats(&self) -> StoreStats;

    /// Distributions about the store's calls, for `/metrics` (none for a
    /// store in this process).
    fn store_histograms(&self) -> Vec<HistogramSnapshot> {
        Vec::new()
    }

    /// Whether the store can serve, for readiness and health.
    fn health(&self) -> StoreHealth {
        StoreHealth::default()
    }
}

/// A store's readiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreHealth {
    /// Decisions can be made as configured: the store answers, or the
    /// configured failure mode answers for it (every failure mode can, so
    /// a shared store that is down does not make a replica unready: taking
    /// every replica out of service at once would turn a degraded limiter
    /// into none).
    pub ready: bool,
    /// Some decisions are not coming from the shared store.
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
    /// Shared store: decisions whose checks went to the store (each waits
    /// for one round trip: one script call per node its checks are on).
    pub batches: u64,
    /// Shared store: checks sent (commands / checks is how many checks
    /// shared a script call).
    pub checks: u64,
    /// Shared store: checks sent again because the node they went to did
    /// not serve their slot any more (resharding, failover).
    pub resent: u64,
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
