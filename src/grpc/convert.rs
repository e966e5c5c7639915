//! Protocol types ↔ engine types. Requests are borrowed, not copied.
//!
//! proto3 zero values: a request `hits_addend` of 0 means 1 (resolved in the
//! engine); a descriptor's `hits_addend` is a wrapper, so "absent" and "0"
//! differ, and 0 checks without consuming.
//!
//! A decision the failure mode answered carries `dynamic_metadata`
//! `{"sluice.degraded": "allow" | "deny" | "local"}` (Envoy emits it under
//! the filter's namespace, `envoy.filters.http.ratelimit`, for access logs
//! and later filters); a decision made on the shared counters carries none.

use pbjson_types::Duration;

use super::pb::envoy::config::core::v3::HeaderValue;
use super::pb::envoy::service::ratelimit::v3::{
    RateLimitRequest, RateLimitResponse,
    rate_limit_response::{Code as PbCode, DescriptorStatus as PbStatus, RateLimit},
};
use crate::core::rules::Entry;
use crate::core::unit::Unit;
use crate::engine::request::LimitOverride;
use crate::engine::{Code, Decision, Descriptor, Request};

/// Borrows a protocol request as an engine request.
pub fn request(msg: &RateLimitRequest) -> Request<'_> {
    Request {
        domain: &msg.domain,
        hits_addend: msg.hits_addend,
        header_mode: None,
        descriptors: msg
            .descriptors
            .iter()
            .map(|d| Descriptor {
                entries: d
                    .entries
                    .iter()
                    .map(|e| Entry {
                        key: &e.key,
                        value: &e.value,
                    })
                    .collect(),
                limit_override: d.limit.as_ref().map(|l| LimitOverride {
                    requests_per_unit: l.requests_per_unit,
                    unit: Unit::from_proto_number(l.unit),
                }),
                hits_addend: d.hits_addend.as_ref().map(|h| h.value),
                subject: None,
            })
            .collect(),
    }
}

fn code(c: Code) -> i32 {
    match c {
        Code::Ok => PbCode::Ok as i32,
        Code::OverLimit => PbCode::OverLimit as i32,
    }
}

/// The dynamic-metadata key that marks a failure-mode answer.
pub const DEGRADED_KEY: &str = "sluice.degraded";

/// The protocol response for a decision.
pub fn response(d: Decision) -> RateLimitResponse {
    let dynamic_metadata = d.degraded.map(|f| {
        let mut fields = std::collections::HashMap::with_capacity(1);
        fields.insert(
            DEGRADED_KEY.to_owned(),
            pbjson_types::Value::from(f.as_str()),
        );
        pbjson_types::Struct::from(fields)
    });
    RateLimitResponse {
        dynamic_metadata,
        overall_code: code(d.overall),
        statuses: d
            .statuses
            .into_iter()
            .map(|s| PbStatus {
                code: code(s.code),
                current_limit: s.current_limit.map(|l| RateLimit {
                    name: l.name.map(|n| n.to_string()).unwrap_or_default(),
                    requests_per_unit: l.requests_per_unit,
                    unit: l.unit.proto_number(),
                }),
                limit_remaining: s.limit_remaining,
                duration_until_reset: s.duration_until_reset.map(|secs| Duration {
                    seconds: i64::try_from(secs).unwrap_or(i64::MAX),
                    nanos: 0,
                }),
                quota: None,
            })
            .collect(),
        response_headers_to_add: d
            .response_headers
            .into_iter()
            .map(|h| HeaderValue {
                key: h.name.to_string(),
                value: h.value,
                raw_value: Vec::new(),
            })
            .collect(),
        ..RateLimitResponse::default()
    }
}
