//! The engine's view of a rate-limit request and its answer, free of any
//! protocol type. Requests borrow their strings from the decoded message.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::core::algorithm::Fallback;
use crate::core::limit::LimitSpec;
use crate::core::rules::Entry;
use crate::core::unit::Unit;
use crate::engine::headers::HeaderMode;

/// A question: may these descriptors of this domain go through?
#[derive(Clone, Debug, Default)]
pub struct Request<'a> {
    pub domain: &'a str,
    pub descriptors: SmallVec<[Descriptor<'a>; 4]>,
    /// Hits for every descriptor without its own; 0 means 1.
    pub hits_addend: u32,
    /// Rate-limit headers to build; `None`: the engine's setting.
    pub header_mode: Option<HeaderMode>,
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
    /// Limits that come with the caller (an API key's plan), replacing
    /// the rule tree for this descriptor. Boxed: a key-free descriptor
    /// stays small, and so does every request and future that holds one.
    pub subject: Option<Box<Subject>>,
}

/// A caller's own limits, counted under its own key. Owned, so a service
/// can attach it to a request it did not build.
#[derive(Clone, Debug, Default)]
pub struct Subject {
    /// A complete counter key (see [`crate::core::key`]).
    pub counter_key: Arc<[u8]>,
    /// Charged all or nothing; empty: no limit at all.
    pub limits: SmallVec<[LimitSpec; 4]>,
    /// The metric key suffix, e.g. `api_key.pro`.
    pub label: String,
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
    /// For a window that is not a unit (API-key plans), the longest unit
    /// not longer than it.
    pub unit: Unit,
    /// The window in whole seconds (rounded up), for rate-limit headers.
    pub window_seconds: u64,
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
    /// Set when some descriptor was answered by the failure mode instead
    /// of the shared counters (which mode).
    pub degraded: Option<Fallback>,
}
