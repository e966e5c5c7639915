//! Span names, attribute names and the helpers the instrumented modules
//! call. Every helper returns at once, creating and recording nothing,
//! while tracing is off ([`super::otel::enabled`] is one relaxed load).
//!
//! Attributes are bounded by construction: rule names come from the
//! configuration, counts are numbers, and request data (descriptor entries)
//! is recorded only with `--trace-descriptor-values`, truncated.
//!
//! May depend on: `engine` (its decision type).

use std::fmt::Write as _;

use tracing::Span;

use super::otel;
use crate::engine::{Code, Decision};

/// Attribute names (OpenTelemetry semantic conventions, and sluice's own
/// under `sluice.`).
pub mod fields {
    pub const RPC_SYSTEM_NAME: &str = "rpc.system.name";
    pub const RPC_METHOD: &str = "rpc.method";
    pub const RPC_METHOD_ORIGINAL: &str = "rpc.method_original";
    pub const RPC_RESPONSE_STATUS_CODE: &str = "rpc.response.status_code";
    pub const ERROR_TYPE: &str = "error.type";
    pub const DOMAIN: &str = "sluice.domain";
    pub const DESCRIPTORS: &str = "sluice.descriptors";
    pub const CODE: &str = "sluice.code";
    pub const OVER_LIMIT_RULES: &str = "sluice.over_limit_rules";
    pub const DESCRIPTOR_ENTRIES: &str = "sluice.descriptor_entries";
}

/// Longest recorded domain or entry list, in bytes.
const MAX_TEXT: usize = 256;
/// Most rule names recorded per request.
const MAX_RULES: usize = 8;

/// `s` cut to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Records what a ShouldRateLimit call asked on the current (server)
/// span: its domain and number of descriptors, and with
/// `--trace-descriptor-values` the entries themselves.
#[inline]
pub fn record_request<'a>(
    domain: &str,
    descriptors: usize,
    entries: impl FnOnce() -> Vec<Vec<(&'a str, &'a str)>>,
) {
    if !otel::enabled() {
        return;
    }
    let span = Span::current();
    span.record(fields::DOMAIN, truncate(domain, MAX_TEXT));
    span.record(fields::DESCRIPTORS, descriptors as u64);
    if otel::descriptor_values() {
        let mut text = String::new();
        for (i, d) in entries().iter().enumerate() {
            if i > 0 {
                text.push(';');
            }
            for (j, (k, v)) in d.iter().enumerate() {
                if j > 0 {
                    text.push(',');
                }
                let _ = write!(text, "{k}={v}");
            }
            if text.len() > MAX_TEXT {
                break;
            }
        }
        span.record(fields::DESCRIPTOR_ENTRIES, truncate(&text, MAX_TEXT));
    }
}

/// Records the answer on the current (server) span: the overall code and
/// the names of the limits that were over (configured names; `unnamed`
/// for limits without one).
#[inline]
pub fn record_decision(decision: &Decision) {
    if !otel::enabled() {
        return;
    }
    let span = Span::current();
    span.record(
        fields::CODE,
        match decision.overall {
            Code::Ok => "OK",
            Code::OverLimit => "OVER_LIMIT",
        },
    );
    let mut names: Vec<&str> = Vec::new();
    for s in &decision.statuses {
        if s.code != Code::OverLimit {
            continue;
        }
        let name = s
            .current_limit
            .as_ref()
            .and_then(|l| l.name.as_deref())
            .unwrap_or("unnamed");
        if !names.contains(&name) && names.len() < MAX_RULES {
            names.push(name);
        }
    }
    if !names.is_empty() {
        span.record(fields::OVER_LIMIT_RULES, names.join(",").as_str());
    }
}

/// Records the overall code of an answer made without the engine (an
/// invalid API key denied).
#[inline]
pub fn record_code(over_limit: bool) {
    if !otel::enabled() {
        return;
    }
    Span::current().record(fields::CODE, if over_limit { "OVER_LIMIT" } else { "OK" });
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncate_keeps_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("aé", 2), "a");
    }
}
