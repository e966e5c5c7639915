//! The three counting algorithms as pure state transitions, and the
//! all-or-nothing combination of several limits.
//!
//! Time is nanoseconds since the Unix epoch, passed in by the caller: the
//! memory store reads its clock, the Redis scripts read the Redis server's
//! `TIME`. Each algorithm's `evaluate` returns the verdict and the state to
//! store if the request is charged; the caller decides whether to store it.

mod fixed_window;
mod sliding_window;
mod token_bucket;

pub use fixed_window::FixedWindow;
pub use sliding_window::SlidingWindow;
pub use token_bucket::TokenBucket;

use smallvec::SmallVec;

use super::limit::{Algorithm, ChargePolicy, LimitSpec};

/// What one limit says about one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// This limit alone would admit the request.
    pub admitted: bool,
    /// Requests already counted against the limit before this one (rounded
    /// up for weighted and bucket counts).
    pub used_before: u64,
    /// Requests still allowed after this one; 0 when rejected.
    pub remaining: u64,
    /// Nanoseconds until the limit resets: the end of the window for the
    /// window algorithms; for a token bucket, until it is full again (when
    /// admitted) or until this request would fit (when rejected).
    pub reset_ns: u64,
}

/// The stored state of one limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitState {
    Fixed(FixedWindow),
    Sliding(SlidingWindow),
    Bucket(TokenBucket),
}

impl LimitState {
    /// The empty state for an algorithm.
    pub fn new(algorithm: Algorithm) -> LimitState {
        match algorithm {
            Algorithm::FixedWindow => LimitState::Fixed(FixedWindow::default()),
            Algorithm::SlidingWindow => LimitState::Sliding(SlidingWindow::default()),
            Algorithm::TokenBucket => LimitState::Bucket(TokenBucket::default()),
        }
    }

    /// Evaluates `hits` at `now`; returns the verdict and the state to keep
    /// if the request is charged. A state of another algorithm than the
    /// spec's (a limit changed on reload) starts over.
    pub fn evaluate(&self, spec: &LimitSpec, now: u64, hits: u64) -> (Verdict, LimitState) {
        match (spec.algorithm, self) {
            (Algorithm::FixedWindow, LimitState::Fixed(s)) => {
                let (v, n) = s.evaluate(spec, now, hits);
                (v, LimitState::Fixed(n))
            }
            (Algorithm::SlidingWindow, LimitState::Sliding(s)) => {
                let (v, n) = s.evaluate(spec, now, hits);
                (v, LimitState::Sliding(n))
            }
            (Algorithm::TokenBucket, LimitState::Bucket(s)) => {
                let (v, n) = s.evaluate(spec, now, hits);
                (v, LimitState::Bucket(n))
            }
            (algorithm, _) => LimitState::new(algorithm).evaluate(spec, now, hits),
        }
    }

    /// When this state no longer matters and may be dropped (ns).
    pub fn expires_at(&self, spec: &LimitSpec) -> u64 {
        let w = spec.window_ns();
        match self {
            LimitState::Fixed(s) => s.window_start.saturating_add(w),
            LimitState::Sliding(s) => s.window_start.saturating_add(w.saturating_mul(2)),
            LimitState::Bucket(s) => s.tat,
        }
    }
}

/// The outcome of one descriptor's limits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Every limit admitted the request.
    pub admitted: bool,
    /// One verdict per limit, in the rule's order.
    pub verdicts: SmallVec<[Verdict; 2]>,
    /// Set when the shared counters could not be used and a failure mode
    /// answered instead; `None` for a decision made on the counters.
    pub degraded: Option<Fallback>,
}

/// Which failure mode answered a check the shared counters could not
/// decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Admitted without counting: the verdict numbers mean nothing.
    Allow,
    /// Rejected without counting: the verdict numbers mean nothing.
    Deny,
    /// Decided on this replica's own counters, each limit divided by the
    /// number of replicas: the numbers are real, but local.
    Local,
}

impl Fallback {
    /// The name used in metadata, headers and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Allow => "allow",
            Fallback::Deny => "deny",
            Fallback::Local => "local",
        }
    }

    /// Whether the verdicts carry counter state (only `Local`'s do).
    pub fn counted(self) -> bool {
        self == Fallback::Local
    }
}

impl Outcome {
    /// The index of the limit to report: a rejecting limit if any (the one
    /// that resets last, so a retry after its reset can succeed), else the
    /// one with the fewest remaining requests.
    pub fn tightest(&self) -> usize {
        let mut best = 0;
        for (i, v) in self.verdicts.iter().enumerate().skip(1) {
            let b = &self.verdicts[best];
            let better = match (v.admitted, b.admitted) {
                (false, true) => true,
                (true, false) => false,
                (false, false) => v.reset_ns > b.reset_ns,
                (true, true) => v.remaining < b.remaining,
            };
            if better {
                best = i;
            }
        }
        best
    }
}

/// Decides `hits` against every limit in `specs`, whose states are in
/// `states` (same order), and updates `states` as `policy` says:
/// [`ChargePolicy::Always`] stores every new state; [`ChargePolicy::AllOrNothing`]
/// stores them only when every limit admits. A check with `hits == 0`
/// never changes a state. Returns whether anything was written.
pub fn decide(
    policy: ChargePolicy,
    specs: &[LimitSpec],
    states: &mut [LimitState],
    now: u64,
    hits: u64,
) -> (Outcome, bool) {
    let mut outcome = Outcome {
        admitted: true,
        verdicts: SmallVec::with_capacity(specs.len()),
        degraded: None,
    };
    let mut next: SmallVec<[LimitState; 2]> = SmallVec::with_capacity(specs.len());
    for (spec, state) in specs.iter().zip(states.iter()) {
        let (verdict, new_state) = state.evaluate(spec, now, hits);
        outcome.admitted &= verdict.admitted;
        outcome.verdicts.push(verdict);
        next.push(new_state);
    }
    let charge = hits > 0
        && match policy {
            ChargePolicy::Always => true,
            ChargePolicy::AllOrNothing => outcome.admitted,
        };
    if charge {
        states.copy_from_slice(&next);
    } else {
        // Rejected all-or-nothing: nothing was charged, so the limits that
        // would have admitted still have what they had.
        for v in outcome.verdicts.iter_mut().filter(|v| v.admitted) {
            v.remaining = v.remaining.saturating_add(hits);
        }
    }
    (outcome, charge)
}

/// Rounds nanoseconds up to whole seconds, at least 1: the
/// `duration_until_reset` Envoy receives.
pub fn whole_seconds(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000).max(1)
}

#[cfg(test)]
mod tests;
