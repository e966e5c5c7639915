//! What the gateway is told, shaped as HTTP: an allow with the caller's
//! identity for the upstream (and the raw key kept from it), or a denial
//! with a status, headers and an `application/problem+json` body (RFC
//! 9457) that says what is wrong and nothing more: an unknown key and a
//! mistyped one read the same.

use std::sync::Arc;

use crate::core::algorithm::Fallback;
use crate::engine::{Code, Decision};
use crate::keys::Verdict;
use crate::keys::model::ResolvedKey;

use super::request::Carrier;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// Names of the identity headers sent upstream (`--authz-*-header`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityHeaders {
    pub key_id: String,
    pub owner: String,
    pub plan: String,
    pub scopes: String,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        IdentityHeaders {
            key_id: "x-sluice-key-id".into(),
            owner: "x-sluice-owner".into(),
            plan: "x-sluice-plan".into(),
            scopes: "x-sluice-scopes".into(),
        }
    }
}

/// How one request came out, before it is shaped as an answer.
#[derive(Debug)]
pub enum Outcome {
    /// No key in any of the domain's sources.
    Missing,
    /// A key that is not valid: NotFound (unknown or malformed),
    /// Disabled, Expired or Revoked.
    Invalid(Verdict),
    /// A valid key without every required scope.
    MissingScopes(Vec<String>),
    /// The caller has failed validation too often this minute.
    TooManyFailures,
    /// The key store could not answer and its failure mode denies.
    KeyStoreUnavailable,
    /// The counter store could not decide.
    CounterStoreUnavailable,
    /// The route's settings cannot be used (logged with the details).
    Misconfigured,
    /// The request is outside the bounds on what is decided (a descriptor
    /// value too long); the message names the field and the bound.
    BadRequest(String),
    /// A valid key, decided on its limits and the domain's descriptors.
    Decided {
        key: Arc<ResolvedKey>,
        decision: Decision,
        /// The key's monthly quota is what refused the request.
        quota_exhausted: bool,
    },
    /// The key store could not answer and its failure mode lets the
    /// request through, unidentified.
    AllowedUnchecked,
}

/// A request let through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowed {
    /// Set on the upstream request, replacing any the client sent.
    pub set_headers: Vec<(String, String)>,
    /// Removed from the upstream request: the key's header and identity
    /// headers sluice did not set (so a client cannot supply them).
    pub remove_headers: Vec<String>,
    /// Removed from the upstream request's query (a key sent as one).
    pub remove_query: Vec<String>,
    /// Added to the answer the client gets (rate-limit headers).
    pub response_headers: Vec<(String, String)>,
    /// Key id, owner and plan, for Envoy's dynamic metadata.
    pub metadata: Vec<(&'static str, String)>,
}

/// A request refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub status: u16,
    /// The problem's stable code (also the metric label).
    pub code: &'static str,
    /// WWW-Authenticate, Retry-After, rate-limit headers, content-type.
    pub headers: Vec<(String, String)>,
    /// The problem+json body.
    pub body: String,
}

/// The answer for the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Allow(Allowed),
    Deny(Denied),
}

impl Answer {
    /// The stable code: `OK` or the problem's.
    pub fn code(&self) -> &'static str {
        match self {
            Answer::Allow(_) => "OK",
            Answer::Deny(d) => d.code,
        }
    }
}

/// What rendering needs besides the outcome.
#[derive(Debug)]
pub struct Context<'a> {
    pub identity: &'a IdentityHeaders,
    /// Where the key was found (to keep it from the upstream).
    pub carrier: Option<Carrier<'a>>,
    /// The domain's name, as the `realm` of WWW-Authenticate.
    pub realm: &'a str,
    /// The domain accepts `authorization: Bearer`.
    pub bearer: bool,
}

fn problem(
    status: u16,
    code: &'static str,
    title: &str,
    detail: &str,
    mut headers: Vec<(String, String)>,
) -> Answer {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    })
    .to_string();
    headers.push(("content-type".into(), PROBLEM_JSON.into()));
    Answer::Deny(Denied {
        status,
        code,
        headers,
        body,
    })
}

/// `Bearer realm="api", error="invalid_token"` (RFC 6750) when Bearer is
/// accepted, else the same challenge under the `ApiKey` scheme.
fn challenge(ctx: &Context<'_>, presented: bool) -> (String, String) {
    let scheme = if ctx.bearer { "Bearer" } else { "ApiKey" };
    let realm: String = ctx
        .realm
        .chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let mut v = format!("{scheme} realm=\"{realm}\"");
    if presented {
        v.push_str(", error=\"invalid_token\"");
    }
    ("www-authenticate".into(), v)
}

fn unauthorized(ctx: &Context<'_>, code: &'static str, title: &str, detail: &str) -> Answer {
    let presented = code != "MISSING";
    problem(401, code, title, detail, vec![challenge(ctx, presented)])
}

fn retry_after(seconds: u64) -> (String, String) {
    ("retry-after".into(), seconds.max(1).to_string())
}

/// Shapes an outcome as the gateway's answer.
pub fn render(outcome: Outcome, ctx: &Context<'_>) -> Answer {
    match outcome {
        Outcome::Missing => unauthorized(
            ctx,
            "MISSING",
            "API key required",
            "This request needs an API key.",
        ),
        Outcome::Invalid(v) => match v {
            Verdict::Disabled => unauthorized(
                ctx,
                "DISABLED",
                "API key disabled",
                "This API key is disabled.",
            ),
            Verdict::Expired => unauthorized(
                ctx,
                "EXPIRED",
                "API key expired",
                "This API key has expired.",
            ),
            Verdict::Revoked => unauthorized(
                ctx,
                "REVOKED",
                "API key revoked",
                "This API key has been revoked.",
            ),
            Verdict::NotFound
            | Verdict::Valid
            | Verdict::InsufficientScope
            | Verdict::RateLimited
            | Verdict::UsageExceeded => unauthorized(
                ctx,
                "NOT_FOUND",
                "Invalid API key",
                "The API key is not valid.",
            ),
        },
        Outcome::MissingScopes(scopes) => problem(
            403,
            "INSUFFICIENT_SCOPE",
            "Insufficient scope",
            &format!(
                "This API key lacks a scope this request needs: {}.",
                scopes.join(" ")
            ),
            Vec::new(),
        ),
        Outcome::TooManyFailures => problem(
            429,
            "TOO_MANY_FAILURES",
            "Too many invalid API keys",
            "Too many requests with invalid API keys came from this address; try again in a minute.",
            vec![retry_after(60)],
        ),
        Outcome::KeyStoreUnavailable => problem(
            503,
            "KEY_STORE_UNAVAILABLE",
            "API key could not be checked",
            "The API key could not be checked just now; try again shortly.",
            vec![retry_after(1)],
        ),
        Outcome::CounterStoreUnavailable => counter_store_unavailable(),
        Outcome::Misconfigured => problem(
            500,
            "MISCONFIGURED",
            "Authorization misconfigured",
            "The gateway's authorization settings for this route cannot be used.",
            Vec::new(),
        ),
        Outcome::BadRequest(why) => problem(
            400,
            "BAD_REQUEST",
            "Request not accepted",
            &format!("This request cannot be rate limited: {why}."),
            Vec::new(),
        ),
        Outcome::AllowedUnchecked => {
            let mut a = allowed_base(ctx);
            let i = ctx.identity;
            a.remove_headers
                .extend([&i.key_id, &i.owner, &i.plan, &i.scopes].map(Clone::clone));
            Answer::Allow(a)
        }
        Outcome::Decided {
            key,
            decision,
            quota_exhausted,
        } => decided(&key, decision, quota_exhausted, ctx),
    }
}

fn counter_store_unavailable() -> Answer {
    problem(
        503,
        "COUNTER_STORE_UNAVAILABLE",
        "Rate limits could not be checked",
        "The rate limits of this request could not be checked just now; try again shortly.",
        vec![retry_after(1)],
    )
}

fn rate_headers(decision: &mut Decision) -> Vec<(String, String)> {
    decision
        .response_headers
        .drain(..)
        .map(|h| (h.name.to_ascii_lowercase(), h.value))
        .collect()
}

fn allowed_base(ctx: &Context<'_>) -> Allowed {
    let mut a = Allowed::default();
    match &ctx.carrier {
        Some(Carrier::Header(h)) => a.remove_headers.push((*h).to_string()),
        Some(Carrier::Query(q)) => a.remove_query.push((*q).to_string()),
        None => {}
    }
    a
}

fn decided(
    key: &ResolvedKey,
    mut decision: Decision,
    quota_exhausted: bool,
    ctx: &Context<'_>,
) -> Answer {
    if decision.overall == Code::OverLimit && decision.degraded == Some(Fallback::Deny) {
        // Refused by `--failure-mode deny` while the counter store is
        // unreachable: nothing was counted and the numbers mean nothing,
        // so not "rate limited" with a made-up Retry-After.
        return counter_store_unavailable();
    }
    if decision.overall == Code::OverLimit {
        let wait = decision
            .statuses
            .iter()
            .filter(|s| s.code == Code::OverLimit)
            .filter_map(|s| s.duration_until_reset)
            .max()
            .unwrap_or(1)
            .max(1);
        let mut headers = rate_headers(&mut decision);
        headers.push(retry_after(wait));
        return if quota_exhausted {
            problem(
                429,
                "USAGE_EXCEEDED",
                "Usage quota exceeded",
                &format!("This API key's quota is used up; it refills in {wait} s."),
                headers,
            )
        } else {
            problem(
                429,
                "RATE_LIMITED",
                "Rate limit exceeded",
                &format!("Too many requests; try again in {wait} s."),
                headers,
            )
        };
    }
    let k = &key.key;
    let i = ctx.identity;
    let mut a = allowed_base(ctx);
    for (name, value) in [
        (&i.key_id, k.id.clone()),
        (&i.owner, k.owner_id.clone()),
        (&i.plan, k.plan.clone()),
        (&i.scopes, k.scopes.join(" ")),
    ] {
        if value.is_empty() {
            a.remove_headers.push(name.clone());
        } else {
            a.set_headers.push((name.clone(), value));
        }
    }
    a.response_headers = rate_headers(&mut decision);
    a.metadata = vec![
        ("key_id", k.id.clone()),
        ("owner", k.owner_id.clone()),
        ("plan", k.plan.clone()),
    ];
    Answer::Allow(a)
}
