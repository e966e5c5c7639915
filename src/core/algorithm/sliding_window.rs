//! Sliding window, approximated by two fixed windows: the previous window's
//! count weighs in by the fraction of it that the sliding window still
//! covers. The comparison is done in exact integer arithmetic, scaled by
//! the window length, so there is no rounding at the limit. The fixed
//! windows are those of [`LimitSpec::window_start`] (offset included).

use super::Verdict;
use crate::core::limit::LimitSpec;

/// Counts of the current window (starting at `window_start`) and the one
/// before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlidingWindow {
    pub window_start: u64,
    pub previous: u64,
    pub current: u64,
}

impl SlidingWindow {
    pub(super) fn evaluate(
        &self,
        spec: &LimitSpec,
        now: u64,
        hits: u64,
    ) -> (Verdict, SlidingWindow) {
        let w = spec.window_ns();
        let start = spec.window_start(now);
        let (previous, current) = if self.window_start == start {
            (self.previous, self.current)
        } else if self.window_start.saturating_add(w) == start {
            (self.current, 0)
        } else {
            (0, 0)
        };
        // How much of the previous window the sliding window still covers.
        let overlap = u128::from(w - (now - start));
        let w128 = u128::from(w);
        let used = u128::from(previous) * overlap + u128::from(current) * w128;
        let after = used + u128::from(hits) * w128;
        let limit = u128::from(spec.requests_per_unit) * w128;
        let admitted = after <= limit;
        let verdict = Verdict {
            admitted,
            used_before: saturate(used.div_ceil(w128)),
            remaining: if admitted {
                saturate((limit - after) / w128)
            } else {
                0
            },
            reset_ns: start + w - now,
        };
        (
            verdict,
            SlidingWindow {
                window_start: start,
                previous,
                current: current.saturating_add(hits),
            },
        )
    }
}

fn saturate(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}
