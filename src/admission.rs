//! Overload protection: a bound on the decision calls in flight
//! (`ShouldRateLimit`, `ValidateKey` and ext_authz `Check` over gRPC;
//! `POST /json` and `/auth` over HTTP), shared by both transports, and a
//! bound on each call's time.
//!
//! A call past the bound is refused at once, never queued, so that under
//! overload sluice answers quickly, some calls with an error the caller's
//! failure mode handles, instead of making every call late. Health,
//! readiness, metrics, reflection and the admin API are not counted, so
//! probes keep answering under overload.
//!
//! A call's deadline is its caller's (`grpc-timeout`), capped by
//! `--request-timeout`. Past it the call is answered DEADLINE_EXCEEDED (503
//! over HTTP) and is not decided: the adapters stop driving the decision
//! the moment the deadline passes, so work that has not reached the
//! counter store by then never does. A call dropped before it was answered
//! (its client went away) is counted as abandoned.
//!
//! May depend on: tokio, `telemetry`.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry::metrics::Metrics;

/// Admits decision calls up to a bound; cheap to clone.
#[derive(Clone, Debug)]
pub struct Admission {
    /// `None`: no bound.
    permits: Option<Arc<Semaphore>>,
    max: usize,
    request_timeout: Duration,
    metrics: Arc<Metrics>,
}

/// A call refused because `max` calls were in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("too many concurrent requests: {max} in flight is the limit (--max-concurrent-requests)")]
pub struct Overloaded {
    pub max: usize,
}

/// Why a call was shed (the `reason` label of `sluice_requests_shed_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    /// `--max-concurrent-requests` calls were in flight.
    Concurrency,
    /// The call's deadline passed before it was answered.
    Deadline,
}

impl Shed {
    pub const ALL: [Shed; 2] = [Shed::Concurrency, Shed::Deadline];

    pub fn label(self) -> &'static str {
        match self {
            Shed::Concurrency => "concurrency",
            Shed::Deadline => "deadline",
        }
    }
}

/// The message of a call answered at its deadline.
pub const DEADLINE_MESSAGE: &str =
    "deadline exceeded before the call was decided (grpc-timeout or --request-timeout)";

impl Admission {
    /// At most `max` calls in flight (0: no bound), each for at most
    /// `request_timeout`.
    pub fn new(max: usize, request_timeout: Duration, metrics: Arc<Metrics>) -> Admission {
        Admission {
            permits: (max > 0).then(|| Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)))),
            max,
            request_timeout,
            metrics,
        }
    }

    /// Admits one call, or refuses it at once (and counts that).
    ///
    /// # Errors
    /// [`Overloaded`] when the bound is reached.
    pub fn admit(&self) -> Result<Permit, Overloaded> {
        let permit = match &self.permits {
            None => None,
            Some(p) => match p.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    self.count_shed(Shed::Concurrency);
                    return Err(Overloaded { max: self.max });
                }
            },
        };
        self.metrics.in_flight.fetch_add(1, Relaxed);
        Ok(Permit {
            _permit: permit,
            metrics: self.metrics.clone(),
            answered: false,
        })
    }

    /// How long a call may take: the caller's timeout, capped by
    /// `--request-timeout`.
    pub fn time_allowed(&self, caller: Option<Duration>) -> Duration {
        caller.map_or(self.request_timeout, |t| t.min(self.request_timeout))
    }

    /// Counts a call shed for `why`.
    pub fn count_shed(&self, why: Shed) {
        let counter = match why {
            Shed::Concurrency => &self.metrics.shed_concurrency,
            Shed::Deadline => &self.metrics.shed_deadline,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> u64 {
        self.metrics.in_flight.load(Relaxed)
    }
}

/// One admitted call; its slot is free again when this is dropped.
#[derive(Debug)]
pub struct Permit {
    _permit: Option<OwnedSemaphorePermit>,
    metrics: Arc<Metrics>,
    answered: bool,
}

impl Permit {
    /// The call was answered (whatever the answer); a permit dropped
    /// without this counts the call as abandoned.
    pub fn answered(mut self) {
        self.answered = true;
    }

    /// The call's deadline passed: answered, and counted as shed.
    pub fn deadline_passed(mut self) {
        self.answered = true;
        self.metrics.shed_deadline.fetch_add(1, Relaxed);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.metrics.in_flight.fetch_sub(1, Relaxed);
        if !self.answered {
            self.metrics.abandoned.fetch_add(1, Relaxed);
        }
    }
}

/// The `grpc-timeout` header's duration (`<1-8 digits><H|M|S|m|u|n>`);
/// `None` when absent or malformed (a malformed one is ignored, as tonic
/// ignores it).
pub fn grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_bound_and_counts() {
        let metrics = Arc::new(Metrics::default());
        let a = Admission::new(2, Duration::from_secs(1), metrics.clone());
        let p1 = a.admit().unwrap();
        let p2 = a.admit().unwrap();
        assert_eq!(a.admit().unwrap_err(), Overloaded { max: 2 });
        assert_eq!(a.in_flight(), 2);
        assert_eq!(metrics.shed_concurrency.load(Relaxed), 1);
        p1.answered();
        let p3 = a.admit().unwrap();
        drop(p2); // never answered: abandoned
        p3.deadline_passed();
        assert_eq!(a.in_flight(), 0);
        assert_eq!(metrics.abandoned.load(Relaxed), 1);
        assert_eq!(metrics.shed_deadline.load(Relaxed), 1);
        assert_eq!(
            Overloaded { max: 2 }.to_string(),
            "too many concurrent requests: 2 in flight is the limit (--max-concurrent-requests)"
        );
    }

    #[test]
    fn zero_is_no_bound() {
        let a = Admission::new(0, Duration::from_secs(1), Arc::new(Metrics::default()));
        let permits: Vec<_> = (0..10_000).map(|_| a.admit().unwrap()).collect();
        assert_eq!(a.in_flight(), 10_000);
        drop(permits);
    }

    #[test]
    fn the_callers_timeout_is_capped() {
        let a = Admission::new(0, Duration::from_secs(10), Arc::new(Metrics::default()));
        assert_eq!(a.time_allowed(None), Duration::from_secs(10));
        assert_eq!(
            a.time_allowed(Some(Duration::from_millis(20))),
            Duration::from_millis(20)
        );
        assert_eq!(
            a.time_allowed(Some(Duration::from_secs(60))),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(grpc_timeout(b"20m"), Some(Duration::from_millis(20)));
        assert_eq!(grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(grpc_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(grpc_timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(grpc_timeout(b"0n"), Some(Duration::ZERO));
        for bad in [&b""[..], b"m", b"123456789m", b"12x", b"-1m", b"1.5S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
