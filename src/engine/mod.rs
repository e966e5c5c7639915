//! The decision engine: from a [`Request`] to a [`Decision`].
//!
//! It finds each descriptor's rule in the current [`RuleSet`], applies
//! `replaces`, sends one batch of checks to the counter store, and turns
//! the outcomes into statuses, per-rule statistics, the overall code and
//! rate-limit headers. The rule set is swapped atomically on reload
//! ([`Engine::set_rules`]); requests in flight finish on the set they
//! started with.
//!
//! May depend on: `core` and the `store` trait. Knows nothing of gRPC,
//! HTTP, Redis or SQL.

pub mod headers;
pub mod request;
pub mod validate;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use arc_swap::ArcSwap;
use parking_lot::RwLock;
use smallvec::SmallVec;

use crate::core::algorithm::{Fallback, whole_seconds};
use crate::core::key::{self, Part};
use crate::core::limit::{Algorithm, ChargePolicy, LimitSpec};
use crate::core::rules::{ApiKeyRule, Match, NodeValue, Rule, RuleLimits, RuleSet};
use crate::core::stats::RuleStats;
use crate::store::{Check, CounterStore, StoreError};

pub use headers::HeaderMode;
pub use request::{Code, CurrentLimit, Decision, Descriptor, DescriptorStatus, Request, Subject};
pub use validate::{InvalidRequest, RequestLimits};

/// Why a request could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("invalid request: {0}")]
    Invalid(#[from] InvalidRequest),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Engine settings that do not change on reload.
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings {
    /// Over-limit overall codes become OK (`--shadow-mode`).
    pub global_shadow_mode: bool,
    pub headers: HeaderMode,
    pub request_limits: RequestLimits,
    /// Cap on metric keys made from request values (`detailed_metric`,
    /// `value_to_metric`, request overrides).
    pub max_metric_keys: usize,
}

/// Statistics keyed by strings built from request values, bounded: past
/// the cap, hits are recorded on the rule's own key and `overflow` counts.
#[derive(Debug, Default)]
pub struct DynamicStats {
    map: RwLock<HashMap<Box<str>, Arc<RuleStats>, ahash::RandomState>>,
    cap: usize,
    overflow: AtomicU64,
}

impl DynamicStats {
    fn new(cap: usize) -> DynamicStats {
        DynamicStats {
            cap,
            ..DynamicStats::default()
        }
    }

    fn get(&self, key: &str) -> Option<Arc<RuleStats>> {
        if let Some(s) = self.map.read().get(key) {
            return Some(s.clone());
        }
        let mut map = self.map.write();
        if let Some(s) = map.get(key) {
            return Some(s.clone());
        }
        if map.len() >= self.cap {
            self.overflow.fetch_add(1, Relaxed);
            return None;
        }
        let s = Arc::new(RuleStats::default());
        map.insert(key.into(), s.clone());
        Some(s)
    }

    /// Every key and its stats.
    pub fn snapshot(&self) -> Vec<(Box<str>, Arc<RuleStats>)> {
        self.map
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Lookups sent to the rule's own stats because the cap was reached.
    pub fn overflow(&self) -> u64 {
        self.overflow.load(Relaxed)
    }
}

/// Decides requests against the current rules and a counter store.
#[derive(Debug)]
pub struct Engine<S> {
    store: S,
    rules: ArcSwap<RuleSet>,
    settings: Settings,
    dynamic_stats: DynamicStats,
    /// Stats of request overrides whose keys could not be tracked.
    override_stats: Arc<RuleStats>,
}

/// What applies to one descriptor.
enum Plan<'r> {
    /// No rule, or replaced: OK without a limit.
    None,
    /// An `unlimited` rule; kept for its `replaces`.
    Unlimited(&'r Rule),
    Limited(Limited<'r>),
}

struct Limited<'r> {
    rule: Option<&'r Rule>,
    limits: Cow<'r, [LimitSpec]>,
    policy: ChargePolicy,
    hits: u64,
    key: std::ops::Range<usize>,
    stats: Held<'r, RuleStats>,
    stats_key: Option<Held<'r, str>>,
}

/// A value borrowed from the current rules, or owned when built for this
/// request (per-value metric keys, overrides). Borrowing keeps the common
/// path free of reference-count traffic on shared cache lines.
enum Held<'r, T: ?Sized> {
    Borrowed(&'r T),
    Owned(Arc<T>),
}

impl<T: ?Sized> std::ops::Deref for Held<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Held::Borrowed(r) => r,
            Held::Owned(a) => a,
        }
    }
}

impl<S: CounterStore> Engine<S> {
    pub fn new(store: S, rules: RuleSet, settings: Settings) -> Engine<S> {
        Engine {
            store,
            rules: ArcSwap::from_pointee(rules),
            dynamic_stats: DynamicStats::new(settings.max_metric_keys),
            settings,
            override_stats: Arc::new(RuleStats::default()),
        }
    }

    /// Replaces the rules; requests already running keep the old ones.
    pub fn set_rules(&self, rules: RuleSet) {
        self.rules.store(Arc::new(rules));
    }

    /// The current rules.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.load_full()
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn dynamic_stats(&self) -> &DynamicStats {
        &self.dynamic_stats
    }

    /// Stats of request-supplied limits beyond the metric-key cap.
    pub fn override_stats(&self) -> &RuleStats {
        &self.override_stats
    }

    /// The API-key rule of `domain`, if it has one. A configuration
    /// without any costs one flag read.
    pub fn key_rule(&self, domain: &str) -> Option<ApiKeyRule> {
        let rules = self.rules.load();
        if !rules.has_api_keys() {
            return None;
        }
        rules.domain(domain)?.api_key.clone()
    }

    /// Checks a request against the configured bounds and shapes.
    ///
    /// # Errors
    /// The first problem, naming the field and the bound.
    pub fn validate(&self, req: &Request<'_>) -> Result<(), InvalidRequest> {
        validate::validate(req, &self.settings.request_limits)
    }

    /// Decides a request.
    ///
    /// # Errors
    /// [`DecideError::Invalid`] for a request outside the configured bounds
    /// or shape; [`DecideError::Store`] when the counter store fails.
    pub async fn decide(&self, req: &Request<'_>) -> Result<Decision, DecideError> {
        validate::validate(req, &self.settings.request_limits)?;
        let rules = self.rules.load();
        let domain = rules.domain(req.domain);
        let mode = req.header_mode.unwrap_or(self.settings.headers);
        // An unknown domain has no rules, but a caller's own limits (an API
        // key's plan) apply whatever the domain.
        if domain.is_none() && req.descriptors.iter().all(|d| d.subject.is_none()) {
            return Ok(self.finish(
                req.descriptors
                    .iter()
                    .map(|_| DescriptorStatus::no_limit())
                    .collect(),
                Code::Ok,
                &[],
                mode,
                None,
            ));
        }

        let default_hits = if req.hits_addend == 0 {
            1
        } else {
            u64::from(req.hits_addend)
        };
        let mut keys = key::KeyBuf::new();
        let mut plans: SmallVec<[Plan<'_>; 4]> = SmallVec::with_capacity(req.descriptors.len());
        for d in &req.descriptors {
            let hits = d.hits_addend.unwrap_or(default_hits);
            let plan = match (&d.subject, domain) {
                (Some(s), _) => self.subject_plan(req.domain, s, hits, &mut keys),
                (None, None) => Plan::None,
                (None, Some(domain)) => match d.limit_override {
                    Some(o) => self.override_plan(domain.name.as_ref(), d, o, hits, &mut keys),
                    None => match domain.find(&d.entries) {
                        None => Plan::None,
                        Some(m) => self.rule_plan(&domain.name, d, &m, hits, &mut keys),
                    },
                },
            };
            plans.push(plan);
        }

        apply_replaces(&mut plans);

        let mut checks: SmallVec<[Check<'_>; 4]> = SmallVec::new();
        for p in &plans {
            if let Plan::Limited(l) = p {
                checks.push(Check {
                    key: &keys[l.key.clone()],
                    limits: &l.limits,
                    hits: l.hits,
                    policy: l.policy,
                });
            }
        }
        let outcomes = if checks.is_empty() {
            crate::store::Outcomes::new()
        } else {
            self.store.check(&checks).await?
        };

        let mut outcomes = outcomes.into_iter();
        let mut statuses = Vec::with_capacity(plans.len());
        let mut names = Vec::new();
        let mut any_over = false;
        let mut degraded = None;
        let (mut quota_total, mut quota_over) = (0usize, 0usize);
        for p in &plans {
            let status = match p {
                Plan::None => DescriptorStatus::no_limit(),
                Plan::Unlimited(_) => DescriptorStatus::unlimited(),
                Plan::Limited(l) => {
                    let Some(outcome) = outcomes.next() else {
                        return Err(StoreError::Unavailable(
                            "store answered fewer checks than it was sent".into(),
                        )
                        .into());
                    };
                    let i = outcome.tightest();
                    let (Some(v), Some(spec)) = (outcome.verdicts.get(i), l.limits.get(i)) else {
                        return Err(StoreError::Unavailable(
                            "store answered a check without verdicts".into(),
                        )
                        .into());
                    };
                    let over = !outcome.admitted;
                    let shadow = l.rule.is_some_and(|r| r.shadow_mode);
                    let quota = l.rule.is_some_and(|r| r.quota_mode);
                    // A token bucket holds `burst` requests, not `requests_per_unit`.
                    let capacity = match spec.algorithm {
                        Algorithm::TokenBucket if spec.requests_per_unit > 0 => spec.burst,
                        // Never refills: holds nothing, every hit is over.
                        Algorithm::TokenBucket => 0,
                        Algorithm::FixedWindow | Algorithm::SlidingWindow => spec.requests_per_unit,
                    };
                    l.stats
                        .record(u64::from(capacity), v.used_before, l.hits, over, shadow);
                    let code = if over && !shadow {
                        Code::OverLimit
                    } else {
                        Code::Ok
                    };
                    if quota {
                        quota_total += 1;
                        quota_over += usize::from(code == Code::OverLimit);
                    } else {
                        any_over |= code == Code::OverLimit;
                    }
                    if mode == HeaderMode::Ietf {
                        names.resize(statuses.len(), String::new());
                        names.push(policy_name(l, i));
                    }
                    if let Some(f) = outcome.degraded {
                        degraded = Some(f);
                        if !f.counted() {
                            // The failure mode answered without counting:
                            // report no limit state at all rather than
                            // made-up numbers (see `Decision::degraded`).
                            statuses.push(DescriptorStatus {
                                code,
                                current_limit: None,
                                limit_remaining: 0,
                                duration_until_reset: None,
                            });
                            continue;
                        }
                    }
                    DescriptorStatus {
                        code,
                        current_limit: Some(CurrentLimit {
                            requests_per_unit: spec.requests_per_unit,
                            unit: spec.unit,
                            window_seconds: spec.window_ns.div_ceil(1_000_000_000),
                            name: limit_name(l.rule, i),
                        }),
                        limit_remaining: u32::try_from(v.remaining).unwrap_or(u32::MAX),
                        duration_until_reset: Some(whole_seconds(v.reset_ns)),
                    }
                }
            };
            statuses.push(status);
        }
        let over = any_over || (quota_total > 0 && quota_over == quota_total);
        let overall = if over && !self.settings.global_shadow_mode {
            Code::OverLimit
        } else {
            Code::Ok
        };
        Ok(self.finish(statuses, overall, &names, mode, degraded))
    }

    fn finish(
        &self,
        statuses: Vec<DescriptorStatus>,
        overall: Code,
        names: &[String],
        mode: HeaderMode,
        degraded: Option<Fallback>,
    ) -> Decision {
        let mut response_headers = headers::build(mode, &statuses, names);
        if let Some(f) = degraded
            && mode != HeaderMode::None
        {
            response_headers.push(request::Header {
                name: headers::DEGRADED,
                value: f.as_str().to_owned(),
            });
        }
        Decision {
            overall,
            statuses,
            response_headers,
            degraded,
        }
    }

    fn override_plan<'r>(
        &self,
        domain: &str,
        d: &Descriptor<'_>,
        o: request::LimitOverride,
        hits: u64,
        keys: &mut key::KeyBuf,
    ) -> Plan<'r> {
        let Some(unit) = o.unit else {
            return Plan::None; // rejected by validation already
        };
        let start = keys.len();
        key::push(keys, Part::Domain, domain.as_bytes());
        key::push(keys, Part::Override, unit.as_str().as_bytes());
        let mut stats_key = String::with_capacity(64);
        stats_key.push_str(domain);
        for e in &d.entries {
            key::push(keys, Part::Key, e.key.as_bytes());
            key::push(keys, Part::Value, e.value.as_bytes());
            stats_key.push('.');
            stats_key.push_str(e.key);
        }
        let stats = self
            .dynamic_stats
            .get(&stats_key)
            .unwrap_or_else(|| self.override_stats.clone());
        let limits = vec![LimitSpec::new(
            o.requests_per_unit,
            unit,
            Algorithm::FixedWindow,
            None,
            0,
        )];
        Plan::Limited(Limited {
            rule: None,
            policy: ChargePolicy::for_limits(&limits),
            limits: Cow::Owned(limits),
            hits,
            key: start..keys.len(),
            stats: Held::Owned(stats),
            stats_key: Some(Held::Owned(stats_key.into())),
        })
    }

    fn subject_plan<'r>(
        &self,
        domain: &str,
        s: &Subject,
        hits: u64,
        keys: &mut key::KeyBuf,
    ) -> Plan<'r> {
        if s.limits.is_empty() {
            return Plan::None;
        }
        let start = keys.len();
        keys.extend_from_slice(&s.counter_key);
        let stats_key = format!("{domain}.{}", s.label);
        let stats = self
            .dynamic_stats
            .get(&stats_key)
            .unwrap_or_else(|| self.override_stats.clone());
        Plan::Limited(Limited {
            rule: None,
            limits: Cow::Owned(s.limits.to_vec()),
            policy: ChargePolicy::AllOrNothing,
            hits,
            key: start..keys.len(),
            stats: Held::Owned(stats),
            stats_key: Some(Held::Owned(stats_key.into())),
        })
    }

    fn rule_plan<'r>(
        &self,
        domain: &str,
        d: &Descriptor<'_>,
        m: &Match<'r>,
        hits: u64,
        keys: &mut key::KeyBuf,
    ) -> Plan<'r> {
        let rule: &'r Rule = m.rule;
        let (limits, policy): (&'r [LimitSpec], ChargePolicy) = match &rule.limits {
            RuleLimits::Unlimited => return Plan::Unlimited(rule),
            RuleLimits::Limited { limits, policy } => (limits.as_slice(), *policy),
        };
        let start = keys.len();
        key::push(keys, Part::Domain, domain.as_bytes());
        for ((e, node), via_wildcard) in d.entries.iter().zip(&m.path).zip(&m.via_wildcard) {
            key::push(keys, Part::Key, e.key.as_bytes());
            match &node.value {
                NodeValue::Wildcard(w) if *via_wildcard && node.share_threshold => {
                    key::push(keys, Part::SharedPattern, w.as_str().as_bytes());
                }
                NodeValue::Default | NodeValue::Exact(_) | NodeValue::Wildcard(_) => {
                    key::push(keys, Part::Value, e.value.as_bytes());
                }
            }
        }
        let (stats, stats_key) = self.rule_stats(domain, d, m);
        Plan::Limited(Limited {
            rule: Some(rule),
            limits: Cow::Borrowed(limits),
            policy,
            hits,
            key: start..keys.len(),
            stats,
            stats_key,
        })
    }

    /// The stats for a matched rule: its own, or, with `detailed_metric` or
    /// `value_to_metric`, a bounded per-value key built like the reference.
    fn rule_stats<'r>(
        &self,
        domain: &str,
        d: &Descriptor<'_>,
        m: &Match<'r>,
    ) -> (Held<'r, RuleStats>, Option<Held<'r, str>>) {
        let rule: &'r Rule = m.rule;
        let own = || {
            (
                Held::Borrowed(&*rule.stats),
                Some(Held::Borrowed(&*rule.stats_key)),
            )
        };
        let value_to_metric = m.path.iter().any(|n| n.value_to_metric);
        if !rule.detailed_metric && !value_to_metric {
            return own();
        }
        let mut k = String::with_capacity(rule.stats_key.len() + 32);
        k.push_str(domain);
        for ((e, node), via_wildcard) in d.entries.iter().zip(&m.path).zip(&m.via_wildcard) {
            k.push('.');
            let with_value = rule.detailed_metric
                || (node.value_to_metric
                    && !(node.share_threshold && *via_wildcard)
                    && !matches!(node.value, NodeValue::Exact(_)));
            match (&node.value, with_value) {
                (_, true) | (NodeValue::Exact(_), false) => {
                    k.push_str(e.key);
                    if !e.value.is_empty() {
                        k.push('_');
                        k.push_str(e.value);
                    }
                }
                (NodeValue::Wildcard(_) | NodeValue::Default, false) => k.push_str(&node.label()),
            }
        }
        match self.dynamic_stats.get(&k) {
            Some(s) => (Held::Owned(s), Some(Held::Owned(k.into()))),
            None => own(),
        }
    }
}

/// The name reported for limit `i` of a rule: the limit's own name in a
/// `rate_limits` list, else the rule's.
fn limit_name(rule: Option<&Rule>, i: usize) -> Option<Arc<str>> {
    let rule = rule?;
    rule.limit_names
        .get(i)
        .cloned()
        .flatten()
        .or_else(|| rule.name.clone())
}

/// The policy name in IETF headers: the limit's name, else its metric key.
fn policy_name(l: &Limited<'_>, i: usize) -> String {
    match (limit_name(l.rule, i), &l.stats_key) {
        (Some(n), _) => n.to_string(),
        (None, Some(k)) => (**k).to_string(),
        (None, None) => String::new(),
    }
}

/// Removes every limit named in another matched limit's `replaces`,
/// whatever the descriptor order.
fn apply_replaces(plans: &mut [Plan<'_>]) {
    let mut replaced: SmallVec<[Arc<str>; 4]> = SmallVec::new();
    // As in the reference, an unlimited limit's `replaces` count too.
    for p in plans.iter() {
        if let Plan::Limited(Limited {
            rule: Some(rule), ..
        })
        | Plan::Unlimited(rule) = p
        {
            replaced.extend(rule.replaces.iter().cloned());
        }
    }
    if replaced.is_empty() {
        return;
    }
    for p in plans.iter_mut() {
        let hit = match p {
            Plan::Limited(Limited {
                rule: Some(rule), ..
            }) => rule
                .name
                .iter()
                .chain(rule.limit_names.iter().flatten())
                .any(|n| replaced.contains(n)),
            Plan::Limited(_) | Plan::None | Plan::Unlimited(_) => false,
        };
        if hit {
            *p = Plan::None;
        }
    }
}

#[cfg(test)]
mod tests;
