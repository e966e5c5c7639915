//! `envoy.service.ratelimit.v3.RateLimitService`: translate, decide,
//! translate back. Also the request id: taken from `x-request-id` or made
//! up, and returned in the response metadata.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::convert;
use super::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use super::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use super::status::to_status;
use crate::engine::{Code, Engine};
use crate::store::CounterStore;
use crate::telemetry::metrics::{Metrics, Outcome};

const REQUEST_ID: &str = "x-request-id";

/// The rate-limit gRPC service.
#[derive(Debug)]
pub struct RlsService<S> {
    engine: Arc<Engine<S>>,
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
}

impl<S> RlsService<S> {
    pub fn new(engine: Arc<Engine<S>>, metrics: Arc<Metrics>, draining: Arc<AtomicBool>) -> Self {
        RlsService {
            engine,
            metrics,
            draining,
        }
    }
}

/// The caller's request id, or a new one.
pub fn request_id(
    metadata: &tonic::metadata::MetadataMap,
) -> MetadataValue<tonic::metadata::Ascii> {
    if let Some(v) = metadata.get(REQUEST_ID) {
        if !v.is_empty() && v.len() <= 128 {
            return v.clone();
        }
    }
    let id = uuid::Uuid::new_v4();
    let mut buf = uuid::Uuid::encode_buffer();
    MetadataValue::try_from(&*id.hyphenated().encode_lower(&mut buf))
        .unwrap_or_else(|_| MetadataValue::from_static("invalid"))
}

#[tonic::async_trait]
impl<S: CounterStore> RateLimitService for RlsService<S> {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let started = Instant::now();
        let id = request_id(request.metadata());
        if self.draining.load(Ordering::Relaxed) {
            self.metrics.record_rpc(started, Outcome::Error);
            let mut status = Status::unavailable("sluice is shutting down");
            status.metadata_mut().insert(REQUEST_ID, id);
            return Err(status);
        }
        let msg = request.get_ref();
        let result = self.engine.decide(&convert::request(msg)).await;
        match result {
            Ok(decision) => {
                let outcome = match decision.overall {
                    Code::Ok => Outcome::Ok,
                    Code::OverLimit => Outcome::OverLimit,
                };
                let mut response = Response::new(convert::response(decision));
                response.metadata_mut().insert(REQUEST_ID, id);
                self.metrics.record_rpc(started, outcome);
                Ok(response)
            }
            Err(e) => {
                self.metrics.record_rpc(started, Outcome::Error);
                let mut status = to_status(&e, id.to_str().unwrap_or(""));
                status.metadata_mut().insert(REQUEST_ID, id);
                Err(status)
            }
        }
    }
}
