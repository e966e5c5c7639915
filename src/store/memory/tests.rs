//! The memory store: exact counting under concurrency, windows and
//! sweeping, per-limit slots, and the counter cap.

use std::sync::atomic::AtomicU64;

use super::*;
use crate::core::clock::{ManualClock, SystemClock};
use crate::core::limit::{Algorithm, ChargePolicy};
use crate::core::unit::Unit;

const SEC: u64 = 1_000_000_000;
/// 22:10:59.5 UTC on 2023-11-14: half a second before the end of a second
/// and of a minute, 49 minutes before the end of the hour, two hours before
/// the end of the day.
const T0: u64 = 1_699_999_859 * SEC + SEC / 2;

fn store(max_counters: u64) -> (Arc<ManualClock>, MemoryStore) {
    let clock = Arc::new(ManualClock::new(T0));
    let store = MemoryStore::new(clock.clone(), max_counters);
    (clock, store)
}

fn fixed(rpu: u32, unit: Unit, index: usize) -> LimitSpec {
    LimitSpec::new(rpu, unit, Algorithm::FixedWindow, None, index)
}

fn check<'a>(key: &'a [u8], limits: &'a [LimitSpec], hits: u64) -> Check<'a> {
    Check {
        key,
        limits,
        hits,
        policy: ChargePolicy::for_limits(limits),
    }
}

/// Checks `hits` at the store's clock.
fn at_clock(store: &MemoryStore, clock: &ManualClock, c: &Check<'_>) -> Outcome {
    store.check_one(c, clock.now_ns())
}

/// Runs `threads` × `per_thread` checks of one hit, all at time `now`, and
/// returns how many were admitted.
fn hammer(store: &MemoryStore, c: &Check<'_>, now: u64, threads: usize, per_thread: usize) -> u64 {
    let admitted = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..per_thread {
                    if store.check_one(c, now).admitted {
                        admitted.fetch_add(1, Relaxed);
                    }
                }
            });
        }
    });
    admitted.into_inner()
}

#[test]
fn concurrent_checks_on_one_key_admit_exactly_the_limit() {
    let (clock, store) = store(DEFAULT_MAX_COUNTERS);
    let limits = [fixed(1000, Unit::Hour, 0)];
    let c = check(b"one-key", &limits, 1);
    assert_eq!(hammer(&store, &c, clock.now_ns(), 8, 500), 1000);
    // Charging always: all 4000 were counted.
    let o = at_clock(&store, &clock, &check(b"one-key", &limits, 0));
    assert_eq!(o.verdicts[0].used_before, 4000);
    assert_eq!(store.store_stats().live_counters, 1);
}

#[test]
fn concurrent_all_or_nothing_checks_admit_exactly_the_tightest_limit() {
    let (clock, store) = store(DEFAULT_MAX_COUNTERS);
    let limits = [fixed(1000, Unit::Hour, 0), fixed(1500, Unit::Day, 1)];
    let c = check(b"two-limits", &limits, 1);
    assert_eq!(c.policy, ChargePolicy::AllOrNothing);
    assert_eq!(hammer(&store, &c, clock.now_ns(), 8, 500), 1000);
    // The 3000 refused requests charged neither limit.
    let o = at_clock(&store, &clock, &check(b"two-limits", &limits, 0));
    assert_eq!(o.verdicts[0].used_before, 1000);
    assert_eq!(o.verdicts[1].used_before, 1000);
    assert_eq!(o.verdicts[1].remaining, 500);
}

#[test]
fn concurrent_token_bucket_checks_admit_exactly_the_burst() {
    let (clock, store) = store(DEFAULT_MAX_COUNTERS);
    // A bucket of 1000 refilling one a day: no refill to speak of here.
    let limits = [LimitSpec::new(
        1,
        Unit::Day,
        Algorithm::TokenBucket,
        Some(1000),
        0,
    )];
    let c = check(b"bucket", &limits, 1);
    assert_eq!(hammer(&store, &c, clock.now_ns(), 8, 500), 1000);
    let o = at_clock(&store, &clock, &check(b"bucket", &limits, 0));
    assert_eq!(o.verdicts[0].used_before, 1000);
    assert_eq!(o.verdicts[0].remaining, 0);
}

#[test]
fn concurrent_checks_with_the_system_clock_on_many_keys() {
    // The system clock, yearly windows (a window boundary during the test
    // is all but impossible): each key still counts exactly.
    let store = MemoryStore::new(Arc::new(SystemClock::default()), DEFAULT_MAX_COUNTERS);
    let limits = [fixed(100, Unit::Year, 0)];
    let clock = SystemClock::default();
    let admitted = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..8u8 {
            let (store, limits, admitted, clock) = (&store, &limits, &admitted, &clock);
            s.spawn(move || {
                for i in 0..400u32 {
                    // Every thread touches the same 4 keys, in its own order.
                    let key = [b'k', (i.wrapping_add(u32::from(t)) % 4) as u8];
                    if store
                        .check_one(&check(&key, limits, 1), clock.now_ns())
                        .admitted
                    {
                        admitted.fetch_add(1, Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.into_inner(), 400);
    assert_eq!(store.store_stats().live_counters, 4);
}

#[tokio::test]
async fn the_trait_decides_a_batch_in_order_at_the_clock() {
    let (clock, store) = store(DEFAULT_MAX_COUNTERS);
    let one = [fixed(1, Unit::Minute, 0)];
    let two = [fixed(2, Unit::Minute, 0)];
    let checks = [
        check(b"a", &one, 1),
        check(b"b", &two, 1),
        check(b"a", &one, 1),
    ];
    let outcomes = store.check(&checks).await.expect("memory store answers");
    let admitted: Vec<bool> = outcomes.iter().map(|o| o.admitted).collect();
    assert_eq!(admitted, [true, true, false]);
    assert_eq!(outcomes[1].verdicts[0].remaining, 1);
    // Reset is measured from the store's clock: 10 minutes and half a
    // second into the hour, so half a second is left of the minute.
    assert_eq!(outcomes[0].verdicts[0].reset_ns, SEC / 2);
    clock.advance(SEC);
    let outcomes = store
        .check(&checks[..1])
        .await
        .expect("memory store answers");
    assert!(outcomes[0].admitted);
}

#[test]
fn counts_start_over_in_the_next_window() {
    let (clock, store) = store(DEFAULT_MAX_COUNTERS);
    let limits = [fixed(3, Unit::Second, 0)];
    let c = check(b"k", &limits, 1);
    for expected in [true, true, true, false] {
        assert_eq!(at_clock(&store, &clock, &c).admitted, expected);
    }
    clock.advance(SEC / 2); // exactly the next second
    let o = at_clock(&store, &clock, &c);
    assert!(o.admitted);
    assert_eq!(o.verdicts[0].used_before, 0);
    assert_eq!(o.verdicts[0].remaining, 2);
}

#[test]
fn sweep_drops_counters_whose_windows_have_passed() {
    let (clock, store) = store(DEFAULT_MAX_COUNTERS);
    let second = [fixed(5, Unit::Second, 0)];
    let hour = [fixed(5, Unit::Hour, 0)];
    let sliding = [LimitSpec::new(
        5,
        Unit::Second,
        Algorithm::SlidingWindow,
        None,
        0,
    )];
    let bucket = [LimitSpec::new(
        1,
        Unit::Second,
        Algorithm::TokenBucket,
        Some(5),
        0,
    )];
    at_clock(&store, &clock, &check(b"s", &second, 1));
    at_clock(&store, &clock, &check(b"h", &hour, 1));
    at_clock(&store, &clock, &check(b"sl", &sliding, 1));
    at_clock(&store, &clock, &check(b"b", &bucket, 3)); // full again in 3 s
    assert_eq!(store.store_stats().live_counters, 4);

    store.sweep();
    assert_eq!(
        store.store_stats(),
        StoreStats {
            live_counters: 4,
            expired: 0,
            overflow: 0,
            ..StoreStats::default()
        }
    );

    clock.advance(SEC); // past the second; the sliding count still weighs in
    store.sweep();
    assert_eq!(store.store_stats().live_counters, 3);
    assert_eq!(store.store_stats().expired, 1);

    clock.advance(SEC); // past the sliding window's next window
    store.sweep();
    assert_eq!(store.store_stats().live_counters, 2);

    clock.advance(SEC); // the bucket is full
    store.sweep();
    assert_eq!(store.store_stats().live_counters, 1);

    clock.advance(3600 * SEC);
    store.sweep();
    assert_eq!(
        store.store_stats(),
        StoreStats {
            live_counters: 0,
            expired: 4,
            overflow: 0,
            ..StoreStats::default()
        }
    );

    // A swept key starts from zero.
    let o = at_clock(&store, &clock, &check(b"h", &hour, 0));
    assert_eq!(o.verdicts[0].used_before, 0);
}

#[test]
fn limits_under_one_key_keep_their_own_counts() {
    let (clock, store) = store(DEFAULT_MAX_COUNTERS);
    let per_second = [fixed(2, Unit::Second, 0)];
    let per_hour = [fixed(2, Unit::Hour, 0)];
    let both = [fixed(2, Unit::Second, 0), fixed(2, Unit::Hour, 1)];
    let key = b"shared-key";
    assert!(at_clock(&store, &clock, &check(key, &per_second, 2)).admitted);
    assert!(!at_clock(&store, &clock, &check(key, &per_second, 1)).admitted);
    // Same key, another limit: its own count, untouched by the other's 3.
    let o = at_clock(&store, &clock, &check(key, &per_hour, 1));
    assert!(o.admitted);
    assert_eq!(o.verdicts[0].used_before, 0);
    // Position in the rule matters too: the hour limit at index 1 is
    // another slot than the hour limit at index 0.
    let o = at_clock(&store, &clock, &check(key, &both, 0));
    assert_eq!(o.verdicts[0].used_before, 3);
    assert_eq!(o.verdicts[1].used_before, 0);
    assert_eq!(store.store_stats().live_counters, 1);
}

#[test]
fn a_slot_of_a_removed_limit_goes_when_its_window_passes() {
    let (clock, store) = store(DEFAULT_MAX_COUNTERS);
    let old = [fixed(5, Unit::Second, 0)];
    let new = [fixed(5, Unit::Hour, 0)];
    at_clock(&store, &clock, &check(b"k", &old, 1));
    at_clock(&store, &clock, &check(b"k", &new, 1));
    clock.advance(2 * SEC);
    // Writing the hour slot drops the passed second slot; the counter
    // lives as long as the hour slot.
    at_clock(&store, &clock, &check(b"k", &new, 1));
    clock.advance(10 * 60 * SEC);
    store.sweep();
    assert_eq!(store.store_stats().live_counters, 1);
    let o = at_clock(&store, &clock, &check(b"k", &new, 0));
    assert_eq!(o.verdicts[0].used_before, 2);
}

fn windowed(rpu: u32, window: u64, offset: u64) -> LimitSpec {
    LimitSpec::with_window(rpu, window, offset, Algorithm::FixedWindow, None, 0)
}

#[test]
fn a_changed_window_or_offset_has_its_own_count() {
    let (clock, store) = store(DEFAULT_MAX_COUNTERS);
    let minute = [fixed(2, Unit::Minute, 0)];
    let longer = [windowed(2, 90 * SEC, 0)];
    let shifted = [windowed(2, 60 * SEC, 30 * SEC)];
    // The unit's window without offset is the unit limit itself.
    let same = [windowed(2, 60 * SEC, 0)];
    assert!(at_clock(&store, &clock, &check(b"k", &minute, 2)).admitted);
    assert!(!at_clock(&store, &clock, &check(b"k", &same, 1)).admitted);
    for limits in [&longer, &shifted] {
        let o = at_clock(&store, &clock, &check(b"k", limits, 1));
        assert!(o.admitted, "{limits:?}");
        assert_eq!(o.verdicts[0].used_before, 0, "{limits:?}");
    }
    // A raised amount keeps the count, as for unit windows.
    let o = at_clock(&store, &clock, &check(b"k", &[windowed(9, 90 * SEC, 0)], 0));
    assert_eq!(o.verdicts[0].used_before, 1);
    // Each window ends on its own: T0 is 59.5 s into its minute, 29.5 s
    // into its 90 s window and 29.5 s into the minute starting at :30.
    assert_eq!(
        at_clock(&store, &clock, &check(b"k", &longer, 0)).verdicts[0].reset_ns,
        60 * SEC + SEC / 2
    );
    assert_eq!(
        at_clock(&store, &clock, &check(b"k", &shifted, 0)).verdicts[0].reset_ns,
        30 * SEC + SEC / 2
    );
    clock.advance(SEC);
    assert_eq!(
        at_clock(&store, &clock, &check(b"k", &minute, 0)).verdicts[0].used_before,
        0
    );
    assert_eq!(
        at_clock(&store, &clock, &check(b"k", &shifted, 0)).verdicts[0].used_before,
        1
    );
    clock.advance(30 * SEC);
    assert_eq!(
        at_clock(&store, &clock, &check(b"k", &shifted, 0)).verdicts[0].used_before,
        0
    );
    assert_eq!(
        at_clock(&store, &clock, &check(b"k", &longer, 0)).verdicts[0].used_before,
        1
    );
    clock.advance(30 * SEC);
    store.sweep();
    assert_eq!(store.store_stats().live_counters, 0);
}

#[test]
fn raising_a_limit_keeps_the_count() {
    let (clock, store) = store(DEFAULT_MAX_COUNTERS);
    let low = [fixed(3, Unit::Minute, 0)];
    let high = [fixed(10, Unit::Minute, 0)];
    for _ in 0..3 {
        at_clock(&store, &clock, &check(b"k", &low, 1));
    }
    assert!(!at_clock(&store, &clock, &check(b"k", &low, 1)).admitted);
    let o = at_clock(&store, &clock, &check(b"k", &high, 1));
    assert!(o.admitted);
    assert_eq!(o.verdicts[0].used_before, 4);
}

#[test]
fn past_the_cap_new_keys_are_admitted_but_not_stored() {
    let (clock, store) = store(10);
    let limits = [fixed(2, Unit::Minute, 0)];
    let keys: Vec<Vec<u8>> = (0..10).map(|i| format!("key-{i}").into_bytes()).collect();
    for k in &keys {
        assert!(at_clock(&store, &clock, &check(k, &limits, 1)).admitted);
    }
    assert_eq!(
        store.store_stats(),
        StoreStats {
            live_counters: 10,
            expired: 0,
            overflow: 0,
            ..StoreStats::default()
        }
    );

    // The 11th key: decided as if new, admitted, not kept.
    for i in 1..=3u64 {
        let o = at_clock(&store, &clock, &check(b"eleventh", &limits, 1));
        assert!(o.admitted, "an untracked key is decided as new");
        assert_eq!(o.verdicts[0].used_before, 0);
        assert_eq!(store.store_stats().overflow, i);
        assert_eq!(store.store_stats().live_counters, 10);
    }

    // Existing keys keep counting exactly.
    for k in &keys {
        assert!(at_clock(&store, &clock, &check(k, &limits, 1)).admitted);
        assert!(!at_clock(&store, &clock, &check(k, &limits, 1)).admitted);
    }
    assert_eq!(store.store_stats().overflow, 3);

    // A check without hits on an unknown key neither stores nor overflows.
    at_clock(&store, &clock, &check(b"twelfth", &limits, 0));
    assert_eq!(store.store_stats().overflow, 3);

    // Once the old windows have passed and been swept, new keys are kept.
    clock.advance(60 * SEC);
    store.sweep();
    assert_eq!(store.store_stats().live_counters, 0);
    assert_eq!(store.store_stats().expired, 10);
    for _ in 0..2 {
        assert!(at_clock(&store, &clock, &check(b"eleventh", &limits, 1)).admitted);
    }
    assert!(!at_clock(&store, &clock, &check(b"eleventh", &limits, 1)).admitted);
    assert_eq!(store.store_stats().live_counters, 1);
    assert_eq!(store.store_stats().overflow, 3);
}

#[test]
fn at_the_cap_a_new_key_sweeps_its_own_shard_first() {
    let (clock, store) = store(1);
    let limits = [fixed(2, Unit::Second, 0)];
    at_clock(&store, &clock, &check(b"old", &limits, 1));
    clock.advance(SEC);
    // The same key again: found, not new, so the cap does not apply.
    assert!(at_clock(&store, &clock, &check(b"old", &limits, 1)).admitted);
    assert_eq!(store.store_stats().overflow, 0);
    clock.advance(SEC);
    // "old" has expired; a new key in the same shard as "old" makes room
    // by sweeping that shard. Find one by trying keys until one lands in
    // "old"'s shard (64 shards, so a few hundred tries is plenty).
    let shard_of = |k: &[u8]| store.hasher.hash_one(k) % SHARDS as u64;
    let target = shard_of(b"old");
    let key = (0..10_000)
        .map(|i| format!("new-{i}").into_bytes())
        .find(|k| shard_of(k) == target)
        .expect("some key lands in the shard");
    assert!(at_clock(&store, &clock, &check(&key, &limits, 1)).admitted);
    assert_eq!(
        store.store_stats(),
        StoreStats {
            live_counters: 1,
            expired: 1,
            overflow: 0,
            ..StoreStats::default()
        }
    );
    assert!(at_clock(&store, &clock, &check(&key, &limits, 1)).admitted);
    assert!(!at_clock(&store, &clock, &check(&key, &limits, 1)).admitted);
}

#[test]
fn zero_hits_on_an_unknown_key_creates_nothing() {
    let (clock, store) = store(DEFAULT_MAX_COUNTERS);
    let limits = [fixed(5, Unit::Minute, 0)];
    let o = at_clock(&store, &clock, &check(b"ghost", &limits, 0));
    assert!(o.admitted);
    assert_eq!(o.verdicts[0].remaining, 5);
    assert_eq!(store.store_stats().live_counters, 0);
    // Nor does a refused all-or-nothing check.
    let two = [fixed(1, Unit::Minute, 0), fixed(5, Unit::Hour, 1)];
    let o = at_clock(&store, &clock, &check(b"ghost", &two, 2));
    assert!(!o.admitted);
    assert_eq!(store.store_stats().live_counters, 0);
    // A limit of zero refuses and, charging always, still counts.
    let zero = [fixed(0, Unit::Minute, 0)];
    assert!(!at_clock(&store, &clock, &check(b"zero", &zero, 1)).admitted);
    assert_eq!(store.store_stats().live_counters, 1);
}

#[test]
fn keys_are_compared_in_full() {
    let (clock, store) = store(DEFAULT_MAX_COUNTERS);
    let limits = [fixed(1, Unit::Minute, 0)];
    assert!(at_clock(&store, &clock, &check(b"ab", &limits, 1)).admitted);
    assert!(at_clock(&store, &clock, &check(b"a", &limits, 1)).admitted);
    assert!(at_clock(&store, &clock, &check(b"abc", &limits, 1)).admitted);
    assert!(at_clock(&store, &clock, &check(b"", &limits, 1)).admitted);
    assert!(!at_clock(&store, &clock, &check(b"ab", &limits, 1)).admitted);
    assert_eq!(store.store_stats().live_counters, 4);
}

/// The shard a key lands in, and `n` distinct keys that all land in it.
fn keys_in_one_shard(store: &MemoryStore, n: usize) -> Vec<Vec<u8>> {
    let shard_of = |k: &[u8]| store.hasher.hash_one(k) % SHARDS as u64;
    let target = shard_of(b"anchor");
    (0..)
        .map(|i| format!("k-{i}").into_bytes())
        .filter(|k| shard_of(k) == target)
        .take(n)
        .collect()
}

#[test]
fn at_the_cap_a_flood_of_new_keys_costs_a_bounded_few_lookups_each() {
    // One shard full of live counters: the old code swept all of them for
    // every new key (about 15 600 per check at the default cap).
    let (clock, store) = store(2_000);
    let day = [fixed(5, Unit::Day, 0)];
    let keys = keys_in_one_shard(&store, 2_000);
    for k in &keys {
        assert!(at_clock(&store, &clock, &check(k, &day, 1)).admitted);
    }
    assert_eq!(store.store_stats().live_counters, 2_000);
    let flood = keys_in_one_shard(&store, 2_500);
    for k in &flood[2_000..] {
        assert!(at_clock(&store, &clock, &check(k, &day, 1)).admitted);
    }
    assert_eq!(store.store_stats().overflow, 500);
    // Nothing is due: not one counter looked at.
    assert_eq!(store.admission_work.load(Relaxed), 0);

    // Every counter was written again (so each queue entry is stale) and
    // then the first windows pass: each new key looks at a few entries at
    // most, and room frees up as the sweep catches up.
    let (clock, store) = self::store(2_000);
    let second = [fixed(5, Unit::Second, 0)];
    let keys = keys_in_one_shard(&store, 2_100);
    for k in &keys[..2_000] {
        at_clock(&store, &clock, &check(k, &second, 1));
    }
    clock.advance(SEC / 2); // the next second
    for k in &keys[..2_000] {
        at_clock(&store, &clock, &check(k, &second, 1));
    }
    clock.advance(SEC); // every counter has expired; every entry is stale
    for k in &keys[2_000..] {
        at_clock(&store, &clock, &check(k, &second, 1));
    }
    let looked = store.admission_work.load(Relaxed);
    assert!(looked <= 100 * ADMIT_BUDGET as u64, "{looked}");
    // The expired counters were dropped as the new keys came in.
    assert!(store.store_stats().expired > 0);
    store.sweep();
    assert_eq!(store.store_stats().live_counters, 100);
}

#[test]
fn a_counter_written_after_it_was_queued_lives_until_its_new_expiry() {
    let (clock, store) = store(DEFAULT_MAX_COUNTERS);
    let second = [fixed(5, Unit::Second, 0)];
    // Queued to expire at the end of this second (0.5 s from T0)...
    at_clock(&store, &clock, &check(b"k", &second, 1));
    clock.advance(SEC / 2);
    // ...written in the next second, so it lives one more.
    at_clock(&store, &clock, &check(b"k", &second, 2));
    clock.advance(SEC / 2);
    store.sweep();
    assert_eq!(store.store_stats().live_counters, 1);
    let o = at_clock(&store, &clock, &check(b"k", &second, 0));
    assert_eq!(o.verdicts[0].used_before, 2, "the count survived the sweep");
    clock.advance(SEC / 2);
    store.sweep();
    assert_eq!(store.store_stats().live_counters, 0);
    assert_eq!(store.store_stats().expired, 1);
}

#[test]
fn every_counter_has_exactly_one_queue_entry() {
    let (clock, store) = store(300);
    let second = [fixed(3, Unit::Second, 0)];
    let minute = [fixed(3, Unit::Minute, 0)];
    for round in 0..20u64 {
        for i in 0..200u64 {
            let k = format!("k-{}", (i * 7 + round * 13) % 400).into_bytes();
            let limits: &[LimitSpec] = if i % 3 == 0 { &minute } else { &second };
            at_clock(&store, &clock, &check(&k, limits, 1));
        }
        clock.advance(SEC / 3);
        if round % 4 == 0 {
            store.sweep();
        }
        let mut live = 0;
        for shard in store.shards.iter() {
            let s = shard.lock();
            assert_eq!(s.table.len(), s.expiry.len());
            for Reverse(due) in s.expiry.iter() {
                let c = s
                    .table
                    .find(due.hash, |c| c.id == due.id)
                    .expect("a queued counter is in the table");
                assert_eq!(c.hash, due.hash);
            }
            live += s.table.len() as u64;
        }
        assert_eq!(store.store_stats().live_counters, live);
        assert!(live <= 300);
    }
}
