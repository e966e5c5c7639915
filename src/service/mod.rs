//! The keyed decision, transport-neutral: resolve the API keys a request
//! carries → attach each key's limits to its descriptor (the subject) →
//! decide every descriptor in one engine call → record each key's usage.
//! `ShouldRateLimit` (gRPC) and `POST /json` (HTTP) both call
//! [`Decider::should_rate_limit`]; the gateway ([`crate::authz::Gate`],
//! behind ext_authz `Check` and `/auth`), which finds its key elsewhere (a
//! header, with required scopes and a cost), calls
//! [`Decider::decide_with_keys`] with the descriptors it built and gets
//! the key's identity back in the [`Answer`]. Key resolution (cache,
//! single flight, negative cache, timeout and failure mode, the
//! failed-validation guard) is the resolver's, the same for all of them.
//!
//! Never fails open by accident: a malformed or unknown key is an invalid
//! key (answered per the domain's `on_invalid`), a key store that cannot
//! answer is answered per `--key-store-failure-mode`, and the other
//! descriptors of the request are decided either way. The request is
//! checked against its bounds before any key is looked up.
//!
//! A domain without `api_key` goes straight to the engine: one flag read,
//! no key work, no allocation.
//!
//! May depend on: `engine`, `keys` (the resolver), `core`, the `store`
//! trait, `telemetry::throttle`. Knows nothing of gRPC or HTTP types.

pub mod caller;

use std::sync::Arc;

use futures_util::future::Either;
use smallvec::SmallVec;

use crate::core::rules::{ApiKeyRule, OnInvalid};
use crate::engine::{Code, DecideError, Decision, DescriptorStatus, Engine, Request, Subject};
use crate::keys::model::ResolvedKey;
use crate::keys::{KeyStoreFailureMode, Resolver, Standing, Verdict};
use crate::store::{CounterStore, StoreHealth};
use crate::telemetry::throttle::LogThrottle;

pub use caller::CallerSource;

/// What a client is told when its key decided the answer: an RFC 9457
/// problem, rendered by the transport (Envoy's `raw_body`, an HTTP body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The HTTP status the gateway answers with.
    pub status: u16,
    pub title: &'static str,
    pub detail: &'static str,
    /// A stable code: a ValidateKey code, or `KEY_STORE_UNAVAILABLE`.
    pub code: &'static str,
}

impl Problem {
    pub const CONTENT_TYPE: &'static str = "application/problem+json";

    /// The problem for a key that is not valid.
    pub const fn invalid(verdict: Verdict) -> Problem {
        let (title, detail, code) = match verdict {
            Verdict::Disabled => ("API key disabled", "This API key is disabled.", "DISABLED"),
            Verdict::Expired => ("API key expired", "This API key has expired.", "EXPIRED"),
            Verdict::Revoked => (
                "API key revoked",
                "This API key has been revoked.",
                "REVOKED",
            ),
            Verdict::InsufficientScope => (
                "Insufficient scope",
                "This API key may not make this request.",
                "INSUFFICIENT_SCOPE",
            ),
            Verdict::NotFound | Verdict::Valid | Verdict::RateLimited | Verdict::UsageExceeded => (
                "Invalid API key",
                "The API key is missing or not valid.",
                "NOT_FOUND",
            ),
        };
        Problem {
            status: 429,
            title,
            detail,
            code,
        }
    }

    /// The problem for a key the key store could not check.
    pub const fn store_unavailable() -> Problem {
        Problem {
            status: 429,
            title: "API key could not be checked",
            detail: "The API key could not be checked just now; try again shortly.",
            code: "KEY_STORE_UNAVAILABLE",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        })
        .to_string()
    }
}

/// How one key of a request came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOutcome {
    /// Valid: its descriptor was decided on the key's limits.
    Valid,
    /// Not valid (unknown or malformed, disabled, expired, revoked,
    /// lacking a scope); the domain's `on_invalid` decided.
    Invalid(Verdict),
    /// The key store could not answer; the failure mode decided.
    StoreUnavailable,
}

/// One key of a request, as decided.
#[derive(Clone, Debug)]
pub struct KeyReport {
    /// The descriptor that carried it.
    pub index: usize,
    pub outcome: KeyOutcome,
    /// The key's identity (id, owner, plan, scopes) when it was found.
    pub key: Option<Arc<ResolvedKey>>,
}

/// The answer to a request.
#[derive(Clone, Debug)]
pub struct Answer {
    pub decision: Decision,
    /// Set when a key made the answer OVER_LIMIT: what to tell the client.
    pub problem: Option<Problem>,
    /// Every key of the request, in descriptor order.
    pub keys: SmallVec<[KeyReport; 1]>,
}

/// A key an adapter found for a descriptor.
#[derive(Clone, Copy, Debug)]
pub struct KeySlot<'a> {
    /// The descriptor its limits replace (its hits are the key's cost).
    pub index: usize,
    pub secret: &'a str,
    /// Scopes the key must have, else it is invalid (InsufficientScope).
    pub required_scopes: &'a [String],
}

/// How the keys of a request are treated.
#[derive(Clone, Copy, Debug)]
pub struct KeyPolicy<'a> {
    pub on_invalid: OnInvalid,
    /// Metric keys of keyed descriptors: `<domain>.<label>.plan_<plan>`.
    pub label: &'a str,
    /// The request is answered as a whole (the gateway: one HTTP request,
    /// let through or not). A denied key then answers alone: nothing else
    /// is decided or counted; a key the key store could not check is
    /// denied whatever the failure mode (there is no identity to let
    /// through: `cached` still answers from a cached entry); and a key's
    /// usage counts as admitted only when the whole request is.
    /// Otherwise (`ShouldRateLimit`) every descriptor is decided, and a
    /// key's usage follows its own descriptor.
    pub whole_request: bool,
}

/// Decides requests, keyed or not.
#[derive(Debug)]
pub struct Decider<S> {
    engine: Arc<Engine<S>>,
    /// `None`: no key store; key-aware domains treat every key as invalid.
    keys: Option<Arc<Resolver<S>>>,
}

impl<S: CounterStore> Decider<S> {
    pub fn new(engine: Arc<Engine<S>>, keys: Option<Arc<Resolver<S>>>) -> Decider<S> {
        Decider { engine, keys }
    }

    pub fn engine(&self) -> &Arc<Engine<S>> {
        &self.engine
    }

    pub fn keys(&self) -> Option<&Arc<Resolver<S>>> {
        self.keys.as_ref()
    }

    /// The key store's readiness (always ready without one).
    pub fn key_store_health(&self) -> StoreHealth {
        self.keys
            .as_ref()
            .map_or_else(StoreHealth::default, |k| k.health())
    }

    /// Counter store and key store together: ready only if both are,
    /// degraded if either is.
    pub fn health(&self) -> StoreHealth {
        let (c, k) = (self.engine.store().health(), self.key_store_health());
        StoreHealth {
            ready: c.ready && k.ready,
            degraded: c.degraded || k.degraded,
        }
    }

    /// `ShouldRateLimit`: in a domain with an `api_key` rule, every
    /// descriptor carrying its entry is decided on that key's limits.
    /// `caller` is asked only when a key is looked up: who is calling,
    /// for the failed-validation guard (a domain's `caller_entry` wins).
    ///
    /// # Errors
    /// [`DecideError::Invalid`] for a request outside its bounds (before
    /// any key is looked up); [`DecideError::Store`] when the counter
    /// store fails and no key decided the answer.
    pub async fn should_rate_limit(
        &self,
        req: Request<'_>,
        caller: impl FnOnce() -> Option<String> + Send,
    ) -> Result<Answer, DecideError> {
        let Some(rule) = self.engine.key_rule(req.domain) else {
            return Ok(Answer {
                decision: self.engine.decide(&req).await?,
                problem: None,
                keys: SmallVec::new(),
            });
        };
        self.engine.validate(&req)?;
        let slots: SmallVec<[KeySlot<'_>; 2]> = req
            .descriptors
            .iter()
            .enumerate()
            .filter_map(|(index, d)| {
                let e = d.entries.iter().find(|e| *e.key == *rule.descriptor_key)?;
                Some(KeySlot {
                    index,
                    secret: e.value,
                    required_scopes: &[],
                })
            })
            .collect();
        let caller = if slots.is_empty() || self.keys.is_none() {
            None
        } else {
            caller_entry(&req, &rule).or_else(caller)
        };
        let policy = KeyPolicy {
            on_invalid: rule.on_invalid,
            label: &rule.descriptor_key,
            whole_request: false,
        };
        // Boxed: the key lookups' futures (database queries) would
        // otherwise make every call's future, key-free ones included, as
        // large as theirs.
        Box::pin(self.decide_validated(req, &slots, policy, caller.as_deref())).await
    }

    /// Decides `req` with the keys an adapter found: each slot's
    /// descriptor is decided on its key's limits (all or nothing, its
    /// hits the cost), every other descriptor on the rule tree, in one
    /// engine call.
    ///
    /// # Errors
    /// As [`Decider::should_rate_limit`].
    ///
    /// Not an `async fn`: the request is checked here and handed on, so
    /// the future holds it once (an async layer would hold it twice, as its
    /// argument and inside the inner future).
    pub fn decide_with_keys<'a>(
        &'a self,
        req: Request<'a>,
        slots: &'a [KeySlot<'a>],
        policy: KeyPolicy<'a>,
        caller: Option<&'a str>,
    ) -> impl Future<Output = Result<Answer, DecideError>> + 'a {
        match self.engine.validate(&req) {
            Err(e) => Either::Left(std::future::ready(Err(e.into()))),
            Ok(()) => Either::Right(self.decide_validated(req, slots, policy, caller)),
        }
    }

    async fn decide_validated(
        &self,
        mut req: Request<'_>,
        slots: &[KeySlot<'_>],
        policy: KeyPolicy<'_>,
        caller: Option<&str>,
    ) -> Result<Answer, DecideError> {
        let secrets: SmallVec<[&str; 2]> = slots.iter().map(|s| s.secret).collect();
        let (standings, now, failure_mode) = match &self.keys {
            Some(k) => (
                k.resolve_all(&secrets, caller).await,
                k.now(),
                k.failure_mode(),
            ),
            None => (
                slots.iter().map(|_| Standing::Unavailable).collect(),
                0,
                KeyStoreFailureMode::Deny,
            ),
        };
        let mut reports: SmallVec<[KeyReport; 1]> = SmallVec::with_capacity(slots.len());
        let mut denied: SmallVec<[usize; 2]> = SmallVec::new();
        let mut problem = None;
        for (slot, standing) in slots.iter().zip(standings) {
            let (outcome, key) = match standing {
                Standing::Resolved { resolution, .. } => {
                    let outcome = match (resolution.verdict, &resolution.key) {
                        (Verdict::Valid, Some(k))
                            if slot
                                .required_scopes
                                .iter()
                                .all(|s| k.key.scopes.contains(s)) =>
                        {
                            KeyOutcome::Valid
                        }
                        (Verdict::Valid, Some(_)) => {
                            KeyOutcome::Invalid(Verdict::InsufficientScope)
                        }
                        (Verdict::Valid, None) => KeyOutcome::Invalid(Verdict::NotFound),
                        (v, _) => KeyOutcome::Invalid(v),
                    };
                    (outcome, resolution.key)
                }
                Standing::Unavailable => (KeyOutcome::StoreUnavailable, None),
            };
            let subject = match outcome {
                KeyOutcome::Valid => key.as_ref().map(|k| Subject {
                    counter_key: k.counter_key.clone(),
                    limits: match &self.keys {
                        Some(r) => r.limits_at(k, now),
                        None => SmallVec::new(),
                    },
                    label: format!("{}.plan_{}", policy.label, k.plan.name),
                }),
                KeyOutcome::Invalid(v) => {
                    if policy.on_invalid == OnInvalid::Deny {
                        denied.push(slot.index);
                        problem.get_or_insert(Problem::invalid(v));
                    }
                    None
                }
                KeyOutcome::StoreUnavailable => {
                    if policy.whole_request || failure_mode != KeyStoreFailureMode::Allow {
                        denied.push(slot.index);
                        problem.get_or_insert(Problem::store_unavailable());
                    }
                    None
                }
            };
            if let Some(d) = req.descriptors.get_mut(slot.index) {
                // No subject limits: the key's descriptor is never matched
                // against the rule tree, whatever it carries.
                d.subject = Some(Box::new(subject.unwrap_or_default()));
            }
            reports.push(KeyReport {
                index: slot.index,
                outcome,
                key,
            });
        }
        let decided = if policy.whole_request && !denied.is_empty() {
            Ok(none_decided(&req))
        } else {
            self.engine.decide(&req).await
        };
        let decision = match decided {
            Ok(d) => d,
            // A key already decided the answer: give it, not an error
            // the gateway might let through.
            Err(DecideError::Store(e)) if !denied.is_empty() => {
                static FAILED: LogThrottle = LogThrottle::new();
                if let Some(r) = FAILED.admit() {
                    tracing::warn!(error = %e, occurrences = r.count, repeated = %r, "counter store failed; answering for the denied key");
                }
                none_decided(&req)
            }
            Err(e) => return Err(e),
        };
        let mut decision = decision;
        for &i in &denied {
            if let Some(s) = decision.statuses.get_mut(i) {
                s.code = Code::OverLimit;
            }
        }
        if !denied.is_empty() {
            decision.overall = Code::OverLimit;
        }
        if let Some(k) = &self.keys {
            for r in &reports {
                if let (KeyOutcome::Valid, Some(key), Some(s)) =
                    (r.outcome, &r.key, decision.statuses.get(r.index))
                {
                    let admitted = if policy.whole_request {
                        decision.overall == Code::Ok
                    } else {
                        s.code == Code::Ok
                    };
                    k.record_decision(&key.key.id, admitted);
                }
            }
        }
        Ok(Answer {
            decision,
            problem,
            keys: reports,
        })
    }
}

/// A decision with no descriptor decided (a denied key answers alone).
fn none_decided(req: &Request<'_>) -> Decision {
    Decision {
        overall: Code::OverLimit,
        statuses: req
            .descriptors
            .iter()
            .map(|_| DescriptorStatus::no_limit())
            .collect(),
        response_headers: Vec::new(),
        degraded: None,
    }
}

/// The caller named by the domain's `caller_entry`: the first descriptor
/// entry with that key.
fn caller_entry(req: &Request<'_>, rule: &ApiKeyRule) -> Option<String> {
    let name = rule.caller_entry.as_deref()?;
    req.descriptors
        .iter()
        .flat_map(|d| d.entries.iter())
        .find(|e| e.key == name && !e.value.is_empty())
        .map(|e| e.value.to_string())
}

#[cfg(test)]
mod tests;
