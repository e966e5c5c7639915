//! Token bucket as GCRA (generic cell rate algorithm): the state is one
//! timestamp, the theoretical arrival time (TAT) of the next request. Each
//! request moves it forward by one emission interval `T = window /
//! requests_per_unit`; a request fits while `TAT - now <= burst * T`.

use super::Verdict;
use crate::core::limit::LimitSpec;

/// The theoretical arrival time, ns since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    pub tat: u64,
}

impl TokenBucket {
    pub(super) fn evaluate(&self, spec: &LimitSpec, now: u64, hits: u64) -> (Verdict, TokenBucket) {
        let w = spec.window_ns();
        if spec.requests_per_unit == 0 || spec.burst == 0 {
            // A bucket that never fills: only a check without hits passes.
            let verdict = Verdict {
                admitted: hits == 0,
                used_before: 0,
                remaining: 0,
                reset_ns: w,
            };
            return (verdict, *self);
        }
        let interval = (w / u64::from(spec.requests_per_unit)).max(1);
        let tau = interval.saturating_mul(u64::from(spec.burst));
        let tat = self.tat.max(now);
        let new_tat = tat.saturating_add(interval.saturating_mul(hits));
        let admitted = new_tat - now <= tau;
        let verdict = if admitted {
            Verdict {
                admitted,
                used_before: (tat - now).div_ceil(interval),
                remaining: (tau - (new_tat - now)) / interval,
                reset_ns: new_tat - now,
            }
        } else {
            Verdict {
                admitted,
                used_before: (tat - now).div_ceil(interval),
                remaining: 0,
                reset_ns: new_tat - tau - now,
            }
        };
        (verdict, TokenBucket { tat: new_tat })
    }
}
