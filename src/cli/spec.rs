//! The command line's limit syntax: `100/minute`, `5000/90s`,
//! `10/second:token_bucket`, `10/second:token_bucket:burst=20`.

use std::time::Duration;

use crate::grpc::pb::sluice::v1 as pb;

/// `90s`, `15m`, `2h`, `30d`.
///
/// # Errors
/// A message naming what is wrong.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 90s, 15m, 2h or 30d ({e})"))
}

/// Parses one limit.
///
/// # Errors
/// A message naming the spec and what is wrong.
pub fn parse_limit(spec: &str) -> Result<pb::Limit, String> {
    let bad = |why: &str| {
        format!(
            "--limit {spec:?}: {why} (e.g. 100/minute, 5000/90s, 10/second:token_bucket:burst=20)"
        )
    };
    let mut parts = spec.split(':');
    let head = parts.next().unwrap_or_default();
    let (requests, window) = head.split_once('/').ok_or_else(|| bad("missing '/'"))?;
    let requests: u64 = requests
        .trim()
        .parse()
        .map_err(|_| bad("requests must be a whole number"))?;
    let unit = match window.trim() {
        "second" => Some(pb::Unit::Second),
        "minute" => Some(pb::Unit::Minute),
        "hour" => Some(pb::Unit::Hour),
        "day" => Some(pb::Unit::Day),
        "week" => Some(pb::Unit::Week),
        "month" => Some(pb::Unit::Month),
        "year" => Some(pb::Unit::Year),
        _ => None,
    };
    let duration = match unit {
        Some(_) => None,
        None => {
            let d = parse_duration(window).map_err(|_| bad("unknown unit or duration"))?;
            Some(pbjson_types::Duration {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
            })
        }
    };
    let mut algorithm = pb::Algorithm::FixedWindow;
    let mut burst = None;
    for p in parts {
        match p.trim() {
            "fixed_window" => algorithm = pb::Algorithm::FixedWindow,
            "sliding_window" => algorithm = pb::Algorithm::SlidingWindow,
            "token_bucket" => algorithm = pb::Algorithm::TokenBucket,
            other => match other.strip_prefix("burst=") {
                Some(b) => {
                    burst = Some(b.parse().map_err(|_| bad("burst must be a whole number"))?)
                }
                None => return Err(bad(&format!("unknown part {other:?}"))),
            },
        }
    }
    Ok(pb::Limit {
        requests,
        unit: unit.unwrap_or(pb::Unit::Unspecified).into(),
        duration,
        algorithm: algorithm.into(),
        burst,
    })
}

/// A limit written back in the same syntax.
pub fn render_limit(l: &pb::Limit) -> String {
    let window = match (pb::Unit::try_from(l.unit), &l.duration) {
        (Ok(pb::Unit::Unspecified) | Err(_), Some(d)) => format!("{}s", d.seconds),
        (Ok(u), _) => u.as_str_name().to_ascii_lowercase(),
        (Err(_), None) => "?".into(),
    };
    let mut s = format!("{}/{window}", l.requests);
    match pb::Algorithm::try_from(l.algorithm) {
        Ok(pb::Algorithm::SlidingWindow) => s.push_str(":sliding_window"),
        Ok(pb::Algorithm::TokenBucket) => s.push_str(":token_bucket"),
        _ => {}
    }
    if let Some(b) = l.burst {
        s.push_str(&format!(":burst={b}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip() {
        for s in [
            "100/minute",
            "5000/90s",
            "10/second:token_bucket:burst=20",
            "1000/hour:sliding_window",
        ] {
            assert_eq!(render_limit(&parse_limit(s).unwrap()), s);
        }
        let l = parse_limit("5000/15m").unwrap();
        assert_eq!(l.duration.unwrap().seconds, 900);
    }

    #[test]
    fn bad_specs_name_the_problem() {
        assert!(parse_limit("100").unwrap_err().contains("missing '/'"));
        assert!(
            parse_limit("x/minute")
                .unwrap_err()
                .contains("whole number")
        );
        assert!(
            parse_limit("10/fortnight")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(
            parse_limit("10/second:leaky")
                .unwrap_err()
                .contains("unknown part")
        );
    }
}
