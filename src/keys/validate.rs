//! Bounds on everything an admin or a caller sends. Each failure names
//! the field (as the protocol spells it) and the bound.

use super::KeyError;
use super::model::{PlanLimit, Quota, Window};

pub const MAX_NAME: usize = 128;
pub const MAX_OWNER: usize = 128;
pub const MAX_PLAN_NAME: usize = 64;
pub const MAX_DESCRIPTION: usize = 256;
pub const MAX_SCOPES: usize = 32;
pub const MAX_SCOPE: usize = 64;
pub const MAX_METADATA_BYTES: usize = 4096;
pub const MAX_LIMITS: usize = 16;
pub const MAX_WINDOW_SECONDS: u64 = 366 * 86_400;
pub const MAX_KEY_LEN: usize = 256;
pub const MAX_PAGE_SIZE: u32 = 1000;
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_GRACE_SECONDS: u64 = 30 * 86_400;
pub const MAX_REASON: usize = 256;
pub const MAX_COST: u64 = 1_000_000;
pub const DEFAULT_PREFIX: &str = "sk_live";

/// Whether `secret` could be a key at all: at most [`MAX_KEY_LEN`] bytes
/// of what keys are made of (letters, digits, `_`). Anything else is an
/// unknown key, answered without hashing or a lookup.
pub fn key_shape(secret: &str) -> bool {
    !secret.is_empty()
        && secret.len() <= MAX_KEY_LEN
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> KeyError {
    KeyError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// A required text field of 1 to `max` characters, no control characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), KeyError> {
    let n = value.chars().count();
    if n == 0 {
        return Err(invalid(field, "is required"));
    }
    if n > max {
        return Err(invalid(
            field,
            format!("has {n} characters; at most {max} are allowed"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// An optional text field of at most `max` characters.
pub fn optional_text(field: &str, value: &str, max: usize) -> Result<(), KeyError> {
    if value.is_empty() {
        return Ok(());
    }
    text(field, value, max)
}

/// Letters, digits, `-`, `_`, `.`; 1 to 64 characters.
pub fn plan_name(field: &str, value: &str) -> Result<(), KeyError> {
    text(field, value, MAX_PLAN_NAME)?;
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(
            field,
            "may contain only letters, digits, '-', '_' and '.'",
        ));
    }
    Ok(())
}

/// Lowercase letters, digits and `_`, starting with a letter; 2 to 16.
pub fn prefix(field: &str, value: &str) -> Result<(), KeyError> {
    let n = value.len();
    if !(2..=16).contains(&n) {
        return Err(invalid(
            field,
            format!("has {n} characters; 2 to 16 are allowed"),
        ));
    }
    if !value.starts_with(|c: char| c.is_ascii_lowercase())
        || !value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(invalid(
            field,
            "must start with a lowercase letter and contain only lowercase letters, digits and '_'",
        ));
    }
    Ok(())
}

/// At most 32 scopes of 1 to 64 visible ASCII characters, no duplicates.
pub fn scopes(field: &str, scopes: &[String]) -> Result<(), KeyError> {
    if scopes.len() > MAX_SCOPES {
        return Err(invalid(
            field,
            format!(
                "has {} scopes; at most {MAX_SCOPES} are allowed",
                scopes.len()
            ),
        ));
    }
    for (i, s) in scopes.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if s.is_empty() || s.len() > MAX_SCOPE {
            return Err(invalid(f, format!("must have 1 to {MAX_SCOPE} characters")));
        }
        if !s.chars().all(|c| c.is_ascii_graphic()) {
            return Err(invalid(f, "must be visible ASCII without spaces"));
        }
        if scopes[..i].contains(s) {
            return Err(invalid(f, format!("repeats scope {s:?}")));
        }
    }
    Ok(())
}

/// Metadata: a JSON object of at most 4 KiB once serialized.
pub fn metadata(
    field: &str,
    m: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), KeyError> {
    let n = serde_json::to_string(m).map_or(usize::MAX, |s| s.len());
    if n > MAX_METADATA_BYTES {
        return Err(invalid(
            field,
            format!("is {n} bytes as JSON; at most {MAX_METADATA_BYTES} are allowed"),
        ));
    }
    Ok(())
}

/// 1 to 16 limits, each with requests >= 1, a window of 1 s to 366 days,
/// and a burst >= 1 only on token buckets.
pub fn limits(field: &str, limits: &[PlanLimit], required: bool) -> Result<(), KeyError> {
    if required && limits.is_empty() {
        return Err(invalid(field, "needs at least one limit"));
    }
    if limits.len() > MAX_LIMITS {
        return Err(invalid(
            field,
            format!(
                "has {} limits; at most {MAX_LIMITS} are allowed",
                limits.len()
            ),
        ));
    }
    for (i, l) in limits.iter().enumerate() {
        if l.requests == 0 {
            return Err(invalid(
                format!("{field}[{i}].requests"),
                "must be at least 1",
            ));
        }
        if let Window::Seconds(s) = l.window
            && (s == 0 || s > MAX_WINDOW_SECONDS)
        {
            return Err(invalid(
                format!("{field}[{i}].duration"),
                format!("must be 1 s to {MAX_WINDOW_SECONDS} s (366 days), in whole seconds"),
            ));
        }
        if let Some(b) = l.burst {
            if b == 0 {
                return Err(invalid(format!("{field}[{i}].burst"), "must be at least 1"));
            }
            if l.algorithm != crate::core::limit::Algorithm::TokenBucket {
                return Err(invalid(
                    format!("{field}[{i}].burst"),
                    "applies only to the TOKEN_BUCKET algorithm",
                ));
            }
        }
        if limits[..i]
            .iter()
            .any(|o| o.window.seconds() == l.window.seconds() && o.algorithm == l.algorithm)
        {
            return Err(invalid(
                format!("{field}[{i}]"),
                "repeats the window and algorithm of an earlier limit",
            ));
        }
    }
    Ok(())
}

pub fn quota(field: &str, q: &Quota) -> Result<(), KeyError> {
    if q.requests == 0 {
        return Err(invalid(format!("{field}.requests"), "must be at least 1"));
    }
    if !(1..=28).contains(&q.refill_day) {
        return Err(invalid(format!("{field}.refill_day"), "must be 1 to 28"));
    }
    Ok(())
}

/// 0 means the default; above the maximum is an error.
pub fn page_size(field: &str, n: u32) -> Result<u32, KeyError> {
    match n {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n > MAX_PAGE_SIZE => Err(invalid(
            field,
            format!("is {n}; at most {MAX_PAGE_SIZE} is allowed"),
        )),
        n => Ok(n),
    }
}

/// A `YYYY-MM-DD` day.
pub fn day(field: &str, value: &str) -> Result<time::Date, KeyError> {
    time::Date::parse(
        value,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .map_err(|_| invalid(field, format!("{value:?} is not a day written YYYY-MM-DD")))
}

/// A u64 count that must fit the engine's u32 limits.
pub fn count(field: &str, n: u64) -> Result<u32, KeyError> {
    u32::try_from(n).map_err(|_| invalid(field, format!("is {n}; at most {} is allowed", u32::MAX)))
}
