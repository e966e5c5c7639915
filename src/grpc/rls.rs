//! `envoy.service.ratelimit.v3.RateLimitService`: translate, decide,
//! translate back. Also the request id: taken from `x-request-id` or made
//! up, and returned in the response metadata.
//!
//! Key-aware domains (`api_key:` in their YAML): a descriptor carrying the
//! configured entry is looked up by the key resolver, and decided on the
//! key's plan limits (all of them, all or nothing) instead of the rule
//! tree; an invalid key answers as the domain's `on_invalid` says.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::convert;
use super::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use super::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use super::status::to_status;
use crate::core::limit::LimitSpec;
use crate::core::rules::OnInvalid;
use crate::engine::{Code, Decision, DescriptorStatus, Engine, Subject};
use crate::keys::model::ResolvedKey;
use crate::keys::{Resolver, Verdict};
use crate::store::CounterStore;
use crate::telemetry::metrics::{Metrics, Outcome};
use crate::telemetry::trace;

const REQUEST_ID: &str = "x-request-id";

/// The rate-limit gRPC service.
#[derive(Debug)]
pub struct RlsService<S> {
    engine: Arc<Engine<S>>,
    metrics: Arc<Metrics>,
    keys: Option<Arc<Resolver<S>>>,
}

impl<S> RlsService<S> {
    pub fn new(
        engine: Arc<Engine<S>>,
        metrics: Arc<Metrics>,
        keys: Option<Arc<Resolver<S>>>,
    ) -> Self {
        RlsService {
            engine,
            metrics,
            keys,
        }
    }
}

/// A key-carrying descriptor, looked up.
struct KeyedDescriptor {
    index: usize,
    key: Arc<ResolvedKey>,
    limits: smallvec::SmallVec<[LimitSpec; 4]>,
    label: String,
}

/// What the API-key lookups of one request came to.
enum Keyed {
    /// Descriptors to decide on plan limits; indexes to let through.
    Decide(Vec<KeyedDescriptor>, Vec<usize>),
    /// An invalid key in a deny domain: the answer, already made.
    Deny(RateLimitResponse),
}

/// The OVER_LIMIT answer for an invalid key: the key descriptor over the
/// limit, the others OK, and a problem+json body for the client.
fn deny_invalid(descriptors: usize, index: usize, verdict: Verdict) -> RateLimitResponse {
    let code = super::keys::code(verdict).as_str_name();
    let (title, detail) = match verdict {
        Verdict::Disabled => ("API key disabled", "This API key is disabled."),
        Verdict::Expired => ("API key expired", "This API key has expired."),
        Verdict::Revoked => ("API key revoked", "This API key has been revoked."),
        _ => ("Invalid API key", "The API key is missing or not valid."),
    };
    let body = serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": 429,
        "detail": detail,
        "code": code,
    });
    let mut statuses: Vec<DescriptorStatus> = (0..descriptors)
        .map(|_| DescriptorStatus::no_limit())
        .collect();
    if let Some(s) = statuses.get_mut(index) {
        s.code = Code::OverLimit;
    }
    let mut response = convert::response(Decision {
        overall: Code::OverLimit,
        statuses,
        response_headers: Vec::new(),
        degraded: None,
    });
    response.raw_body = body.to_string().into_bytes();
    response
        .response_headers_to_add
        .push(super::pb::envoy::config::core::v3::HeaderValue {
            key: "content-type".into(),
            value: "application/problem+json".into(),
            raw_value: Vec::new(),
        });
    response
}

impl<S: CounterStore> RlsService<S> {
    /// Looks up the API key of every descriptor that carries one.
    async fn resolve_keys(&self, msg: &RateLimitRequest) -> Result<Option<Keyed>, Status> {
        let Some(keys) = &self.keys else {
            return Ok(None);
        };
        let rules = self.engine.rules();
        let Some(rule) = rules.domain(&msg.domain).and_then(|d| d.api_key.clone()) else {
            return Ok(None);
        };
        let mut keyed = Vec::new();
        let mut let_through = Vec::new();
        let now = keys.now();
        for (index, d) in msg.descriptors.iter().enumerate() {
            let Some(entry) = d.entries.iter().find(|e| e.key == *rule.descriptor_key) else {
                continue;
            };
            let r = keys
                .resolve(&entry.value)
                .await
                .map_err(|e| super::status::key_status(&e))?;
            match (r.verdict, r.key) {
                (Verdict::Valid, Some(key)) => {
                    let limits = keys.limits_at(&key, now);
                    let label = format!("{}.plan_{}", rule.descriptor_key, key.plan.name);
                    keyed.push(KeyedDescriptor {
                        index,
                        key,
                        limits,
                        label,
                    });
                }
                (verdict, _) => match rule.on_invalid {
                    OnInvalid::Deny => {
                        return Ok(Some(Keyed::Deny(deny_invalid(
                            msg.descriptors.len(),
                            index,
                            verdict,
                        ))));
                    }
                    OnInvalid::Allow => let_through.push(index),
                },
            }
        }
        Ok(Some(Keyed::Decide(keyed, let_through)))
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
        let keyed = match self.resolve_keys(msg).await {
            Ok(k) => k,
            Err(mut status) => {
                self.metrics.record_rpc(started, Outcome::Error);
                status.metadata_mut().insert(REQUEST_ID, id);
                return Err(status);
            }
        };
        let (keyed, let_through) = match keyed {
            None => (Vec::new(), Vec::new()),
            Some(Keyed::Decide(k, l)) => (k, l),
            Some(Keyed::Deny(answer)) => {
                trace::record_code(true);
                let mut response = Response::new(answer);
                response.metadata_mut().insert(REQUEST_ID, id);
                self.metrics.record_rpc(started, Outcome::OverLimit);
                return Ok(response);
            }
        };
        const NO_LIMITS: &[LimitSpec] = &[];
        let mut req = convert::request(msg);
        for k in &keyed {
            if let Some(d) = req.descriptors.get_mut(k.index) {
                d.subject = Some(Subject {
                    counter_key: &k.key.counter_key,
                    limits: &k.limits,
                    label: &k.label,
                });
            }
        }
        for &i in &let_through {
            if let Some(d) = req.descriptors.get_mut(i) {
                d.subject = Some(Subject {
                    counter_key: &[],
                    limits: NO_LIMITS,
                    label: "",
                });
            }
        }
        let result = self.engine.decide(&req).await;
        if let (Some(keys), Ok(decision)) = (&self.keys, &result) {
            for k in &keyed {
                if let Some(s) = decision.statuses.get(k.index) {
                    keys.record_decision(&k.key.key.id, s.code == Code::Ok);
                }
            }
        }
        match result {
            Ok(decision) => {
                let outcome = match decision.overall {
                    Code::Ok => Outcome::Ok,
                    Code::OverLimit => Outcome::OverLimit,
                };
                trace::record_decision(&decision);
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
