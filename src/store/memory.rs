//! The embedded in-memory counter store.
//!
//! Keys are spread over a fixed number of shards, each a hash table behind
//! its own mutex: a check locks only its key's shard, so unrelated keys
//! never contend, and every limit of one descriptor (one key) is decided
//! under one lock, which makes all-or-nothing checks atomic and exact
//! under any concurrency.
//!
//! Memory is bounded two ways. Counters whose windows have passed are
//! dropped: each shard keeps every counter in an expiry queue (a min-heap
//! by the time its windows pass), so finding what has expired costs only
//! what has expired, never a walk over the shard. [`MemoryStore::sweep`]
//! drains the queues (the service runs it every second on a thread of its
//! own, never on the request path's workers, a bounded batch per lock
//! hold), and a new key arriving at the cap first drops a bounded few
//! expired counters of its shard. And the number of live counters is
//! capped: when a new key arrives at the cap and no room frees up, the
//! check is decided as if its counter were new and is **not stored** (the
//! request is admitted if a fresh counter would admit it), and `overflow`
//! is counted. Existing counters keep counting exactly; only keys beyond
//! the cap go uncounted until room frees up. Admission at the cap is
//! O(log n) amortized and bounded per check, however many unique keys
//! arrive.
//!
//! A counter written again has later expiry than its queue entry says:
//! the entry is not updated on every write (that would cost a heap
//! operation per check); when it comes due, the counter is found alive and
//! queued again at its current expiry. Each counter has exactly one entry.
//!
//! No spans, on purpose, even while tracing is on: a check here is a
//! shard lock and a few arithmetic operations (well under a microsecond),
//! cheaper than making, timing and exporting a span, and it cannot fail or
//! wait on anything a trace would show. The RPC's SERVER span already
//! covers it; the Redis store, whose round trip is worth seeing, has its
//! own child span.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
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

/// Queue entries a new key at the cap may look at to make room: bounds the
/// work of one check (the periodic sweep does the rest).
const ADMIT_BUDGET: usize = 8;

/// Queue entries the periodic sweep handles per lock hold, so that requests
/// on the shard wait at most that long.
const SWEEP_BATCH: usize = 1024;

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
    /// Tells this counter's queue entry from others of the same hash.
    id: u64,
    slots: SmallVec<[Slot; 2]>,
    expires_at: u64,
}

/// A counter's place in its shard's expiry queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    /// When the counter's windows pass, as of its last queueing; the
    /// counter may have been written since and live longer.
    at: u64,
    hash: u64,
    id: u64,
}

#[derive(Debug, Default)]
struct Shard {
    table: HashTable<Counter>,
    /// One entry per counter in `table`, soonest first.
    expiry: BinaryHeap<Reverse<Due>>,
    next_id: u64,
}

impl Shard {
    /// Looks at up to `budget` queue entries that are due: drops their
    /// counters if expired, queues them again at their current expiry if
    /// written since. Returns how many were dropped and looked at.
    fn drop_expired(&mut self, now: u64, budget: usize) -> (u64, u64) {
        let Shard { table, expiry, .. } = self;
        let mut dropped = 0;
        let mut looked = 0;
        for _ in 0..budget {
            match expiry.peek() {
                Some(Reverse(due)) if due.at <= now => {}
                _ => break,
            }
            let Some(Reverse(due)) = expiry.pop() else {
                break;
            };
            looked += 1;
            // Every counter has one entry, and counters leave the table
            // only here, so the counter is always found.
            if let Ok(entry) = table.find_entry(due.hash, |c| c.id == due.id) {
                let at = entry.get().expires_at;
                if at <= now {
                    entry.remove();
                    dropped += 1;
                } else {
                    expiry.push(Reverse(Due { at, ..due }));
                }
            }
        }
        (dropped, looked)
    }

    /// Whether the soonest queue entry is due.
    fn has_due(&self, now: u64) -> bool {
        self.expiry.peek().is_some_and(|Reverse(d)| d.at <= now)
    }
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
    /// Counters looked at by new keys arriving at the cap (what bounds the
    /// cost of a flood of unique keys; tests read it).
    admission_work: AtomicU64,
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
            admission_work: AtomicU64::new(0),
        }
    }

    /// Drops every counter whose windows have all passed, a batch per lock
    /// hold. Costs what has expired (plus counters written since they were
    /// queued), not the size of the store.
    pub fn sweep(&self) {
        let now = self.clock.now_ns();
        for shard in self.shards.iter() {
            loop {
                let mut s = shard.lock();
                let (dropped, _) = s.drop_expired(now, SWEEP_BATCH);
                let more = s.has_due(now);
                drop(s);
                self.count_dropped(dropped);
                if !more {
                    break;
                }
            }
        }
    }

    fn count_dropped(&self, dropped: u64) {
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
            let (dropped, looked) = shard.drop_expired(now, ADMIT_BUDGET);
            self.admission_work.fetch_add(looked, Relaxed);
            self.count_dropped(dropped);
            if self.live.load(Relaxed) >= self.max_counters {
                self.overflow.fetch_add(1, Relaxed);
                return outcome;
            }
        }
        let id = shard.next_id;
        shard.next_id = id.wrapping_add(1);
        let mut counter = Counter {
            key: check.key.into(),
            hash,
            id,
            slots: SmallVec::new(),
            expires_at: 0,
        };
        store_states(&mut counter, check.limits, &states, now);
        shard.expiry.push(Reverse(Due {
            at: counter.expires_at,
            hash,
            id,
        }));
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
