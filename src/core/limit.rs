//! A single limit (`requests_per_unit` per window, with an algorithm) and
//! how a set of them is charged.
//!
//! A window is a [`Unit`]'s length, aligned to the Unix epoch (every
//! configured limit), or any whole number of milliseconds, optionally
//! shifted by an offset (API-key plans and their monthly quotas; see
//! [`LimitSpec::with_window`]).

use std::hash::{Hash, Hasher};

use super::unit::Unit;

/// How a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// A counter per window: epoch-aligned unless the limit has an offset
    /// (envoyproxy/ratelimit's algorithm).
    FixedWindow,
    /// The current window's count plus the previous window's count weighted
    /// by how much of it still overlaps the sliding window.
    SlidingWindow,
    /// GCRA: a bucket of `burst` tokens refilling at `requests_per_unit`
    /// per unit.
    TokenBucket,
}

impl Algorithm {
    /// Parses the configuration name.
    pub fn parse(name: &str) -> Option<Algorithm> {
        match name {
            "fixed_window" => Some(Algorithm::FixedWindow),
            "sliding_window" => Some(Algorithm::SlidingWindow),
            "token_bucket" => Some(Algorithm::TokenBucket),
            _ => None,
        }
    }

    /// The configuration name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::TokenBucket => "token_bucket",
        }
    }
}

/// One limit of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitSpec {
    pub requests_per_unit: u32,
    pub unit: Unit,
    pub algorithm: Algorithm,
    /// Token bucket size; equal to `requests_per_unit` unless configured.
    pub burst: u32,
    /// Window length in nanoseconds: the unit's, or any length (API-key
    /// plans); then `unit` is the longest unit not longer, for reporting.
    pub window_ns: u64,
    /// Window starts are `offset_ns` past the epoch-aligned ones (less
    /// than `window_ns`): a monthly quota's window starts on its refill
    /// instant. 0 for every configured limit. Used by the fixed and sliding
    /// windows; a token bucket has no window starts.
    pub offset_ns: u64,
    /// Identifies this limit's counter among the limits stored under one
    /// descriptor key. Derived from the algorithm, the unit and the position
    /// in the rule (and, for a window other than the unit's or with an
    /// offset, the window and the offset), not from the amount, so raising
    /// a limit on reload keeps the count.
    pub slot: u64,
}

impl LimitSpec {
    /// A limit at position `index` of its rule.
    pub fn new(
        requests_per_unit: u32,
        unit: Unit,
        algorithm: Algorithm,
        burst: Option<u32>,
        index: usize,
    ) -> LimitSpec {
        LimitSpec {
            requests_per_unit,
            unit,
            algorithm,
            burst: burst.unwrap_or(requests_per_unit),
            window_ns: unit.nanos(),
            offset_ns: 0,
            slot: slot_of(algorithm, unit, index, None),
        }
    }

    /// A limit over a window of any length, whose windows start `offset_ns`
    /// after the epoch-aligned starts: a window holding `now` starts at the
    /// largest `s <= now` with `s ≡ offset_ns (mod window_ns)`.
    ///
    /// The window is taken in whole milliseconds (rounded down), between
    /// 1 ms and [`MAX_WINDOW_NS`] (clamped): the Redis scripts count in
    /// microseconds, exactly only below 2^53. API-key plans use whole
    /// seconds.
    /// The offset is taken modulo the window, then in whole milliseconds.
    /// `unit` (what Envoy is told) is the longest unit not longer than the
    /// window, `Second` for shorter ones. A window equal to a unit's
    /// without offset is exactly [`LimitSpec::new`]'s limit, slot included.
    pub fn with_window(
        requests_per_unit: u32,
        window_ns: u64,
        offset_ns: u64,
        algorithm: Algorithm,
        burst: Option<u32>,
        index: usize,
    ) -> LimitSpec {
        let window_ns = window_ns.clamp(MS, MAX_WINDOW_NS) / MS * MS;
        let offset_ns = (offset_ns % window_ns) / MS * MS;
        let unit = Unit::ALL
            .into_iter()
            .rev()
            .find(|u| u.nanos() <= window_ns)
            .unwrap_or(Unit::Second);
        let custom = window_ns != unit.nanos() || offset_ns != 0;
        LimitSpec {
            requests_per_unit,
            unit,
            algorithm,
            burst: burst.unwrap_or(requests_per_unit),
            window_ns,
            offset_ns,
            slot: slot_of(
                algorithm,
                unit,
                index,
                custom.then_some((window_ns, offset_ns)),
            ),
        }
    }

    /// Window length in nanoseconds.
    pub const fn window_ns(&self) -> u64 {
        self.window_ns
    }

    /// The start of the window holding `now` (ns): the largest `s <= now`
    /// with `s ≡ offset_ns (mod window_ns)` (`now - now % window_ns` without
    /// offset), or 0 if `now` is before the first such `s`. The window ends
    /// (resets) at `window_start(now) + window_ns`.
    pub fn window_start(&self, now: u64) -> u64 {
        let w = u128::from(self.window_ns.max(1));
        let into = (u128::from(now) + w - u128::from(self.offset_ns) % w) % w;
        // `into` < w <= u64::MAX and <= now + w - offset: subtracting from
        // now can only go below 0 before the first window, clamp there.
        now.saturating_sub(u64::try_from(into).unwrap_or(u64::MAX))
    }
}

/// One millisecond in nanoseconds: custom windows and offsets are whole
/// milliseconds.
const MS: u64 = 1_000_000;

/// The longest window [`LimitSpec::with_window`] makes: 100 years of 365
/// days. The Redis scripts compute window starts in microseconds as Lua
/// doubles, exact only while `now + window` stays below 2^53 µs (about 285
/// years after the epoch).
pub const MAX_WINDOW_NS: u64 = 100 * 365 * 86_400 * 1_000_000_000;

/// A limit's identity among those under one counter key. Unit windows
/// without offset hash exactly as they always have, so counters already in
/// a shared store keep matching.
fn slot_of(algorithm: Algorithm, unit: Unit, index: usize, custom: Option<(u64, u64)>) -> u64 {
    // A fixed hasher (not RandomState): slots must be the same in every
    // process so that a shared store sees the same identities.
    let mut h = std::hash::DefaultHasher::new();
    algorithm.hash(&mut h);
    unit.hash(&mut h);
    index.hash(&mut h);
    if let Some((window, offset)) = custom {
        window.hash(&mut h);
        offset.hash(&mut h);
    }
    h.finish()
}

/// How the limits of one descriptor are charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChargePolicy {
    /// envoyproxy/ratelimit's behaviour for a single fixed-window limit:
    /// hits are added even when the answer is over the limit.
    Always,
    /// Admit only if every limit admits; charge nothing otherwise.
    AllOrNothing,
}

impl ChargePolicy {
    /// The policy for a rule with these limits: the reference behaviour for
    /// one fixed window, all-or-nothing for everything else.
    pub fn for_limits(limits: &[LimitSpec]) -> ChargePolicy {
        match limits {
            [one] if one.algorithm == Algorithm::FixedWindow => ChargePolicy::Always,
            _ => ChargePolicy::AllOrNothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots of unit limits as sluice computed them before windows could be
    /// custom (commit e7e1838): counters already in Redis must keep
    /// matching.
    #[test]
    fn unit_limit_slots_are_what_they_always_were() {
        for (algorithm, unit, index, slot) in [
            (
                Algorithm::FixedWindow,
                Unit::Second,
                0,
                17942395924573474124,
            ),
            (Algorithm::FixedWindow, Unit::Minute, 1, 3773602348585689545),
            (Algorithm::FixedWindow, Unit::Day, 0, 11115577178375069692),
            (Algorithm::FixedWindow, Unit::Month, 1, 4116619513141008559),
            (
                Algorithm::SlidingWindow,
                Unit::Minute,
                0,
                1412189259715535079,
            ),
            (Algorithm::SlidingWindow, Unit::Hour, 1, 453433597011201844),
            (
                Algorithm::TokenBucket,
                Unit::Second,
                0,
                12804074314212919245,
            ),
            (Algorithm::TokenBucket, Unit::Day, 1, 6256496603550733623),
        ] {
            let what = format!("{algorithm:?} {unit} #{index}");
            assert_eq!(
                LimitSpec::new(7, unit, algorithm, None, index).slot,
                slot,
                "{what}"
            );
            // The same limit made with its unit's window and no offset.
            let same = LimitSpec::with_window(7, unit.nanos(), 0, algorithm, None, index);
            assert_eq!(same.slot, slot, "{what}");
        }
    }

    /// Slots of custom windows as the first API-key plans computed them
    /// (commit 70088c2): a plan's counters, and a quota's for the current
    /// period, keep counting across an upgrade.
    #[test]
    fn custom_window_slots_are_stable() {
        const S: u64 = 1_000_000_000;
        let month = 31 * 86_400 * S;
        for (spec, slot) in [
            (
                LimitSpec::with_window(5, 90 * S, 0, Algorithm::FixedWindow, None, 0),
                2298621685043540287,
            ),
            (
                LimitSpec::with_window(5, 90 * S, 37 * S, Algorithm::SlidingWindow, None, 1),
                2969594204909699738,
            ),
            (
                // 2023-12-01 to 2024-01-01.
                LimitSpec::with_window(
                    5,
                    month,
                    1_701_388_800 * S % month,
                    Algorithm::FixedWindow,
                    None,
                    2,
                ),
                13503201666838643875,
            ),
        ] {
            assert_eq!(spec.slot, slot, "{spec:?}");
        }
    }
}
