//! The one mapping from engine errors to gRPC statuses. The full error is
//! logged here, once; the client gets a short, stable message.

use tonic::Status;

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
            tracing::warn!(request_id, error = %store, "counter store failed");
            match store {
                StoreError::Timeout(_) => Status::deadline_exceeded("counter store timed out"),
                StoreError::Unavailable(_) => Status::unavailable("counter store unavailable"),
            }
        }
    }
}
