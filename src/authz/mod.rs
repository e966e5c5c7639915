//! API keys at the gateway: what Envoy's ext_authz `Check` (gRPC) and the
//! forward-auth endpoint `/auth` (HTTP) share. A request is read the same
//! way whichever door it came through ([`request`]): its route settings,
//! its API key (per the domain's `authz.key_from`), the descriptors its
//! domain builds; the keyed decision of [`crate::service::Decider`], the
//! one `ShouldRateLimit` and `/json` use too, decides the key (resolved by
//! the shared resolver: cache, single flight, negative cache, key-store
//! timeout and failure mode, the failed-validation guard keyed on the
//! client; then scopes, the key's plan limits and the domain's descriptor
//! limits together, with the route's cost, usage recorded); and the
//! outcome is shaped as an HTTP answer ([`answer`]): identity headers for
//! the upstream and the raw key kept from it, or 401/403/429/503 with a
//! problem+json body. A key the key store could not check is 503 whatever
//! `--key-store-failure-mode` says, unless `cached` finds it in the cache;
//! a request `--failure-mode deny` refused while Redis is unreachable is
//! 503 too (not 429: nothing was counted).
//!
//! May depend on: `service`, `engine` (its types), `keys` (its types),
//! `core`, the `store` trait, `telemetry::throttle`. Knows nothing of gRPC or HTTP server types;
//! `grpc::authz` and `http::auth` translate.

pub mod answer;
pub mod request;

use std::sync::{Arc, LazyLock};

use smallvec::SmallVec;

use crate::core::authz::{AuthzRule, KeySource};
use crate::core::rules::{Entry, OnInvalid};
use crate::engine::{Code, DecideError, Descriptor, HeaderMode, Request};
use crate::keys::Verdict;
use crate::service::{Decider, KeyOutcome, KeyPolicy, KeySlot};
use crate::store::CounterStore;
use crate::telemetry::throttle::LogThrottle;

pub use answer::{Allowed, Answer, Denied, IdentityHeaders, Outcome};
pub use request::{GateRequest, Headers, RouteSettings};

use answer::Context;
use request::{BadSetting, build_descriptors, find_key, parse_cost, parse_scopes};

/// The domain settings used when a request names no domain.
static DEFAULTS: LazyLock<AuthzRule> = LazyLock::new(AuthzRule::default);

/// The name requests without a domain are counted under (metric keys).
const NO_DOMAIN: &str = "sluice.authz";

/// Gateway settings that do not change on reload.
#[derive(Clone, Debug)]
pub struct GateOptions {
    pub identity: IdentityHeaders,
    /// Rate-limit headers added to answers (`--authz-response-headers`).
    pub response_headers: HeaderMode,
    /// The domain of requests whose route names none (`--authz-domain`).
    pub default_domain: Option<String>,
}

impl Default for GateOptions {
    fn default() -> Self {
        GateOptions {
            identity: IdentityHeaders::default(),
            response_headers: HeaderMode::Ietf,
            default_domain: None,
        }
    }
}

/// Authorizes gateway requests.
#[derive(Debug)]
pub struct Gate<S> {
    decider: Arc<Decider<S>>,
    options: GateOptions,
}

impl<S: CounterStore> Gate<S> {
    pub fn new(decider: Arc<Decider<S>>, options: GateOptions) -> Gate<S> {
        Gate { decider, options }
    }

    pub fn options(&self) -> &GateOptions {
        &self.options
    }

    /// Decides one request and shapes the answer. Never fails: every
    /// problem (a bad route setting, a store that cannot answer) is a
    /// deliberate denial or the configured failure mode.
    pub async fn check<H: Headers>(&self, req: &GateRequest<'_, H>) -> Answer {
        let rules = self.decider.engine().rules();
        let domain_name = req
            .route
            .domain
            .filter(|d| !d.is_empty())
            .or(self.options.default_domain.as_deref());
        let domain = match domain_name {
            None => None,
            Some(name) => match rules.domain(name) {
                Some(d) => Some(d),
                None => {
                    static NO_DOMAIN: LogThrottle = LogThrottle::new();
                    if let Some(r) = NO_DOMAIN.admit() {
                        tracing::warn!(
                            domain = name,
                            occurrences = r.count,
                            repeated = %r,
                            "authz: the route names a domain no file defines"
                        );
                    }
                    return self.render(Outcome::Misconfigured, None, &DEFAULTS, "sluice");
                }
            },
        };
        let rule = domain.and_then(|d| d.authz.as_ref()).unwrap_or(&DEFAULTS);
        let realm = domain_name.unwrap_or("sluice");
        let settings = route_scopes(req, rule).and_then(|s| Ok((s, route_cost(req, rule)?)));
        let (scopes, cost) = match settings {
            Ok(s) => s,
            Err(e) => {
                static BAD_SETTING: LogThrottle = LogThrottle::new();
                if let Some(r) = BAD_SETTING.admit() {
                    tracing::warn!(error = %e, occurrences = r.count, repeated = %r, "authz: a route setting cannot be used");
                }
                return self.render(Outcome::Misconfigured, None, rule, realm);
            }
        };
        let Some((secret, carrier)) = find_key(rule, req) else {
            return self.render(Outcome::Missing, None, rule, realm);
        };
        let descriptors = build_descriptors(&rule.descriptors, req);
        let outcome = self
            .decide(
                domain_name.unwrap_or(NO_DOMAIN),
                &secret,
                &scopes,
                cost,
                &descriptors,
                req.remote_address,
            )
            .await;
        self.render(outcome, Some(carrier), rule, realm)
    }

    fn render(
        &self,
        outcome: Outcome,
        carrier: Option<request::Carrier<'_>>,
        rule: &AuthzRule,
        realm: &str,
    ) -> Answer {
        answer::render(
            outcome,
            &Context {
                identity: &self.options.identity,
                carrier,
                realm,
                bearer: rule.key_sources.contains(&KeySource::Bearer),
            },
        )
    }

    /// The keyed decision: the key, its scopes, then its plan limits and
    /// the domain's descriptors in one engine call, charged `cost`.
    async fn decide(
        &self,
        domain: &str,
        secret: &str,
        scopes: &[String],
        cost: u64,
        descriptors: &[Vec<(&str, &str)>],
        caller: Option<&str>,
    ) -> Outcome {
        let Some(keys) = self.decider.keys() else {
            return Outcome::KeyStoreUnavailable;
        };
        if let Some(c) = caller
            && keys.guard().failures_exhausted(c)
        {
            return Outcome::TooManyFailures;
        }
        let mut req = Request {
            domain,
            descriptors: SmallVec::with_capacity(1 + descriptors.len()),
            hits_addend: 0,
            header_mode: Some(self.options.response_headers),
        };
        // The key's own descriptor: decided on its limits only.
        req.descriptors.push(Descriptor {
            entries: [Entry {
                key: "api_key",
                value: "",
            }]
            .into_iter()
            .collect(),
            hits_addend: Some(cost),
            ..Descriptor::default()
        });
        for d in descriptors {
            req.descriptors.push(Descriptor {
                entries: d.iter().map(|&(key, value)| Entry { key, value }).collect(),
                hits_addend: Some(cost),
                ..Descriptor::default()
            });
        }
        let slots = [KeySlot {
            index: 0,
            secret,
            required_scopes: scopes,
        }];
        let policy = KeyPolicy {
            on_invalid: OnInvalid::Deny,
            label: "api_key",
            whole_request: true,
        };
        let answer = match self
            .decider
            .decide_with_keys(req, &slots, policy, caller)
            .await
        {
            Ok(a) => a,
            Err(DecideError::Invalid(e)) => return Outcome::BadRequest(e.to_string()),
            Err(e) => {
                static UNDECIDED: LogThrottle = LogThrottle::new();
                if let Some(r) = UNDECIDED.admit() {
                    tracing::warn!(error = %e, occurrences = r.count, repeated = %r, "authz: the request could not be decided");
                }
                return Outcome::CounterStoreUnavailable;
            }
        };
        let Some(report) = answer.keys.into_iter().next() else {
            return Outcome::KeyStoreUnavailable;
        };
        let key = match (report.outcome, report.key) {
            (KeyOutcome::Valid, Some(k)) => k,
            (KeyOutcome::Invalid(Verdict::InsufficientScope), Some(k)) => {
                let missing = scopes
                    .iter()
                    .filter(|s| !k.key.scopes.contains(s))
                    .cloned()
                    .collect();
                return Outcome::MissingScopes(missing);
            }
            (KeyOutcome::Invalid(v), _) => return Outcome::Invalid(v),
            (KeyOutcome::Valid, None) => return Outcome::Invalid(Verdict::NotFound),
            (KeyOutcome::StoreUnavailable, _) => {
                static NO_KEY_STORE: LogThrottle = LogThrottle::new();
                if let Some(r) = NO_KEY_STORE.admit() {
                    tracing::warn!(occurrences = r.count, repeated = %r, "authz: the key store could not answer");
                }
                return Outcome::KeyStoreUnavailable;
            }
        };
        let decision = answer.decision;
        let limits = keys.limits_at(&key, keys.now());
        let key_status = decision.statuses.first();
        // The quota is the last limit, and the one reported when it refuses
        // (a refusing limit that resets last is reported).
        let quota_exhausted = match (key.plan.quota, key_status, limits.last()) {
            (Some(_), Some(s), Some(q)) if s.code == Code::OverLimit => s
                .current_limit
                .as_ref()
                .is_some_and(|c| c.window_seconds == q.window_ns.div_ceil(1_000_000_000)),
            _ => false,
        };
        Outcome::Decided {
            key,
            decision,
            quota_exhausted,
        }
    }
}

fn route_scopes<H>(req: &GateRequest<'_, H>, rule: &AuthzRule) -> Result<Vec<String>, BadSetting> {
    match req.route.scopes {
        Some(s) => parse_scopes(s),
        None => Ok(rule.scopes.clone()),
    }
}

fn route_cost<H>(req: &GateRequest<'_, H>, rule: &AuthzRule) -> Result<u64, BadSetting> {
    match req.route.cost {
        Some(c) => parse_cost(c),
        None => Ok(rule.cost),
    }
}
