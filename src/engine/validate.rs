//! Request validation: bounds that keep one request from costing more than
//! a configured amount, and the shapes the protocol forbids.

use crate::engine::request::Request;

/// Bounds on one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Descriptors per request.
    pub max_descriptors: usize,
    /// Entries per descriptor.
    pub max_entries: usize,
    /// Bytes of one entry key or value.
    pub max_value_bytes: usize,
    /// Hits one request (or one descriptor) may add: without a bound, one
    /// call could use up any window.
    pub max_hits_addend: u64,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_descriptors: 64,
            max_entries: 32,
            max_value_bytes: 1024,
            max_hits_addend: 1_000_000,
        }
    }
}

/// A request the engine refuses to decide; the message names the field and
/// the bound.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidRequest {
    pub field: String,
    pub problem: String,
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> InvalidRequest {
    InvalidRequest {
        field: field.into(),
        problem: problem.into(),
    }
}

fn too_many_hits(field: impl Into<String>, hits: u64, limits: &RequestLimits) -> InvalidRequest {
    invalid(
        field,
        format!(
            "is {hits}, more than the limit of {} (--max-hits-addend)",
            limits.max_hits_addend
        ),
    )
}

/// Checks a request against `limits`.
///
/// # Errors
/// The first problem found, as an [`InvalidRequest`].
pub fn validate(req: &Request<'_>, limits: &RequestLimits) -> Result<(), InvalidRequest> {
    if req.domain.is_empty() {
        return Err(invalid("domain", "must not be empty"));
    }
    if req.domain.len() > limits.max_value_bytes {
        return Err(invalid(
            "domain",
            format!(
                "is {} bytes, more than the limit of {}",
                req.domain.len(),
                limits.max_value_bytes
            ),
        ));
    }
    if u64::from(req.hits_addend) > limits.max_hits_addend {
        return Err(too_many_hits("hits_addend", req.hits_addend.into(), limits));
    }
    if req.descriptors.is_empty() {
        return Err(invalid("descriptors", "must not be empty"));
    }
    if req.descriptors.len() > limits.max_descriptors {
        return Err(invalid(
            "descriptors",
            format!(
                "has {} descriptors, more than the limit of {} (--max-descriptors)",
                req.descriptors.len(),
                limits.max_descriptors
            ),
        ));
    }
    for (i, d) in req.descriptors.iter().enumerate() {
        if d.entries.is_empty() {
            return Err(invalid(
                format!("descriptors[{i}].entries"),
                "must not be empty",
            ));
        }
        if d.entries.len() > limits.max_entries {
            return Err(invalid(
                format!("descriptors[{i}].entries"),
                format!(
                    "has {} entries, more than the limit of {} (--max-entries)",
                    d.entries.len(),
                    limits.max_entries
                ),
            ));
        }
        for (j, e) in d.entries.iter().enumerate() {
            if e.key.is_empty() {
                return Err(invalid(
                    format!("descriptors[{i}].entries[{j}].key"),
                    "must not be empty",
                ));
            }
            for (name, s) in [("key", e.key), ("value", e.value)] {
                if s.len() > limits.max_value_bytes {
                    return Err(invalid(
                        format!("descriptors[{i}].entries[{j}].{name}"),
                        format!(
                            "is {} bytes, more than the limit of {} (--max-value-bytes)",
                            s.len(),
                            limits.max_value_bytes
                        ),
                    ));
                }
            }
        }
        if let Some(h) = d.hits_addend
            && h > limits.max_hits_addend
        {
            return Err(too_many_hits(
                format!("descriptors[{i}].hits_addend"),
                h,
                limits,
            ));
        }
        if let Some(o) = d.limit_override
            && o.unit.is_none()
        {
            return Err(invalid(
                format!("descriptors[{i}].limit.unit"),
                "must be SECOND, MINUTE, HOUR, DAY, WEEK, MONTH or YEAR, not UNKNOWN",
            ));
        }
    }
    Ok(())
}
