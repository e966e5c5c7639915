//! The embedded in-memory counter store.
//!
//! Keys are spread over a fixed number of shards, each a hash table behind
//! its own mutex: a check locks only its key's shard, so unrelated keys
//! never contend, and every limit of one descriptor (one key) is decided
//! under one lock, which makes all-or-nothing checks atomic and exact
//! under any concurrency.
//!
//! Memory is bounded two ways. Counters whose windows have passed are
//! swept (by [`MemoryStore::sweep`], which the service runs every second,
//! and on demand when the cap is hit). And the number of live counters is
//! capped: when a new key arrives at the cap and sweeping its shard frees
//! nothing, the check is decided as if its counter were new and is **not
//! stored** (the request is admitted if a fresh counter would admit it),
//! and `overflow` is counted. Existing counters keep counting exactly;
//! only keys beyond the cap go uncounted until room frees up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hashbrown::HashTable;
use parking_lot::Mutex;
use smallvec::SmallVec;

use super::{Check, CounterStore, Outcomes, StoreError, StoreStats};
use crate::core::algorithm::{self, LimitState, Outcome};
use crate::core::clock::Clock;
use crate::core::limit::LimitSpec;

/// Default cap on live counters.
pub const DEFAULT_MAX_COUNTERS: u64 = 1_000_000;

const SHARDS: usize = 64;

/// The state of one limit under a key.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u64,
    state: LimitState,
    expires_at: u64,
}

#[derive(Debug)]
struct Counter {
    key: Box<[u8]>,
    hash: u64,
    slots: SmallVec<[Slot; 2]>,
    expires_at: u64,
}

#[derive(Debug, Default)]
struct Shard {
    table: HashTable<Counter>,
}

/// Sharded in-memory counters; see the module docs.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: ahash::RandomState,
    clock: Arc<dyn Clock>,
    max_counters: u64,
    live: AtomicU64,
    expired: AtomicU64,
    overflow: AtomicU64,
}

impl MemoryStore {
    /// A store holding at most `max_counters` live counters.
    pub fn new(clock: Arc<dyn Clock>, max_counters: u64) -> MemoryStore {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: ahash::RandomState::new(),
            clock,
            max_counters,
            live: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            overflow: AtomicU64::new(0),
        }
    }

    /// Drops every counter whose windows have all passed.
    pub fn sweep(&self) {
        let now = self.clock.now_ns();
        for shard in self.shards.iter() {
            self.sweep_shard(&mut shard.lock(), now);
        }
    }

    fn sweep_shard(&self, shard: &mut Shard, now: u64) {
        let mut dropped = 0u64;
        shard.table.retain(|c| {
            let keep = c.expires_at > now;
            dropped += u64::from(!keep);
            keep
        });
        if dropped > 0 {
            self.live.fetch_sub(dropped, Relaxed);
            self.expired.fetch_add(dropped, Relaxed);
        }
    }

    /// Decides one check synchronously.
    pub fn check_one(&self, check: &Check<'_>, now: u64) -> Outcome {
        let hash = self.hasher.hash_one(check.key);
        let shard_index = usize::try_from(hash % SHARDS as u64).unwrap_or(0);
        let mut shard = self.shards[shard_index].lock();
        if let Some(counter) = shard
            .table
            .find_mut(hash, |c| c.hash == hash && *c.key == *check.key)
        {
            let mut states = load_states(&counter.slots, check.limits);
            let (outcome, wrote) =
                algorithm::decide(check.policy, check.limits, &mut states, now, check.hits);
            if wrote {
                store_states(counter, check.limits, &states, now);
            }
            return outcome;
        }

        let mut states: SmallVec<[LimitState; 2]> = check
            .limits
            .iter()
            .map(|l| LimitState::new(l.algorithm))
            .collect();
        let (outcome, wrote) =
            algorithm::decide(check.policy, check.limits, &mut states, now, check.hits);
        if !wrote {
            return outcome;
        }
        if self.live.load(Relaxed) >= self.max_counters {
            self.sweep_shard(&mut shard, now);
            if self.live.load(Relaxed) >= self.max_counters {
                self.overflow.fetch_add(1, Relaxed);
                return outcome;
            }
        }
        let mut counter = Counter {
            key: check.key.into(),
            hash,
            slots: SmallVec::new(),
            expires_at: 0,
        };
        store_states(&mut counter, check.limits, &states, now);
        shard.table.insert_unique(hash, counter, |c| c.hash);
        self.live.fetch_add(1, Relaxed);
        outcome
    }
}

fn load_states(slots: &[Slot], limits: &[LimitSpec]) -> SmallVec<[LimitState; 2]> {
    limits
        .iter()
        .map(|l| {
            slots
                .iter()
                .find(|s| s.id == l.slot)
                .map_or_else(|| LimitState::new(l.algorithm), |s| s.state)
        })
        .collect()
}

fn store_states(counter: &mut Counter, limits: &[LimitSpec], states: &[LimitState], now: u64) {
    // Slots of limits that no longer apply (a reload changed the rule) are
    // dropped once their own windows pass.
    counter.slots.retain(|s| s.expires_at > now);
    for (limit, state) in limits.iter().zip(states) {
        let expires_at = state.expires_at(limit);
        match counter.slots.iter_mut().find(|s| s.id == limit.slot) {
            Some(slot) => {
                slot.state = *state;
                slot.expires_at = expires_at;
            }
            None => counter.slots.push(Slot {
                id: limit.slot,
                state: *state,
                expires_at,
            }),
        }
    }
    counter.expires_at = counter
        .slots
        .iter()
        .map(|s| s.expires_at)
        .max()
        .unwrap_or(0);
}

impl CounterStore for MemoryStore {
    async fn check(&self, checks: &[Check<'_>]) -> Result<Outcomes, StoreError> {
        let now = self.clock.now_ns();
        Ok(checks.iter().map(|c| self.check_one(c, now)).collect())
    }

    fn store_stats(&self) -> StoreStats {
        StoreStats {
            live_counters: self.live.load(Relaxed),
            expired: self.expired.load(Relaxed),
            overflow: self.overflow.load(Relaxed),
            ..StoreStats::default()
        }
    }
}

#[cfg(test)]
mod tests;
