//! A domain's gateway settings (`authz:` in its YAML): how Envoy's
//! ext_authz `Check` and the forward-auth `/auth` endpoint find a request's
//! API key, which scopes and cost a request of the domain carries, and
//! which of the domain's rate-limit descriptors are built from the request
//! so they are decided together with the key's plan limits.
//!
//! Pure data; the config loader builds it, the `authz` module reads it.

use std::sync::Arc;

/// Bounds on what a gateway request may ask for.
pub const MAX_COST: u64 = 1_000_000;
/// Most scopes one route may require.
pub const MAX_SCOPES: usize = 32;

/// Where a request's API key is read from; the first that is present wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// A request header (lower-case name) whose whole value is the key.
    Header(Arc<str>),
    /// `authorization: Bearer <key>`.
    Bearer,
    /// A query parameter of the request's path.
    Query(Arc<str>),
}

/// Where one descriptor entry's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueSource {
    /// A fixed value.
    Fixed(Arc<str>),
    /// The downstream client's address (ext_authz: the source peer;
    /// `/auth`: `X-Real-IP`, else the last `X-Forwarded-For` hop).
    RemoteAddress,
    /// The request method (`GET`).
    Method,
    /// The request path without its query.
    Path,
    /// The `Host` / `:authority`.
    Host,
    /// A request header (lower-case name); absent: the descriptor is skipped.
    Header(Arc<str>),
}

/// One entry of a descriptor built from the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryTemplate {
    pub key: Arc<str>,
    pub value: ValueSource,
}

/// A rate-limit descriptor built from each request, matched against the
/// domain's rules like a `ShouldRateLimit` descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescriptorTemplate {
    pub entries: Vec<EntryTemplate>,
}

/// The `authz:` block of a domain (or the defaults when it has none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthzRule {
    /// Tried in order; default `x-api-key`, then `authorization: Bearer`.
    pub key_sources: Vec<KeySource>,
    /// Every one is required of the key; a route's `sluice.scopes`
    /// replaces them.
    pub scopes: Vec<String>,
    /// Hits charged to every limit per request (0: checked, not counted);
    /// a route's `sluice.cost` replaces it.
    pub cost: u64,
    /// Descriptors decided on the domain's rules with the key's limits.
    pub descriptors: Vec<DescriptorTemplate>,
}

impl Default for AuthzRule {
    fn default() -> Self {
        AuthzRule {
            key_sources: vec![KeySource::Header("x-api-key".into()), KeySource::Bearer],
            scopes: Vec::new(),
            cost: 1,
            descriptors: Vec::new(),
        }
    }
}
