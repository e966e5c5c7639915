//! The three algorithms against small reference models that keep their
//! state the obvious way (a count per window, a bucket of tokens), and the
//! all-or-nothing combination of several limits.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::core::unit::Unit;

const SEC: u64 = 1_000_000_000;
/// Somewhere in 2023, not aligned to any window.
const T0: u64 = 1_700_000_000_123_456_789;

fn fixed(rpu: u32, unit: Unit, index: usize) -> LimitSpec {
    LimitSpec::new(rpu, unit, Algorithm::FixedWindow, None, index)
}

fn sliding(rpu: u32, unit: Unit) -> LimitSpec {
    LimitSpec::new(rpu, unit, Algorithm::SlidingWindow, None, 0)
}

fn bucket(rpu: u32, unit: Unit, burst: u32) -> LimitSpec {
    LimitSpec::new(rpu, unit, Algorithm::TokenBucket, Some(burst), 0)
}

fn states_for(specs: &[LimitSpec]) -> Vec<LimitState> {
    specs.iter().map(|s| LimitState::new(s.algorithm)).collect()
}

/// Turns generated `(kind, fraction, hits)` triples into `(time step,
/// hits)` pairs for a window of `w` ns: no step, a small step, up to one
/// window, or up to three windows, with an odd nanosecond offset so that
/// steps do not stay on round numbers.
fn steps(w: u64, raw: &[(u8, u64, u64)]) -> Vec<(u64, u64)> {
    raw.iter()
        .map(|&(kind, frac, hits)| {
            let dt = match kind % 4 {
                0 => 0,
                1 => w / 10_000 * frac + frac % 7,
                2 => w / 1_000 * frac + frac % 13,
                _ => w / 333 * frac + frac % 3,
            };
            (dt, hits)
        })
        .collect()
}

fn raw_ops(max_hits: u64) -> impl Strategy<Value = Vec<(u8, u64, u64)>> {
    prop::collection::vec((0u8..4, 0u64..1000, 0..=max_hits), 1..80)
}

/// An exact non-negative rational, always in lowest terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Q {
    num: u128,
    den: u128,
}

fn gcd(a: u128, b: u128) -> u128 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Q {
    fn new(num: u128, den: u128) -> Q {
        assert!(den > 0);
        let g = gcd(num, den).max(1);
        Q {
            num: num / g,
            den: den / g,
        }
    }

    fn int(n: u64) -> Q {
        Q::new(u128::from(n), 1)
    }

    fn add(self, o: Q) -> Q {
        Q::new(self.num * o.den + o.num * self.den, self.den * o.den)
    }

    /// `self - o`; the model only subtracts what is there.
    fn sub(self, o: Q) -> Q {
        let (a, b) = (self.num * o.den, o.num * self.den);
        assert!(a >= b, "{self:?} - {o:?} would be negative");
        Q::new(a - b, self.den * o.den)
    }

    fn mul(self, o: Q) -> Q {
        Q::new(self.num * o.num, self.den * o.den)
    }

    fn le(self, o: Q) -> bool {
        self.num * o.den <= o.num * self.den
    }

    fn floor(self) -> u64 {
        u64::try_from(self.num / self.den).expect("small")
    }

    fn ceil(self) -> u64 {
        u64::try_from(self.num.div_ceil(self.den)).expect("small")
    }
}

#[test]
fn rationals_behave() {
    let half = Q::new(1, 2);
    assert_eq!(half.add(half), Q::int(1));
    assert_eq!(Q::int(3).sub(half).floor(), 2);
    assert_eq!(Q::int(3).sub(half).ceil(), 3);
    assert!(half.le(Q::new(2, 4)));
    assert!(!Q::new(2, 3).le(half));
    assert_eq!(Q::new(2, 3).mul(Q::int(3)), Q::int(2));
}

// ---------------------------------------------------------------------------
// Fixed window

/// Runs `ops` through [`decide`] with one fixed-window limit and through the
/// model (a count per window `[k * w + offset, (k + 1) * w + offset)`),
/// comparing every answer.
fn fixed_window_agrees(spec: LimitSpec, policy: ChargePolicy, start: u64, ops: &[(u64, u64)]) {
    assert_eq!(spec.algorithm, Algorithm::FixedWindow);
    let w = spec.window_ns();
    let offset = spec.offset_ns;
    let limit = u64::from(spec.requests_per_unit);
    let mut states = states_for(&[spec]);
    let mut counts: HashMap<u64, u64> = HashMap::new();
    let mut now = T0 + start;
    for &(dt, hits) in ops {
        now += dt;
        let window = (now - offset) / w;
        let count = counts.get(&window).copied().unwrap_or(0);
        let admitted = count + hits <= limit;
        let (outcome, wrote) = decide(policy, &[spec], &mut states, now, hits);
        let v = outcome.verdicts[0];
        assert_eq!(
            outcome.admitted, admitted,
            "at {now}: {count} + {hits} of {limit}"
        );
        assert_eq!(v.admitted, admitted);
        assert_eq!(v.used_before, count);
        assert_eq!(v.remaining, if admitted { limit - count - hits } else { 0 });
        // Windows are aligned to the epoch plus the offset.
        assert_eq!(v.reset_ns, (window + 1) * w + offset - now);
        let secs = whole_seconds(v.reset_ns);
        assert!(
            (1..=whole_seconds(w)).contains(&secs),
            "reset {secs}s for a window of {w} ns"
        );
        let charge = hits > 0
            && match policy {
                ChargePolicy::Always => true,
                ChargePolicy::AllOrNothing => admitted,
            };
        assert_eq!(wrote, charge);
        if charge {
            *counts.entry(window).or_default() += hits;
        }
    }
}

/// Custom windows (any whole number of ms; callers use whole seconds) with
/// an offset anywhere in the window (and sometimes past it, to be reduced):
/// `(window_ns, offset_ns)` as given to [`LimitSpec::with_window`].
fn custom_windows() -> impl Strategy<Value = (u64, u64)> {
    let window = prop::sample::select(vec![
        90 * SEC,
        SEC + SEC / 2,
        7 * SEC,
        3_600 * SEC + 1_000_000,
        31 * 86_400 * SEC,
    ]);
    (window, any::<bool>(), 0u64..1_000_000, 0u64..4).prop_map(|(w, zero, frac, wraps)| {
        let offset = if zero {
            0
        } else {
            w / 1_000_000 * frac + wraps * w
        };
        (w, offset)
    })
}

proptest! {
    #[test]
    fn fixed_window_matches_model_charging_always(
        minute in any::<bool>(),
        limit in 0u32..15,
        start in 0u64..120 * SEC,
        raw in raw_ops(5),
    ) {
        let unit = if minute { Unit::Minute } else { Unit::Second };
        fixed_window_agrees(fixed(limit, unit, 0), ChargePolicy::Always, start, &steps(unit.nanos(), &raw));
    }

    #[test]
    fn fixed_window_matches_model_all_or_nothing(
        minute in any::<bool>(),
        limit in 0u32..15,
        start in 0u64..120 * SEC,
        raw in raw_ops(5),
    ) {
        let unit = if minute { Unit::Minute } else { Unit::Second };
        fixed_window_agrees(fixed(limit, unit, 0), ChargePolicy::AllOrNothing, start, &steps(unit.nanos(), &raw));
    }

    #[test]
    fn fixed_window_with_custom_window_and_offset_matches_model(
        (window, offset) in custom_windows(),
        always in any::<bool>(),
        limit in 0u32..15,
        start in 0u64..120 * SEC,
        raw in raw_ops(5),
    ) {
        let spec = LimitSpec::with_window(limit, window, offset, Algorithm::FixedWindow, None, 0);
        let policy = if always { ChargePolicy::Always } else { ChargePolicy::AllOrNothing };
        fixed_window_agrees(spec, policy, start, &steps(spec.window_ns(), &raw));
    }
}

#[test]
fn fixed_window_always_charges_over_limit_and_resets_next_window() {
    let spec = fixed(2, Unit::Second, 0);
    let mut states = states_for(&[spec]);
    let t = 1_700_000_042 * SEC + 100; // 100 ns into a second
    for expected in [true, true, false, false] {
        let (o, wrote) = decide(ChargePolicy::Always, &[spec], &mut states, t, 1);
        assert_eq!(o.admitted, expected);
        assert!(wrote);
    }
    assert_eq!(
        states[0],
        LimitState::Fixed(FixedWindow {
            window_start: t - 100,
            count: 4
        })
    );
    // Reset is what is left of the second, rounded up to whole seconds.
    let (o, _) = decide(ChargePolicy::Always, &[spec], &mut states, t, 0);
    assert_eq!(o.verdicts[0].reset_ns, SEC - 100);
    assert_eq!(whole_seconds(o.verdicts[0].reset_ns), 1);
    // The next window starts from zero.
    let (o, _) = decide(ChargePolicy::Always, &[spec], &mut states, t - 100 + SEC, 1);
    assert!(o.admitted);
    assert_eq!(o.verdicts[0].used_before, 0);
    assert_eq!(o.verdicts[0].remaining, 1);
    assert_eq!(o.verdicts[0].reset_ns, SEC);
}

// ---------------------------------------------------------------------------
// Sliding window

/// Runs `ops` through [`decide`] with one sliding-window limit and through
/// the model: a charged count per window (aligned to the epoch plus the
/// offset); the estimate is `previous * (w - elapsed) / w + current`, in
/// exact rationals.
fn sliding_window_agrees(spec: LimitSpec, start: u64, ops: &[(u64, u64)]) {
    assert_eq!(spec.algorithm, Algorithm::SlidingWindow);
    let w = spec.window_ns();
    let offset = spec.offset_ns;
    let limit = spec.requests_per_unit;
    let mut states = states_for(&[spec]);
    let mut counts: HashMap<u64, u64> = HashMap::new();
    let mut now = T0 + start;
    for &(dt, hits) in ops {
        now += dt;
        let window = (now - offset) / w;
        let elapsed = now - (window * w + offset);
        let previous = counts.get(&(window - 1)).copied().unwrap_or(0);
        let current = counts.get(&window).copied().unwrap_or(0);
        let estimate = Q::int(previous)
            .mul(Q::new(u128::from(w - elapsed), u128::from(w)))
            .add(Q::int(current));
        let wanted = estimate.add(Q::int(hits));
        let admitted = wanted.le(Q::int(u64::from(limit)));

        let (outcome, wrote) = decide(ChargePolicy::AllOrNothing, &[spec], &mut states, now, hits);
        let v = outcome.verdicts[0];
        assert_eq!(
            outcome.admitted, admitted,
            "estimate {estimate:?} + {hits} of {limit}"
        );
        assert_eq!(v.used_before, estimate.ceil());
        let remaining = if admitted {
            Q::int(u64::from(limit)).sub(wanted).floor()
        } else {
            0
        };
        assert_eq!(v.remaining, remaining);
        assert_eq!(v.reset_ns, (window + 1) * w + offset - now);
        assert_eq!(wrote, admitted && hits > 0);
        if wrote {
            *counts.entry(window).or_default() += hits;
        }
    }
}

proptest! {
    #[test]
    fn sliding_window_matches_model(
        minute in any::<bool>(),
        limit in 0u32..15,
        start in 0u64..120 * SEC,
        raw in raw_ops(5),
    ) {
        let unit = if minute { Unit::Minute } else { Unit::Second };
        sliding_window_agrees(sliding(limit, unit), start, &steps(unit.nanos(), &raw));
    }

    #[test]
    fn sliding_window_with_custom_window_and_offset_matches_model(
        (window, offset) in custom_windows(),
        limit in 0u32..15,
        start in 0u64..120 * SEC,
        raw in raw_ops(5),
    ) {
        let spec = LimitSpec::with_window(limit, window, offset, Algorithm::SlidingWindow, None, 0);
        sliding_window_agrees(spec, start, &steps(spec.window_ns(), &raw));
    }
}

#[test]
fn sliding_window_weighs_the_previous_window() {
    let spec = sliding(10, Unit::Minute);
    let w = spec.window_ns();
    let start = T0 - T0 % w;
    let mut states = states_for(&[spec]);
    // 10 in the last second of one window.
    let (o, _) = decide(
        ChargePolicy::AllOrNothing,
        &[spec],
        &mut states,
        start + w - SEC,
        10,
    );
    assert!(o.admitted);
    // A quarter into the next one, 3/4 of those 10 still count: 7.5, so
    // two more fit (9.5) but not three (10.5).
    let t = start + w + w / 4;
    let (o, wrote) = decide(ChargePolicy::AllOrNothing, &[spec], &mut states, t, 3);
    assert!(!o.admitted && !wrote);
    assert_eq!(o.verdicts[0].used_before, 8);
    let (o, wrote) = decide(ChargePolicy::AllOrNothing, &[spec], &mut states, t, 2);
    assert!(o.admitted && wrote);
    assert_eq!(o.verdicts[0].remaining, 0);
    // Two windows later the old count has gone entirely.
    let (o, _) = decide(
        ChargePolicy::AllOrNothing,
        &[spec],
        &mut states,
        start + 3 * w,
        0,
    );
    assert_eq!(o.verdicts[0].used_before, 0);
    assert_eq!(o.verdicts[0].remaining, 10);
}

// ---------------------------------------------------------------------------
// Token bucket

/// Rates that divide a millisecond (and so every window, all whole ms) in
/// nanoseconds exactly, so the emission interval
/// `window / rate` is a whole number of ns and the bucket can be compared
/// exactly with a continuous one.
const EXACT_RATES: [u32; 12] = [1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 40, 50];

/// Runs `ops` through [`decide`] with one token bucket and through the
/// model: a continuous bucket of `burst` tokens refilling at `rpu` per
/// window. Tokens are kept scaled by the window length (`tokens * w`),
/// which makes every quantity an integer. `rpu` must divide the window
/// in ns.
fn token_bucket_agrees(spec: LimitSpec, start: u64, ops: &[(u64, u64)]) {
    assert_eq!(spec.algorithm, Algorithm::TokenBucket);
    assert_eq!(spec.window_ns() % u64::from(spec.requests_per_unit), 0);
    let w = u128::from(spec.window_ns());
    let rate = u128::from(spec.requests_per_unit);
    let full = u128::from(spec.burst) * w;
    let mut tokens = full; // scaled by w
    let mut states = states_for(&[spec]);
    let mut now = T0 + start;
    for &(dt, hits) in ops {
        now += dt;
        tokens = (tokens + u128::from(dt) * rate).min(full);
        let need = u128::from(hits) * w;
        let admitted = need <= tokens;

        let (outcome, wrote) = decide(ChargePolicy::AllOrNothing, &[spec], &mut states, now, hits);
        let v = outcome.verdicts[0];
        assert_eq!(
            outcome.admitted, admitted,
            "{hits} hits with {tokens}/{w} tokens"
        );
        assert_eq!(u128::from(v.used_before), (full - tokens).div_ceil(w));
        if admitted {
            let left = tokens - need;
            assert_eq!(u128::from(v.remaining), left / w);
            // Until the bucket is full again.
            assert_eq!(u128::from(v.reset_ns) * rate, full - left);
        } else {
            assert_eq!(v.remaining, 0);
            // Until this request would fit.
            assert_eq!(u128::from(v.reset_ns) * rate, need - tokens);
        }
        assert_eq!(wrote, admitted && hits > 0);
        if admitted {
            tokens -= need;
        }
    }
}

proptest! {
    #[test]
    fn token_bucket_matches_continuous_bucket(
        minute in any::<bool>(),
        rate in prop::sample::select(EXACT_RATES.to_vec()),
        burst in 1u32..20,
        start in 0u64..120 * SEC,
        raw in raw_ops(8),
    ) {
        let unit = if minute { Unit::Minute } else { Unit::Second };
        token_bucket_agrees(bucket(rate, unit, burst), start, &steps(unit.nanos(), &raw));
    }

    /// Custom windows are whole milliseconds, which the exact rates divide
    /// too. The offset changes nothing for a bucket.
    #[test]
    fn token_bucket_with_custom_window_matches_continuous_bucket(
        (window, offset) in custom_windows(),
        rate in prop::sample::select(EXACT_RATES.to_vec()),
        burst in 1u32..20,
        start in 0u64..120 * SEC,
        raw in raw_ops(8),
    ) {
        let spec = LimitSpec::with_window(rate, window, offset, Algorithm::TokenBucket, Some(burst), 0);
        token_bucket_agrees(spec, start, &steps(spec.window_ns(), &raw));
    }
}

#[test]
fn token_bucket_refills_at_the_rate_up_to_the_burst() {
    // 2 a second, bucket of 5.
    let spec = bucket(2, Unit::Second, 5);
    let mut states = states_for(&[spec]);
    let mut t = T0;
    let (o, _) = decide(ChargePolicy::AllOrNothing, &[spec], &mut states, t, 5);
    assert!(o.admitted);
    assert_eq!(o.verdicts[0].remaining, 0);
    assert_eq!(o.verdicts[0].reset_ns, 5 * SEC / 2);
    let (o, wrote) = decide(ChargePolicy::AllOrNothing, &[spec], &mut states, t, 1);
    assert!(!o.admitted && !wrote);
    assert_eq!(o.verdicts[0].reset_ns, SEC / 2);
    // Half a second later one token is back, not more.
    t += SEC / 2;
    let (o, _) = decide(ChargePolicy::AllOrNothing, &[spec], &mut states, t, 2);
    assert!(!o.admitted);
    let (o, _) = decide(ChargePolicy::AllOrNothing, &[spec], &mut states, t, 1);
    assert!(o.admitted);
    // An hour later the bucket is full, and holds no more than the burst.
    t += 3600 * SEC;
    let (o, _) = decide(ChargePolicy::AllOrNothing, &[spec], &mut states, t, 6);
    assert!(!o.admitted);
    let (o, _) = decide(ChargePolicy::AllOrNothing, &[spec], &mut states, t, 0);
    assert!(o.admitted);
    assert_eq!(o.verdicts[0].remaining, 5);
    assert_eq!(o.verdicts[0].used_before, 0);
}

#[test]
fn token_bucket_with_zero_rate_admits_only_checks() {
    let spec = bucket(0, Unit::Second, 5);
    let mut states = states_for(&[spec]);
    for t in [T0, T0 + SEC, T0 + 3600 * SEC] {
        let (o, wrote) = decide(ChargePolicy::AllOrNothing, &[spec], &mut states, t, 1);
        assert!(!o.admitted && !wrote);
        assert_eq!(o.verdicts[0].remaining, 0);
        let (o, wrote) = decide(ChargePolicy::AllOrNothing, &[spec], &mut states, t, 0);
        assert!(o.admitted && !wrote);
    }
}

#[test]
fn token_bucket_with_a_huge_burst_still_counts() {
    // One a year with a burst of 1000: a full bucket is worth 1000 years of
    // refill, more nanoseconds than a u64 holds. The bucket must still run
    // dry rather than admit without end.
    let spec = bucket(1, Unit::Year, 1000);
    let mut states = states_for(&[spec]);
    let mut admitted = 0u64;
    for _ in 0..2000 {
        let (o, _) = decide(ChargePolicy::AllOrNothing, &[spec], &mut states, T0, 1);
        admitted += u64::from(o.admitted);
    }
    assert!(
        admitted <= 1000,
        "admitted {admitted} from a bucket of 1000"
    );
    assert!(admitted > 0);
}

// ---------------------------------------------------------------------------
// Custom windows and offsets

fn windowed(alg: Algorithm, rpu: u32, window: u64, offset: u64) -> LimitSpec {
    LimitSpec::with_window(rpu, window, offset, alg, None, 0)
}

/// A spec as it could be written by hand, with any window and offset.
fn raw_spec(window_ns: u64, offset_ns: u64) -> LimitSpec {
    LimitSpec {
        window_ns,
        offset_ns,
        ..fixed(1, Unit::Second, 0)
    }
}

proptest! {
    /// The start is the largest `s <= now` with `s ≡ offset (mod w)`, for
    /// any u64 window, offset and time (no overflow at the extremes).
    #[test]
    fn window_start_is_the_last_aligned_instant(
        w in prop_oneof![1u64..1000, any::<u64>().prop_map(|w| w.max(1)), Just(u64::MAX)],
        offset in prop_oneof![Just(0u64), any::<u64>(), Just(u64::MAX)],
        now in prop_oneof![any::<u64>(), Just(u64::MAX), Just(0u64)],
    ) {
        let s = raw_spec(w, offset).window_start(now);
        let (w, offset, now, s) = (u128::from(w), u128::from(offset), u128::from(now), u128::from(s));
        prop_assert!(s <= now);
        if now >= offset % w {
            prop_assert_eq!(s % w, offset % w);
            prop_assert!(now - s < w);
        } else {
            // Before the first aligned instant: clamped to the epoch.
            prop_assert_eq!(s, 0);
        }
    }

    /// With the unit's window and no offset (or an offset of whole
    /// windows), `with_window` is exactly `new`, slot included, and windows
    /// start where they always did: `now - now % w`.
    #[test]
    fn unit_windows_without_offset_are_unchanged(
        unit in prop::sample::select(Unit::ALL.to_vec()),
        alg in prop::sample::select(vec![Algorithm::FixedWindow, Algorithm::SlidingWindow, Algorithm::TokenBucket]),
        rpu in any::<u32>(),
        burst in prop::option::of(any::<u32>()),
        index in 0usize..8,
        wraps in 0u64..3,
        now in any::<u64>(),
    ) {
        let old = LimitSpec::new(rpu, unit, alg, burst, index);
        let w = unit.nanos();
        prop_assert_eq!(old.window_ns(), w);
        prop_assert_eq!(old.offset_ns, 0);
        prop_assert_eq!(LimitSpec::with_window(rpu, w, wraps * w, alg, burst, index), old);
        prop_assert_eq!(old.window_start(now), now - now % w);
    }
}

#[test]
fn custom_windows_report_the_longest_unit_not_longer() {
    for (window, unit) in [
        (SEC / 2, Unit::Second),
        (SEC, Unit::Second),
        (59 * SEC + 999_000_000, Unit::Second),
        (90 * SEC, Unit::Minute),
        (2 * 86_400 * SEC, Unit::Day),
        (8 * 86_400 * SEC, Unit::Week),
        (31 * 86_400 * SEC, Unit::Month),
        (400 * 86_400 * SEC, Unit::Year),
    ] {
        let spec = windowed(Algorithm::FixedWindow, 5, window, 0);
        assert_eq!(spec.unit, unit, "{window} ns");
        assert_eq!(spec.window_ns(), window);
    }
}

#[test]
fn custom_windows_and_offsets_are_whole_milliseconds() {
    // Rounded down to the ms, at least 1 ms, at most MAX_WINDOW_NS.
    assert_eq!(
        windowed(Algorithm::FixedWindow, 1, 90 * SEC + 999_999, 0).window_ns(),
        90 * SEC
    );
    assert_eq!(
        windowed(Algorithm::FixedWindow, 1, 0, 0).window_ns(),
        1_000_000
    );
    assert_eq!(
        windowed(Algorithm::FixedWindow, 1, 1, 0).window_ns(),
        1_000_000
    );
    let longest = windowed(Algorithm::FixedWindow, 1, u64::MAX, 0);
    assert_eq!(longest.window_ns(), crate::core::limit::MAX_WINDOW_NS);
    assert_eq!(longest.unit, Unit::Year);
    // The offset is reduced modulo the window, then to whole ms.
    let w = 90 * SEC;
    let spec = windowed(Algorithm::FixedWindow, 1, w, 37 * SEC + 123);
    assert_eq!(spec.offset_ns, 37 * SEC);
    for wraps in [1, 2, 1000] {
        let past = windowed(Algorithm::FixedWindow, 1, w, 37 * SEC + wraps * w);
        assert_eq!(past, spec, "offset + {wraps} windows");
    }
    // A hand-made spec with an offset past the window starts the same
    // windows.
    for now in [T0, T0 + 17 * SEC, T0 + 89 * SEC] {
        assert_eq!(
            raw_spec(w, 37 * SEC + 5 * w).window_start(now),
            spec.window_start(now)
        );
    }
}

#[test]
fn slots_differ_by_window_and_offset() {
    let unit = fixed(5, Unit::Minute, 0);
    let same = windowed(Algorithm::FixedWindow, 5, Unit::Minute.nanos(), 0);
    let longer = windowed(Algorithm::FixedWindow, 5, 90 * SEC, 0);
    let shifted = windowed(Algorithm::FixedWindow, 5, Unit::Minute.nanos(), 30 * SEC);
    let longer_shifted = windowed(Algorithm::FixedWindow, 5, 90 * SEC, 30 * SEC);
    assert_eq!(same.slot, unit.slot);
    let slots = [unit.slot, longer.slot, shifted.slot, longer_shifted.slot];
    for (i, a) in slots.iter().enumerate() {
        for b in &slots[i + 1..] {
            assert_ne!(a, b, "{slots:?}");
        }
    }
    // Still independent of the amount, as for unit windows.
    assert_eq!(
        windowed(Algorithm::FixedWindow, 9, 90 * SEC, 30 * SEC).slot,
        longer_shifted.slot
    );
}

#[test]
fn fixed_window_of_90_seconds() {
    let spec = windowed(Algorithm::FixedWindow, 3, 90 * SEC, 0);
    let w = 90 * SEC;
    let start = T0 - T0 % w;
    let mut states = states_for(&[spec]);
    let t = start + 80 * SEC;
    for left in [2, 1, 0] {
        let (o, _) = decide(ChargePolicy::Always, &[spec], &mut states, t, 1);
        assert!(o.admitted);
        assert_eq!(o.verdicts[0].remaining, left);
        assert_eq!(o.verdicts[0].reset_ns, 10 * SEC);
    }
    // 89.999... s into the window: still the same one; then a new one.
    let (o, _) = decide(ChargePolicy::Always, &[spec], &mut states, start + w - 1, 1);
    assert!(!o.admitted);
    assert_eq!(o.verdicts[0].reset_ns, 1);
    let (o, _) = decide(ChargePolicy::Always, &[spec], &mut states, start + w, 1);
    assert!(o.admitted);
    assert_eq!(o.verdicts[0].used_before, 0);
    assert_eq!(o.verdicts[0].reset_ns, w);
    assert_eq!(whole_seconds(o.verdicts[0].reset_ns), 90);
}

#[test]
fn sliding_window_of_90_seconds() {
    let spec = windowed(Algorithm::SlidingWindow, 10, 90 * SEC, 0);
    let w = 90 * SEC;
    let start = T0 - T0 % w;
    let mut states = states_for(&[spec]);
    let (o, _) = decide(
        ChargePolicy::AllOrNothing,
        &[spec],
        &mut states,
        start + w - SEC,
        10,
    );
    assert!(o.admitted);
    // A third into the next window, 2/3 of those 10 still count: 6.67, so
    // three more fit (9.67) but not four (10.67).
    let t = start + w + 30 * SEC;
    let (o, wrote) = decide(ChargePolicy::AllOrNothing, &[spec], &mut states, t, 4);
    assert!(!o.admitted && !wrote);
    assert_eq!(o.verdicts[0].used_before, 7);
    assert_eq!(o.verdicts[0].reset_ns, 60 * SEC);
    let (o, wrote) = decide(ChargePolicy::AllOrNothing, &[spec], &mut states, t, 3);
    assert!(o.admitted && wrote);
    assert_eq!(o.verdicts[0].remaining, 0);
}

#[test]
fn token_bucket_of_90_seconds() {
    // 3 per 90 s: one token every 30 s, a bucket of 3.
    let spec = windowed(Algorithm::TokenBucket, 3, 90 * SEC, 0);
    let mut states = states_for(&[spec]);
    let (o, _) = decide(ChargePolicy::AllOrNothing, &[spec], &mut states, T0, 3);
    assert!(o.admitted);
    assert_eq!(o.verdicts[0].reset_ns, 90 * SEC);
    let (o, _) = decide(ChargePolicy::AllOrNothing, &[spec], &mut states, T0, 1);
    assert!(!o.admitted);
    assert_eq!(o.verdicts[0].reset_ns, 30 * SEC);
    let (o, _) = decide(
        ChargePolicy::AllOrNothing,
        &[spec],
        &mut states,
        T0 + 30 * SEC - 1,
        1,
    );
    assert!(!o.admitted);
    assert_eq!(o.verdicts[0].reset_ns, 1);
    let (o, _) = decide(
        ChargePolicy::AllOrNothing,
        &[spec],
        &mut states,
        T0 + 30 * SEC,
        1,
    );
    assert!(o.admitted);
}

#[test]
fn offset_windows_start_and_reset_exactly_at_the_boundary() {
    let w = 90 * SEC;
    let offset = 37 * SEC;
    // A boundary: 37 s past a multiple of 90 s.
    let boundary = T0 - T0 % w + w + offset;
    let spec = windowed(Algorithm::FixedWindow, 2, w, offset);
    let mut states = states_for(&[spec]);
    for (now, start) in [
        (boundary - w, boundary - w),
        (boundary - 1, boundary - w),
        (boundary, boundary),
        (boundary + 1, boundary),
        (boundary + w - 1, boundary),
        (boundary + w, boundary + w),
    ] {
        assert_eq!(
            spec.window_start(now),
            start,
            "at boundary{:+}",
            i128::from(now) - i128::from(boundary)
        );
    }
    // Fill the window before the boundary; its last ns is refused, the
    // boundary starts afresh.
    decide(ChargePolicy::Always, &[spec], &mut states, boundary - w, 2);
    let (o, _) = decide(ChargePolicy::Always, &[spec], &mut states, boundary - 1, 1);
    assert!(!o.admitted);
    assert_eq!(o.verdicts[0].used_before, 2);
    assert_eq!(o.verdicts[0].reset_ns, 1);
    let (o, _) = decide(ChargePolicy::Always, &[spec], &mut states, boundary, 1);
    assert!(o.admitted);
    assert_eq!(o.verdicts[0].used_before, 0);
    assert_eq!(o.verdicts[0].reset_ns, w);
    assert_eq!(
        states[0],
        LimitState::Fixed(FixedWindow {
            window_start: boundary,
            count: 1
        })
    );

    // Sliding: at the boundary the window before becomes the previous one,
    // weighing in fully, then less by the ns.
    let spec = windowed(Algorithm::SlidingWindow, 4, w, offset);
    let mut states = states_for(&[spec]);
    decide(
        ChargePolicy::AllOrNothing,
        &[spec],
        &mut states,
        boundary - 1,
        4,
    );
    let (o, _) = decide(
        ChargePolicy::AllOrNothing,
        &[spec],
        &mut states,
        boundary,
        1,
    );
    assert!(!o.admitted);
    assert_eq!(o.verdicts[0].used_before, 4);
    assert_eq!(o.verdicts[0].reset_ns, w);
    let (o, _) = decide(
        ChargePolicy::AllOrNothing,
        &[spec],
        &mut states,
        boundary + w / 4,
        1,
    );
    assert!(o.admitted);
    assert_eq!(o.verdicts[0].used_before, 3);
    assert_eq!(o.verdicts[0].reset_ns, w - w / 4);
    assert_eq!(states[0].expires_at(&spec), boundary + 2 * w);
}

/// A monthly quota: a fixed window as long as the period, offset to its
/// start, has exactly the period as its window.
#[test]
fn a_quota_period_is_exactly_one_offset_window() {
    const DAY: u64 = 86_400 * SEC;
    // 2024-02-15 and 2024-03-15 00:00 UTC (29 days: a leap February),
    // 2023-12-01 and 2024-01-01 (31 days), 2023-11-05 and 2023-12-05 (30).
    for (start_s, days) in [
        (1_707_955_200u64, 29u64),
        (1_701_388_800, 31),
        (1_699_142_400, 30),
    ] {
        let start = start_s * SEC;
        let len = days * DAY;
        let spec = windowed(Algorithm::FixedWindow, 1000, len, start % len);
        assert_eq!(spec.unit, if days >= 30 { Unit::Month } else { Unit::Week });
        for now in [start, start + 1, start + len / 2, start + len - 1] {
            assert_eq!(spec.window_start(now), start, "{days} days, {now}");
            let (o, _) = decide(
                ChargePolicy::AllOrNothing,
                &[spec],
                &mut states_for(&[spec]),
                now,
                1,
            );
            assert_eq!(o.verdicts[0].reset_ns, start + len - now);
        }
        assert_eq!(spec.window_start(start + len), start + len);
        assert_eq!(spec.window_start(start - 1), start - len);
    }
}

// ---------------------------------------------------------------------------
// Several limits

#[test]
fn all_or_nothing_charges_neither_when_one_rejects() {
    let specs = [fixed(3, Unit::Second, 0), fixed(5, Unit::Minute, 1)];
    let minute = T0 - T0 % Unit::Minute.nanos();
    let mut states = states_for(&specs);
    let t = minute + SEC / 2;
    for i in 0..3u64 {
        let (o, wrote) = decide(ChargePolicy::AllOrNothing, &specs, &mut states, t, 1);
        assert!(o.admitted && wrote);
        assert_eq!(o.verdicts[0].remaining, 2 - i);
        assert_eq!(o.verdicts[1].remaining, 4 - i);
    }
    // The per-second limit refuses: nothing is charged, and the minute
    // limit reports what it still has.
    let before = states.clone();
    let (o, wrote) = decide(ChargePolicy::AllOrNothing, &specs, &mut states, t, 1);
    assert!(!o.admitted && !wrote);
    assert_eq!(states, before);
    assert!(!o.verdicts[0].admitted && o.verdicts[1].admitted);
    assert_eq!(o.verdicts[0].remaining, 0);
    assert_eq!(o.verdicts[1].remaining, 2);
    assert_eq!(o.tightest(), 0);

    // Next second: two more fit, then the minute limit refuses, and the
    // per-second count stays where it was.
    let t = t + SEC;
    for _ in 0..2 {
        let (o, _) = decide(ChargePolicy::AllOrNothing, &specs, &mut states, t, 1);
        assert!(o.admitted);
    }
    let before = states.clone();
    let (o, wrote) = decide(ChargePolicy::AllOrNothing, &specs, &mut states, t, 1);
    assert!(!o.admitted && !wrote);
    assert_eq!(states, before);
    assert!(o.verdicts[0].admitted && !o.verdicts[1].admitted);
    assert_eq!(o.verdicts[0].remaining, 1);
    assert_eq!(o.tightest(), 1);
    // A request of two: refused by both; the one resetting last is reported.
    let (o, _) = decide(
        ChargePolicy::AllOrNothing,
        &[specs[0], specs[1]],
        &mut states,
        t,
        2,
    );
    assert!(!o.verdicts[0].admitted && !o.verdicts[1].admitted);
    assert_eq!(o.tightest(), 1);
    assert_eq!(states, before);
}

#[test]
fn all_or_nothing_over_every_algorithm() {
    let specs = [
        fixed(4, Unit::Minute, 0),
        sliding(3, Unit::Minute),
        bucket(1, Unit::Minute, 2),
    ];
    let mut states = states_for(&specs);
    let t = T0;
    // The bucket allows 2, then refuses; nothing moves.
    for _ in 0..2 {
        assert!(
            decide(ChargePolicy::AllOrNothing, &specs, &mut states, t, 1)
                .0
                .admitted
        );
    }
    let before = states.clone();
    let (o, wrote) = decide(ChargePolicy::AllOrNothing, &specs, &mut states, t, 1);
    assert!(!o.admitted && !wrote);
    assert_eq!(states, before);
    assert_eq!(o.tightest(), 2);
    // The limits that would have admitted report their uncharged room.
    assert_eq!(o.verdicts[0].remaining, 2);
    assert_eq!(o.verdicts[1].remaining, 1);
}

#[test]
fn zero_hits_never_write() {
    let specs = [fixed(10, Unit::Second, 0), bucket(5, Unit::Second, 5)];
    let mut states = states_for(&specs);
    let before = states.clone();
    for policy in [ChargePolicy::Always, ChargePolicy::AllOrNothing] {
        let (o, wrote) = decide(policy, &specs, &mut states, T0, 0);
        assert!(o.admitted && !wrote);
        assert_eq!(states, before);
        assert_eq!(o.verdicts[0].remaining, 10);
        assert_eq!(o.verdicts[1].remaining, 5);
    }

    // Charged past the limit (fixed window, charging always): a check at
    // 11 of 10 is not admitted, and does not move the count.
    let spec = [fixed(10, Unit::Second, 0)];
    let mut states = states_for(&spec);
    for _ in 0..11 {
        decide(ChargePolicy::Always, &spec, &mut states, T0, 1);
    }
    let before = states.clone();
    let (o, wrote) = decide(ChargePolicy::Always, &spec, &mut states, T0, 0);
    assert!(!o.admitted && !wrote);
    assert_eq!(o.verdicts[0].used_before, 11);
    assert_eq!(states, before);
    // Exactly at the limit, a check still passes.
    let mut states = states_for(&spec);
    decide(ChargePolicy::Always, &spec, &mut states, T0, 10);
    let (o, _) = decide(ChargePolicy::Always, &spec, &mut states, T0, 0);
    assert!(o.admitted);
    assert_eq!(o.verdicts[0].remaining, 0);
}

fn verdict(admitted: bool, remaining: u64, reset_ns: u64) -> Verdict {
    Verdict {
        admitted,
        used_before: 0,
        remaining,
        reset_ns,
    }
}

fn outcome(verdicts: &[Verdict]) -> Outcome {
    Outcome {
        admitted: verdicts.iter().all(|v| v.admitted),
        verdicts: verdicts.iter().copied().collect(),
        degraded: None,
    }
}

#[test]
fn tightest_prefers_rejecting_then_fewest_remaining() {
    // All admit: fewest remaining; ties go to the first.
    let o = outcome(&[
        verdict(true, 5, 1),
        verdict(true, 2, 9),
        verdict(true, 2, 3),
    ]);
    assert_eq!(o.tightest(), 1);
    // One rejects: that one, whatever the others have left.
    let o = outcome(&[
        verdict(true, 0, 1),
        verdict(false, 0, 2),
        verdict(true, 0, 99),
    ]);
    assert_eq!(o.tightest(), 1);
    // Several reject: the one that resets last.
    let o = outcome(&[
        verdict(false, 0, 5),
        verdict(true, 0, 1),
        verdict(false, 0, 50),
        verdict(false, 0, 7),
    ]);
    assert_eq!(o.tightest(), 2);
    let o = outcome(&[verdict(true, 3, 5)]);
    assert_eq!(o.tightest(), 0);
}

proptest! {
    #[test]
    fn tightest_is_a_valid_choice(raw in prop::collection::vec((any::<bool>(), 0u64..10, 0u64..10), 1..6)) {
        let vs: Vec<Verdict> = raw.iter().map(|&(a, r, t)| verdict(a, r, t)).collect();
        let o = outcome(&vs);
        let best = vs[o.tightest()];
        if vs.iter().any(|v| !v.admitted) {
            prop_assert!(!best.admitted);
            prop_assert!(vs.iter().filter(|v| !v.admitted).all(|v| v.reset_ns <= best.reset_ns));
        } else {
            prop_assert!(vs.iter().all(|v| v.remaining >= best.remaining));
        }
    }
}

// ---------------------------------------------------------------------------
// States

#[test]
fn a_state_of_another_algorithm_starts_over() {
    let spec = fixed(3, Unit::Second, 0);
    let stale = LimitState::Bucket(TokenBucket {
        tat: T0 + 1000 * SEC,
    });
    let (v, next) = stale.evaluate(&spec, T0, 1);
    assert!(v.admitted);
    assert_eq!(v.used_before, 0);
    assert_eq!(
        next,
        LimitState::Fixed(FixedWindow {
            window_start: T0 - T0 % SEC,
            count: 1
        })
    );
}

#[test]
fn states_expire_when_they_no_longer_matter() {
    let f = fixed(3, Unit::Minute, 0);
    let s = sliding(3, Unit::Minute);
    let b = bucket(3, Unit::Minute, 3);
    let w = Unit::Minute.nanos();
    let start = T0 - T0 % w;
    let (_, fs) = LimitState::new(f.algorithm).evaluate(&f, T0, 1);
    assert_eq!(fs.expires_at(&f), start + w);
    let (_, ss) = LimitState::new(s.algorithm).evaluate(&s, T0, 1);
    // The count still weighs in during the next window.
    assert_eq!(ss.expires_at(&s), start + 2 * w);
    let (_, bs) = LimitState::new(b.algorithm).evaluate(&b, T0, 2);
    // Full again after two emission intervals.
    assert_eq!(bs.expires_at(&b), T0 + 2 * (w / 3));
}

#[test]
fn whole_seconds_rounds_up_to_at_least_one() {
    assert_eq!(whole_seconds(0), 1);
    assert_eq!(whole_seconds(1), 1);
    assert_eq!(whole_seconds(SEC), 1);
    assert_eq!(whole_seconds(SEC + 1), 2);
    assert_eq!(whole_seconds(60 * SEC), 60);
}
