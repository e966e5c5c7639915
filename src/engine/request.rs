//! The engine's view of a rate-limit request and its answer, free of any
//! protocol type. Requests borrow their strings from the decoded message.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::core::rules::Entry;
use crate::core::unit::Unit;

/// A question: may these descriptors of this domain go through?
#[derive(Clone, Debug, Default)]
pub struct Request<'a> {
    pub domain: &'a str,
    pub descriptors: SmallVec<[Descriptor<'a>; 4]>,
    /// Hits for every descriptor without its own; 0 means 1.
    pub hits_addend: u32,
}

/// One descriptor of a request.
#[derive(Clone, Debug, Default)]
pub struct Descriptor<'a> {
    pub entries: SmallVec<[Entry<'a>; 4]>,
    /// A caller-chosen limit replacing the configured one.
    pub limit_override: Option<LimitOverride>,
    /// Hits for this descriptor; when present (even 0) it wins over the
    /// request's.
    pub hits_addend: Option<u64>,
}

/// A limit given in the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitOverride {
    pub requests_per_unit: u32,
    /// `None` when the caller sent UNKNOWN or a number no unit has.
    pub unit: Option<Unit>,
}

/// The answer for a request or a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Ok,
    OverLimit,
}

/// The limit reported for a descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentLimit {
    pub requests_per_unit: u32,
    pub unit: Unit,
    pub name: Option<Arc<str>>,
}

/// The decision for one descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescriptorStatus {
    pub code: Code,
    /// `None` when no limit applied (no rule, unlimited, replaced).
    pub current_limit: Option<CurrentLimit>,
    pub limit_remaining: u32,
    /// Whole seconds, set whenever a limit applied.
    pub duration_until_reset: Option<u64>,
}

impl DescriptorStatus {
    /// OK with no limit: no rule matched, or the rule was replaced.
    pub const fn no_limit() -> DescriptorStatus {
        DescriptorStatus {
            code: Code::Ok,
            current_limit: None,
            limit_remaining: 0,
            duration_until_reset: None,
        }
    }

    /// OK from an `unlimited` rule.
    pub const fn unlimited() -> DescriptorStatus {
        DescriptorStatus {
            code: Code::Ok,
            current_limit: None,
            limit_remaining: u32::MAX,
            duration_until_reset: None,
        }
    }
}

/// A header for the client's response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: &'static str,
    pub value: String,
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub overall: Code,
    /// One per request descriptor, in order.
    pub statuses: Vec<DescriptorStatus>,
    /// Rate-limit headers, per the configured header mode.
    pub response_headers: Vec<Header>,
}
