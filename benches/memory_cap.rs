//! The memory store's admission cost for new keys, below its counter cap
//! and at it: per-check latency percentiles, one thread, no network.
//!
//! `cargo bench --bench memory_cap` (docs/benchmarks.md has the figures).
//!
//! Every check is a key never seen before (a flood of unique descriptor
//! values). Cases:
//! - below the cap: the store holds half its cap; each new key is stored.
//! - at the cap, nothing expired: the store is full of live counters;
//!   each new key finds no room and is decided uncounted (overflow).
//! - at the cap, all expired: the store is full of counters whose window
//!   has passed; each new key makes room by dropping expired ones.

#![allow(clippy::expect_used, clippy::print_stdout)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use sluice::core::clock::SystemClock;
use sluice::core::limit::{Algorithm, ChargePolicy, LimitSpec};
use sluice::core::unit::Unit;
use sluice::store::{Check, CounterStore as _, MemoryStore};

const SEC: u64 = 1_000_000_000;
/// A fixed instant (2023-11-14T22:11:00Z, the start of a minute), so runs
/// are repeatable; the store is given times explicitly.
const T0: u64 = 1_699_999_860 * SEC;

fn key(prefix: &str, i: u64) -> Vec<u8> {
    format!("{prefix}-{i:012}").into_bytes()
}

fn check<'a>(key: &'a [u8], limits: &'a [LimitSpec]) -> Check<'a> {
    Check {
        key,
        limits,
        hits: 1,
        policy: ChargePolicy::for_limits(limits),
    }
}

fn fill(store: &MemoryStore, n: u64, limits: &[LimitSpec], now: u64) {
    for i in 0..n {
        let k = key("fill", i);
        store.check_one(&check(&k, limits), now);
    }
}

/// Checks `n` new keys at `now` and returns their sorted latencies in ns.
fn measure(store: &MemoryStore, n: u64, limits: &[LimitSpec], now: u64) -> Vec<u64> {
    let keys: Vec<Vec<u8>> = (0..n).map(|i| key("new", i)).collect();
    let mut took = Vec::with_capacity(keys.len());
    for k in &keys {
        let c = check(k, limits);
        let started = Instant::now();
        black_box(store.check_one(black_box(&c), now));
        took.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    took.sort_unstable();
    took
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(case: &str, sorted: &[u64], store: &MemoryStore) {
    let stats = store.store_stats();
    println!(
        "{case:<28} n={:<7} p50={:>7} ns  p99={:>8} ns  p99.9={:>8} ns  max={:>9} ns  (live {}, overflow {}, expired {})",
        sorted.len(),
        pct(sorted, 0.50),
        pct(sorted, 0.99),
        pct(sorted, 0.999),
        sorted.last().copied().unwrap_or(0),
        stats.live_counters,
        stats.overflow,
        stats.expired,
    );
}

fn main() {
    let cap: u64 = std::env::var("CAP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(sluice::store::memory::DEFAULT_MAX_COUNTERS);
    let n: u64 = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let day = [LimitSpec::new(
        1_000_000,
        Unit::Day,
        Algorithm::FixedWindow,
        None,
        0,
    )];
    let second = [LimitSpec::new(
        1_000_000,
        Unit::Second,
        Algorithm::FixedWindow,
        None,
        0,
    )];
    println!("memory store, cap {cap} counters, {n} new keys per case");

    let clock = Arc::new(SystemClock::default());
    let below = MemoryStore::new(clock.clone(), cap);
    fill(&below, cap / 2, &day, T0);
    report("below the cap", &measure(&below, n, &day, T0), &below);
    drop(below);

    let full = MemoryStore::new(clock.clone(), cap);
    fill(&full, cap, &day, T0);
    report(
        "at the cap, nothing expired",
        &measure(&full, n, &day, T0),
        &full,
    );
    drop(full);

    let expired = MemoryStore::new(clock, cap);
    fill(&expired, cap, &second, T0);
    report(
        "at the cap, all expired",
        &measure(&expired, n, &second, T0 + 2 * SEC),
        &expired,
    );
}
