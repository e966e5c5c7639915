//! Rate-limit response headers built from a decision's statuses.
//!
//! * `draft03`: `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`
//!   as envoyproxy/ratelimit emits them (draft-polli-ratelimit-headers-03),
//!   from the limited descriptor with the lowest remaining count, an
//!   over-limit descriptor taking precedence; none when no descriptor had
//!   a limit.
//! * `ietf`: the structured fields of the IETF httpapi draft:
//!   `RateLimit-Policy` lists every applied policy (`"name";q=..;w=..`) and
//!   `RateLimit` gives the tightest one's remaining quota and reset
//!   (`"name";r=..;t=..`).
//!
//! In either mode, a decision the failure mode answered (the shared
//! counter store was unreachable) also gets [`DEGRADED`]
//! (`X-Sluice-Degraded: allow`, `deny` or `local`); descriptors answered by
//! `allow` or `deny` carry no limit, so no rate-limit header describes
//! them.

use std::fmt::Write as _;

use super::request::{Code, DescriptorStatus, Header};

/// Added (with the failure mode's name) when the failure mode answered.
pub const DEGRADED: &str = "X-Sluice-Degraded";

/// Which rate-limit headers to add to responses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeaderMode {
    #[default]
    None,
    Draft03,
    Ietf,
}

/// The status to describe in headers: over-limit first, then lowest
/// remaining.
fn tightest(statuses: &[DescriptorStatus]) -> Option<&DescriptorStatus> {
    statuses
        .iter()
        .filter(|s| s.current_limit.is_some())
        .min_by_key(|s| (s.code != Code::OverLimit, s.limit_remaining))
}

/// Builds the headers for `statuses` in `mode`.
pub fn build(
    mode: HeaderMode,
    statuses: &[DescriptorStatus],
    policy_names: &[String],
) -> Vec<Header> {
    match mode {
        HeaderMode::None => Vec::new(),
        HeaderMode::Draft03 => draft03(statuses),
        HeaderMode::Ietf => ietf(statuses, policy_names),
    }
}

fn draft03(statuses: &[DescriptorStatus]) -> Vec<Header> {
    let Some(s) = tightest(statuses) else {
        return Vec::new();
    };
    let Some(limit) = &s.current_limit else {
        return Vec::new();
    };
    vec![
        Header {
            name: "RateLimit-Limit",
            value: format!(
                "{}, {};w={}",
                limit.requests_per_unit, limit.requests_per_unit, limit.window_seconds
            ),
        },
        Header {
            name: "RateLimit-Remaining",
            value: s.limit_remaining.to_string(),
        },
        Header {
            name: "RateLimit-Reset",
            value: s.duration_until_reset.unwrap_or(0).to_string(),
        },
    ]
}

fn ietf(statuses: &[DescriptorStatus], names: &[String]) -> Vec<Header> {
    // Room for a typical policy (a name and two numbers per limit).
    let mut policy = String::with_capacity(48 * statuses.len());
    let mut best: Option<(usize, &DescriptorStatus)> = None;
    for (i, s) in statuses.iter().enumerate() {
        let Some(limit) = &s.current_limit else {
            continue;
        };
        if !policy.is_empty() {
            policy.push_str(", ");
        }
        let name = names.get(i).map_or("", String::as_str);
        push_sf_string(&mut policy, name);
        let _ = write!(
            policy,
            ";q={};w={}",
            limit.requests_per_unit, limit.window_seconds
        );
        let better = best.is_none_or(|(_, b)| {
            (s.code != Code::OverLimit, s.limit_remaining)
                < (b.code != Code::OverLimit, b.limit_remaining)
        });
        if better {
            best = Some((i, s));
        }
    }
    let Some((i, s)) = best else {
        return Vec::new();
    };
    let mut ratelimit = String::with_capacity(48);
    push_sf_string(&mut ratelimit, names.get(i).map_or("", String::as_str));
    let _ = write!(
        ratelimit,
        ";r={};t={}",
        s.limit_remaining,
        s.duration_until_reset.unwrap_or(0)
    );
    vec![
        Header {
            name: "RateLimit-Policy",
            value: policy,
        },
        Header {
            name: "RateLimit",
            value: ratelimit,
        },
    ]
}

/// Writes `s` as a structured-field string (RFC 8941 §3.3.3): quoted, with
/// `"` and `\` escaped; characters outside printable ASCII become `_`.
fn push_sf_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::unit::Unit;
    use crate::engine::request::CurrentLimit;

    fn limited(code: Code, rpu: u32, remaining: u32, reset: u64) -> DescriptorStatus {
        DescriptorStatus {
            code,
            current_limit: Some(CurrentLimit {
                requests_per_unit: rpu,
                unit: Unit::Minute,
                window_seconds: 60,
                name: None,
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(reset),
        }
    }

    fn get<'a>(h: &'a [Header], name: &str) -> Option<&'a str> {
        h.iter().find(|x| x.name == name).map(|x| x.value.as_str())
    }

    #[test]
    fn draft03_picks_over_limit_then_lowest_remaining() {
        let s = [
            limited(Code::Ok, 100, 3, 10),
            limited(Code::OverLimit, 50, 0, 20),
            limited(Code::Ok, 10, 1, 30),
        ];
        let h = build(HeaderMode::Draft03, &s, &[]);
        assert_eq!(get(&h, "RateLimit-Limit"), Some("50, 50;w=60"));
        assert_eq!(get(&h, "RateLimit-Remaining"), Some("0"));
        assert_eq!(get(&h, "RateLimit-Reset"), Some("20"));
        let s = [limited(Code::Ok, 100, 3, 10), limited(Code::Ok, 10, 1, 30)];
        let h = build(HeaderMode::Draft03, &s, &[]);
        assert_eq!(get(&h, "RateLimit-Remaining"), Some("1"));
    }

    #[test]
    fn no_limit_no_headers() {
        let s = [DescriptorStatus::no_limit(), DescriptorStatus::unlimited()];
        assert!(build(HeaderMode::Draft03, &s, &[]).is_empty());
        assert!(build(HeaderMode::Ietf, &s, &[]).is_empty());
    }

    #[test]
    fn ietf_structured_fields() {
        let s = [limited(Code::Ok, 100, 3, 10), limited(Code::Ok, 10, 1, 30)];
        let names = ["burst".to_string(), "da\"y".to_string()];
        let h = build(HeaderMode::Ietf, &s, &names);
        assert_eq!(
            get(&h, "RateLimit-Policy"),
            Some("\"burst\";q=100;w=60, \"da\\\"y\";q=10;w=60")
        );
        assert_eq!(get(&h, "RateLimit"), Some("\"da\\\"y\";r=1;t=30"));
    }
}
