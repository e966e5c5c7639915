//! `envoy.service.ratelimit.v3.RateLimitService`: translate, decide,
//! translate back. Also the request id: taken from `x-request-id` or made
//! up, and returned in the response metadata.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
///
/// New ids are a random per-process prefix and a counter
/// (`3f9a1c07e2b4-1b`): unique across replicas for log correlation, and
/// short, since every response carries one. They are marked sensitive so
/// HPACK never spends a dynamic-table slot on a value that never repeats.
pub fn request_id(
    metadata: &tonic::metadata::MetadataMap,
) -> MetadataValue<tonic::metadata::Ascii> {
    static PREFIX: OnceLock<[u8; 12]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    if let Some(v) = metadata.get(REQUEST_ID) {
        if !v.is_empty() && v.len() <= 128 {
            return v.clone();
        }
    }
    let prefix = PREFIX.get_or_init(|| {
        let mut p = [0u8; 12];
        // 48 random bits are plenty to tell replicas apart; truncation intended.
        hex_into(&mut p, uuid::Uuid::new_v4().as_u128() as u64);
        p
    });
    let mut buf = [0u8; 12 + 1 + 16];
    buf[..12].copy_from_slice(prefix);
    buf[12] = b'-';
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
    hex_into(&mut buf[13..13 + digits], n);
    let mut v = MetadataValue::try_from(&buf[..13 + digits])
        .unwrap_or_else(|_| MetadataValue::from_static("invalid"));
    v.set_sensitive(true);
    v
}

/// Writes the low `out.len()` hex digits of `n` into `out`, most
/// significant first.
fn hex_into(out: &mut [u8], mut n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
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
