//! The one mapping from engine errors to gRPC statuses. The full error is
//! logged here, once, and aggregated ([`LogThrottle`]: the first, then at
//! most one line per 10 s per kind with the count); the client gets a
//! short, stable message.

use tonic::Status;

use crate::telemetry::throttle::LogThrottle;

use crate::engine::DecideError;
use crate::store::StoreError;

/// The status for an engine error.
pub fn to_status(e: &DecideError, request_id: &str) -> Status {
    match e {
        DecideError::Invalid(invalid) => {
            tracing::debug!(request_id, error = %invalid, "invalid rate-limit request");
            Status::invalid_argument(invalid.to_string())
        }
        DecideError::Store(store) => {
            static FAILED: LogThrottle = LogThrottle::new();
            if let Some(r) = FAILED.admit() {
                tracing::warn!(request_id, error = %store, occurrences = r.count, repeated = %r, "counter store failed");
            }
            match store {
                StoreError::Timeout(_) => Status::deadline_exceeded("counter store timed out"),
                StoreError::Unavailable(_) => Status::unavailable("counter store unavailable"),
            }
        }
    }
}

/// The status for a key-management error.
pub fn key_status(e: &crate::keys::KeyError) -> Status {
    use crate::keys::KeyError;
    match e {
        KeyError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        KeyError::NotFound(m) => Status::not_found(m.clone()),
        KeyError::AlreadyExists(m) => Status::already_exists(m.clone()),
        KeyError::FailedPrecondition(m) => Status::failed_precondition(m.clone()),
        KeyError::TooManyFailures => Status::resource_exhausted(e.to_string()),
        KeyError::Unavailable(_) | KeyError::Store(_) => {
            static UNAVAILABLE: LogThrottle = LogThrottle::new();
            if let Some(r) = UNAVAILABLE.admit() {
                tracing::warn!(error = %e, occurrences = r.count, repeated = %r, "key request failed");
            }
            Status::unavailable("key store unavailable")
        }
        KeyError::Internal(_) => {
            static INTERNAL: LogThrottle = LogThrottle::new();
            if let Some(r) = INTERNAL.admit() {
                tracing::error!(error = %e, occurrences = r.count, repeated = %r, "key request failed");
            }
            Status::internal("internal error")
        }
    }
}
