//! A single limit (`requests_per_unit` per `unit`, with an algorithm) and
//! how a set of them is charged.

use std::hash::{Hash, Hasher};

use super::unit::Unit;

/// How a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// A counter per epoch-aligned window (envoyproxy/ratelimit's algorithm).
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
    /// instant. 0 for every configured limit.
    pub offset_ns: u64,
    /// Identifies this limit's counter among the limits stored under one
    /// descriptor key. Derived from the algorithm, the unit and the position
    /// in the rule, not from the amount, so raising a limit on reload keeps
    /// the count.
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

    /// A limit over a window of any length (whole ms, at least 1 ms: the
    /// Redis scripts count in microseconds), whose windows start
    /// `offset_ns` (whole ms, taken modulo the window) after the
    /// epoch-aligned starts.
    pub fn with_window(
        requests_per_unit: u32,
        window_ns: u64,
        offset_ns: u64,
        algorithm: Algorithm,
        burst: Option<u32>,
        index: usize,
    ) -> LimitSpec {
        let window_ns = (window_ns / 1_000_000).max(1) * 1_000_000;
        let offset_ns = (offset_ns % window_ns) / 1_000_000 * 1_000_000;
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

    /// The start of the window holding `now` (ns).
    pub fn window_start(&self, now: u64) -> u64 {
        let w = u128::from(self.window_ns.max(1));
        let into = (u128::from(now) + w - u128::from(self.offset_ns) % w) % w;
        // `into` < w <= u64::MAX and <= now + w - offset: subtracting from
        // now can only go below 0 before the first window, clamp there.
        now.saturating_sub(u64::try_from(into).unwrap_or(u64::MAX))
    }
}

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
