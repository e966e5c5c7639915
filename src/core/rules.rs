//! The rule tree of each domain and how a descriptor finds its rule.
//!
//! Matching follows envoyproxy/ratelimit: entries are walked level by level;
//! at each level an exact `key`/`value` node wins, then the first wildcard
//! node of that key in file order, then the key's default node (no value).
//! There is no backtracking, and a rule applies only when the node matched
//! by the last entry carries one (depth-exact).

use std::collections::HashMap;
use std::sync::Arc;

use smallvec::SmallVec;

use super::authz::AuthzRule;
use super::limit::{ChargePolicy, LimitSpec};
use super::stats::RuleStats;
use super::wildcard::Wildcard;

type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// One key/value pair of a request descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub key: &'a str,
    pub value: &'a str,
}

/// What a rule does with the descriptors it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleLimits {
    /// `unlimited: true`: always OK, no counter touched.
    Unlimited,
    /// One or more limits, charged per `policy`.
    Limited {
        limits: SmallVec<[LimitSpec; 2]>,
        policy: ChargePolicy,
    },
}

/// A rate limit attached to a node.
#[derive(Debug)]
pub struct Rule {
    /// The `rate_limit`'s `name`; reported in `current_limit.name` and
    /// matched by `replaces`.
    pub name: Option<Arc<str>>,
    pub limits: RuleLimits,
    /// Per limit of a `rate_limits` list: its own `name`, reported when it
    /// is the tightest, and also matched by `replaces`.
    pub limit_names: Box<[Option<Arc<str>>]>,
    /// Over-limit answers become OK (still counted).
    pub shadow_mode: bool,
    /// Over-limit counts towards the overall code only if every quota-mode
    /// descriptor of the request is over.
    pub quota_mode: bool,
    /// Metrics keyed by the request's values (bounded by the engine).
    pub detailed_metric: bool,
    /// Names of limits this one removes from the same request.
    pub replaces: Box<[Arc<str>]>,
    /// Metric key, as the reference builds it: `domain.key_value.key`.
    pub stats_key: Arc<str>,
    pub stats: Arc<RuleStats>,
}

/// How a node's value matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeValue {
    /// No `value`: matches any value of the key.
    Default,
    Exact(Box<str>),
    Wildcard(Wildcard),
}

/// A descriptor node of the configuration tree.
#[derive(Debug)]
pub struct Node {
    pub key: Box<str>,
    pub value: NodeValue,
    pub rule: Option<Arc<Rule>>,
    pub children: Level,
    /// All values matching this wildcard share one counter.
    pub share_threshold: bool,
    /// Put the request's value into the metric key for this level.
    pub value_to_metric: bool,
}

impl Node {
    /// The node's segment of a metric key: `key` or `key_value`.
    pub fn label(&self) -> String {
        match &self.value {
            NodeValue::Default => self.key.to_string(),
            NodeValue::Exact(v) => format!("{}_{v}", self.key),
            NodeValue::Wildcard(w) => format!("{}_{}", self.key, w.as_str()),
        }
    }
}

/// The nodes of one key at one level.
#[derive(Debug, Default)]
struct KeyGroup {
    exact: Map<Box<str>, Node>,
    wildcards: Vec<Node>,
    default: Option<Box<Node>>,
}

/// Sibling nodes, grouped by key.
#[derive(Debug, Default)]
pub struct Level {
    by_key: Map<Box<str>, KeyGroup>,
}

/// Adding a node whose key and value a sibling already has.
#[derive(Debug, thiserror::Error)]
#[error("duplicate descriptor: a sibling already has key '{key}' and {value}")]
pub struct DuplicateNode {
    pub key: String,
    pub value: String,
}

impl Level {
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Adds a node; its key and value must be new at this level.
    ///
    /// # Errors
    /// [`DuplicateNode`] when a sibling has the same key and value.
    pub fn insert(&mut self, node: Node) -> Result<(), DuplicateNode> {
        let group = self.by_key.entry(node.key.clone()).or_default();
        let duplicate = |what: String| DuplicateNode {
            key: node.key.to_string(),
            value: what,
        };
        match &node.value {
            NodeValue::Default => {
                if group.default.is_some() {
                    return Err(duplicate("no value".into()));
                }
                group.default = Some(Box::new(node));
            }
            NodeValue::Exact(v) => {
                if group.exact.contains_key(v) {
                    return Err(duplicate(format!("value '{v}'")));
                }
                group.exact.insert(v.clone(), node);
            }
            NodeValue::Wildcard(w) => {
                if group
                    .wildcards
                    .iter()
                    .any(|n| matches!(&n.value, NodeValue::Wildcard(x) if x == w))
                {
                    return Err(duplicate(format!("value '{}'", w.as_str())));
                }
                group.wildcards.push(node);
            }
        }
        Ok(())
    }

    /// Moves every node of `other` into this level, merging nothing: a node
    /// already present is a duplicate.
    ///
    /// # Errors
    /// The first [`DuplicateNode`] met; nodes before it were moved.
    pub fn absorb(&mut self, other: Level) -> Result<(), Vec<DuplicateNode>> {
        let mut errors = Vec::new();
        for (_, group) in other.by_key {
            let nodes = group
                .exact
                .into_values()
                .chain(group.wildcards)
                .chain(group.default.map(|b| *b));
            for node in nodes {
                if let Err(e) = self.insert(node) {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Every node of this level, in no particular order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.by_key.values().flat_map(|g| {
            g.exact
                .values()
                .chain(g.wildcards.iter())
                .chain(g.default.as_deref())
        })
    }

    fn find(&self, entry: &Entry<'_>) -> Option<(&Node, bool)> {
        let group = self.by_key.get(entry.key)?;
        if let Some(n) = group.exact.get(entry.value) {
            return Some((n, false));
        }
        if let Some(n) = group.wildcards.iter().find(|n| match &n.value {
            NodeValue::Wildcard(w) => w.matches(entry.value),
            NodeValue::Default | NodeValue::Exact(_) => false,
        }) {
            return Some((n, true));
        }
        group.default.as_deref().map(|n| (n, false))
    }
}

/// A descriptor's rule and the nodes that led to it.
#[derive(Debug)]
pub struct Match<'r> {
    pub rule: &'r Arc<Rule>,
    /// One node per entry.
    pub path: SmallVec<[&'r Node; 6]>,
    /// Per entry: the node was matched through its wildcard.
    pub via_wildcard: SmallVec<[bool; 6]>,
}

/// One domain's configuration.
#[derive(Debug)]
pub struct Domain {
    pub name: Arc<str>,
    pub root: Level,
    /// Which descriptor entry carries an API key (sluice extension).
    pub api_key: Option<ApiKeyRule>,
    /// How the gateway (ext_authz `Check`, `/auth`) treats this domain
    /// (sluice extension).
    pub authz: Option<AuthzRule>,
}

/// A domain's API-key descriptor: a descriptor holding an entry with this
/// key is decided by the API key's plan limits instead of the rule tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRule {
    pub descriptor_key: Arc<str>,
    pub on_invalid: OnInvalid,
    /// The descriptor entry whose value identifies the caller for the
    /// failed-validation guard (e.g. `remote_address`); `None`: what the
    /// transport says (a configured header, else the peer address).
    pub caller_entry: Option<Arc<str>>,
}

/// What a descriptor with an invalid (unknown, disabled, expired,
/// revoked) key gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnInvalid {
    /// OVER_LIMIT, with a JSON problem body.
    Deny,
    /// OK, no limit.
    Allow,
}

impl Domain {
    /// The rule for a descriptor, if any (see the module docs).
    pub fn find<'r>(&'r self, entries: &[Entry<'_>]) -> Option<Match<'r>> {
        let mut level = &self.root;
        let mut path = SmallVec::new();
        let mut via_wildcard = SmallVec::new();
        let last = entries.len().checked_sub(1)?;
        for (i, entry) in entries.iter().enumerate() {
            let (node, wild) = level.find(entry)?;
            path.push(node);
            via_wildcard.push(wild);
            if i == last {
                return node.rule.as_ref().map(|rule| Match {
                    rule,
                    path,
                    via_wildcard,
                });
            }
            if node.children.is_empty() {
                return None;
            }
            level = &node.children;
        }
        None
    }
}

/// Every domain of a loaded configuration.
#[derive(Debug, Default)]
pub struct RuleSet {
    domains: Map<Box<str>, Domain>,
    /// Some domain has an `api_key` rule (the key-free path checks this
    /// one flag and nothing else).
    has_api_keys: bool,
}

impl RuleSet {
    pub fn new(domains: impl IntoIterator<Item = Domain>) -> RuleSet {
        let domains: Map<Box<str>, Domain> = domains
            .into_iter()
            .map(|d| (Box::from(&*d.name), d))
            .collect();
        let has_api_keys = domains.values().any(|d| d.api_key.is_some());
        RuleSet {
            domains,
            has_api_keys,
        }
    }

    /// Whether any domain has an `api_key` rule.
    pub const fn has_api_keys(&self) -> bool {
        self.has_api_keys
    }

    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.get(name)
    }

    pub fn domains(&self) -> impl Iterator<Item = &Domain> {
        self.domains.values()
    }

    /// Every rule, with no particular order.
    pub fn rules(&self) -> Vec<&Arc<Rule>> {
        let mut out = Vec::new();
        let mut stack: Vec<&Level> = self.domains.values().map(|d| &d.root).collect();
        while let Some(level) = stack.pop() {
            for node in level.nodes() {
                out.extend(node.rule.as_ref());
                stack.push(&node.children);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
