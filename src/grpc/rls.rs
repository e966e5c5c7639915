//! `envoy.service.ratelimit.v3.RateLimitService`: translate, ask the
//! keyed-decision service ([`crate::service::Decider`]), translate back.
//! Also the request id: taken from `x-request-id` or made up, and
//! returned in the response metadata; and who the caller is (a configured
//! header, else the peer address), asked only when a key is looked up.
//!
//! A key's problem (an invalid key in a deny domain, a key store that
//! could not answer) travels as `raw_body` with a
//! `content-type: application/problem+json` header, which Envoy sends as
//! the body of its 429.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::convert;
use super::pb::envoy::config::core::v3::HeaderValue;
use super::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use super::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use super::status::to_status;
use crate::engine::Code;
use crate::service::{Answer, CallerSource, Decider, Problem};
use crate::store::CounterStore;
use crate::telemetry::metrics::{Metrics, Outcome};
use crate::telemetry::trace;

const REQUEST_ID: &str = "x-request-id";

/// The rate-limit gRPC service.
#[derive(Debug)]
pub struct RlsService<S> {
    decider: Arc<Decider<S>>,
    metrics: Arc<Metrics>,
    caller: Arc<CallerSource>,
}

impl<S> RlsService<S> {
    pub fn new(decider: Arc<Decider<S>>, metrics: Arc<Metrics>, caller: Arc<CallerSource>) -> Self {
        RlsService {
            decider,
            metrics,
            caller,
        }
    }
}

/// The protocol response for a service answer.
pub fn answer_response(answer: Answer) -> RateLimitResponse {
    let mut response = convert::response(answer.decision);
    if let Some(p) = answer.problem {
        response.raw_body = p.body().into_bytes();
        response.response_headers_to_add.push(HeaderValue {
            key: "content-type".into(),
            value: Problem::CONTENT_TYPE.into(),
            raw_value: Vec::new(),
        });
    }
    response
}

/// Who is calling: the configured metadata entry, else the peer address.
pub fn caller_id<T>(source: &CallerSource, request: &Request<T>) -> Option<String> {
    let header = source
        .header()
        .and_then(|h| request.metadata().get(h))
        .map(MetadataValue::as_bytes);
    source.caller_id(header, request.remote_addr().map(|a| a.ip()))
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
    if let Some(v) = metadata.get(REQUEST_ID)
        && !v.is_empty()
        && v.len() <= 128
    {
        return v.clone();
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
        let msg = request.get_ref();
        trace::record_request(&msg.domain, msg.descriptors.len(), || {
            msg.descriptors
                .iter()
                .map(|d| {
                    d.entries
                        .iter()
                        .map(|e| (e.key.as_str(), e.value.as_str()))
                        .collect()
                })
                .collect()
        });
        let result = self
            .decider
            .should_rate_limit(convert::request(msg), || caller_id(&self.caller, &request))
            .await;
        match result {
            Ok(answer) => {
                let outcome = match answer.decision.overall {
                    Code::Ok => Outcome::Ok,
                    Code::OverLimit => Outcome::OverLimit,
                };
                trace::record_decision(&answer.decision);
                let mut response = Response::new(answer_response(answer));
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
