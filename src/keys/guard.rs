//! sluice's own protection, decided by the same counting code as every
//! other limit (a private in-memory store): failed key validations per
//! caller (`ValidateKey` and key-aware `ShouldRateLimit` alike; who the
//! caller is, the transports and [`crate::service`] say), failed admin
//! authentications per caller, and admin calls per token subject.

use std::sync::Arc;

use crate::core::clock::{Clock, SystemClock};
use crate::core::key::{self, KeyBuf, Part};
use crate::core::limit::{Algorithm, ChargePolicy, LimitSpec};
use crate::core::unit::Unit;
use crate::store::{Check, MemoryStore};

/// Per-minute allowances; 0 turns a guard off.
#[derive(Clone, Copy, Debug)]
pub struct GuardOptions {
    pub failed_validations_per_minute: u32,
    pub admin_calls_per_minute: u32,
    pub admin_auth_failures_per_minute: u32,
}

impl Default for GuardOptions {
    fn default() -> Self {
        GuardOptions {
            failed_validations_per_minute: 100,
            admin_calls_per_minute: 600,
            admin_auth_failures_per_minute: 20,
        }
    }
}

#[derive(Debug)]
pub struct AbuseGuard {
    store: MemoryStore,
    clock: SystemClock,
    failures: Option<[LimitSpec; 1]>,
    admin: Option<[LimitSpec; 1]>,
    admin_auth_failures: Option<[LimitSpec; 1]>,
}

impl AbuseGuard {
    pub fn new(o: GuardOptions) -> AbuseGuard {
        let per_minute = |n: u32, index| {
            (n > 0).then(|| {
                [LimitSpec::new(
                    n,
                    Unit::Minute,
                    Algorithm::FixedWindow,
                    None,
                    index,
                )]
            })
        };
        AbuseGuard {
            store: MemoryStore::new(Arc::new(SystemClock::default()), 1_000_000),
            clock: SystemClock::default(),
            failures: per_minute(o.failed_validations_per_minute, 0),
            admin: per_minute(o.admin_calls_per_minute, 1),
            admin_auth_failures: per_minute(o.admin_auth_failures_per_minute, 2),
        }
    }

    /// Whether `caller` has used up its failed validations this minute.
    pub fn failures_exhausted(&self, caller: &str) -> bool {
        let Some(limits) = &self.failures else {
            return false;
        };
        let outcome = self.charge(b"validate-failures", caller, limits, 0);
        outcome.verdicts.first().is_some_and(|v| v.remaining == 0)
    }

    /// How many more failures `caller` may have this minute
    /// (`u64::MAX` when the guard is off).
    pub fn failures_left(&self, caller: &str) -> u64 {
        let Some(limits) = &self.failures else {
            return u64::MAX;
        };
        let outcome = self.charge(b"validate-failures", caller, limits, 0);
        outcome.verdicts.first().map_or(0, |v| v.remaining)
    }

    /// Counts one failed validation of `caller`.
    pub fn record_failure(&self, caller: &str) {
        if let Some(limits) = &self.failures {
            self.charge(b"validate-failures", caller, limits, 1);
        }
    }

    /// Whether `subject` may make another admin call; counts it.
    pub fn admit_admin(&self, subject: &str) -> bool {
        match &self.admin {
            Some(limits) => self.charge(b"admin-calls", subject, limits, 1).admitted,
            None => true,
        }
    }

    /// The failed admin authentications allowed per caller per minute
    /// (`None`: no limit).
    pub fn admin_auth_failures_allowed(&self) -> Option<u32> {
        self.admin_auth_failures
            .as_ref()
            .map(|[l]| l.requests_per_unit)
    }

    /// Whether `caller` has used up its failed admin authentications this
    /// minute.
    pub fn admin_auth_exhausted(&self, caller: &str) -> bool {
        let Some(limits) = &self.admin_auth_failures else {
            return false;
        };
        let outcome = self.charge(b"admin-auth-failures", caller, limits, 0);
        outcome.verdicts.first().is_some_and(|v| v.remaining == 0)
    }

    /// Counts one failed admin authentication of `caller`.
    pub fn record_admin_auth_failure(&self, caller: &str) {
        if let Some(limits) = &self.admin_auth_failures {
            self.charge(b"admin-auth-failures", caller, limits, 1);
        }
    }

    /// Drops counters whose windows have passed.
    pub fn sweep(&self) {
        self.store.sweep();
    }

    fn charge(
        &self,
        what: &[u8],
        who: &str,
        limits: &[LimitSpec],
        hits: u64,
    ) -> crate::core::algorithm::Outcome {
        let mut k = KeyBuf::new();
        key::push(&mut k, Part::Internal, what);
        key::push(&mut k, Part::Value, who.as_bytes());
        let check = Check {
            key: &k,
            limits,
            hits,
            policy: ChargePolicy::AllOrNothing,
        };
        self.store.check_one(&check, self.clock.now_ns())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_block_after_the_allowance() {
        let g = AbuseGuard::new(GuardOptions {
            failed_validations_per_minute: 3,
            admin_calls_per_minute: 2,
            admin_auth_failures_per_minute: 2,
        });
        for _ in 0..3 {
            assert!(!g.failures_exhausted("10.0.0.1"));
            g.record_failure("10.0.0.1");
        }
        assert!(g.failures_exhausted("10.0.0.1"));
        assert_eq!(g.failures_left("10.0.0.1"), 0);
        assert!(!g.failures_exhausted("10.0.0.2"));
        assert_eq!(g.failures_left("10.0.0.2"), 3);
        assert!(g.admit_admin("ops"));
        assert!(g.admit_admin("ops"));
        assert!(!g.admit_admin("ops"));
        assert!(g.admit_admin("other"));
        assert_eq!(g.admin_auth_failures_allowed(), Some(2));
        for _ in 0..2 {
            assert!(!g.admin_auth_exhausted("10.0.0.1"));
            g.record_admin_auth_failure("10.0.0.1");
        }
        assert!(g.admin_auth_exhausted("10.0.0.1"));
        assert!(!g.admin_auth_exhausted("10.0.0.2"));
        // Separate from the key-validation failures of the same caller.
        assert!(!g.failures_exhausted("10.0.0.2"));
    }

    #[test]
    fn zero_turns_the_admin_auth_guard_off() {
        let g = AbuseGuard::new(GuardOptions {
            admin_auth_failures_per_minute: 0,
            ..GuardOptions::default()
        });
        assert_eq!(g.admin_auth_failures_allowed(), None);
        for _ in 0..100 {
            g.record_admin_auth_failure("c");
        }
        assert!(!g.admin_auth_exhausted("c"));
    }
}
