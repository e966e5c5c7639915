//! Fixed window: one counter per window, aligned to the epoch or, for a
//! limit with an offset, to the epoch plus the offset
//! ([`LimitSpec::window_start`]).

use super::Verdict;
use crate::core::limit::LimitSpec;

/// Count of the window that starts at `window_start` (ns).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FixedWindow {
    pub window_start: u64,
    pub count: u64,
}

impl FixedWindow {
    pub(super) fn evaluate(&self, spec: &LimitSpec, now: u64, hits: u64) -> (Verdict, FixedWindow) {
        let w = spec.window_ns();
        let start = spec.window_start(now);
        let before = if self.window_start == start {
            self.count
        } else {
            0
        };
        let after = before.saturating_add(hits);
        let limit = u64::from(spec.requests_per_unit);
        let verdict = Verdict {
            admitted: after <= limit,
            used_before: before,
            remaining: limit.saturating_sub(after),
            reset_ns: start + w - now,
        };
        (
            verdict,
            FixedWindow {
                window_start: start,
                count: after,
            },
        )
    }
}
