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
        // In u128: a large burst of a slow rate (`burst * interval`) and the
        // TAT it leads to can exceed u64 nanoseconds; saturating them would
        // admit without end. A TAT past what a u64 holds is refused.
        let tau = u128::from(interval) * u128::from(spec.burst);
        let tat = self.tat.max(now);
        let new_tat = u128::from(tat) + u128::from(interval) * u128::from(hits);
        let ahead = new_tat - u128::from(now);
        let admitted = ahead <= tau && new_tat <= u128::from(u64::MAX);
        let used_before = (tat - now).div_ceil(interval);
        let verdict = if admitted {
            Verdict {
                admitted,
                used_before,
                remaining: saturate((tau - ahead) / u128::from(interval)),
                reset_ns: saturate(ahead),
            }
        } else {
            Verdict {
                admitted,
                used_before,
                remaining: 0,
                reset_ns: saturate(ahead.saturating_sub(tau)),
            }
        };
        (
            verdict,
            TokenBucket {
                tat: saturate(new_tat),
            },
        )
    }
}

fn saturate(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}
