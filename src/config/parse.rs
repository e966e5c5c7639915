//! One YAML document in envoyproxy/ratelimit's format → a [`Domain`].
//!
//! Parsing walks the YAML tree by hand instead of deserializing into
//! structs, so that it can report *every* problem, each with the path of
//! the node it concerns, rather than stopping at the first.

use std::sync::Arc;

use serde_yaml_ng::{Mapping, Value};
use smallvec::SmallVec;

use super::ConfigError;
use crate::core::limit::{Algorithm, ChargePolicy, LimitSpec};
use crate::core::rules::{ApiKeyRule, Domain, Level, Node, NodeValue, OnInvalid, Rule, RuleLimits};
use crate::core::stats::StatsRegistry;
use crate::core::unit::Unit;
use crate::core::wildcard::Wildcard;

const TOP_KEYS: &[&str] = &["domain", "descriptors", "api_key", "authz"];
const API_KEY_KEYS: &[&str] = &["descriptor_key", "on_invalid", "caller_entry"];
const NODE_KEYS: &[&str] = &[
    "key",
    "value",
    "rate_limit",
    "rate_limits",
    "descriptors",
    "shadow_mode",
    "quota_mode",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
];
const LIMIT_KEYS: &[&str] = &[
    "unit",
    "requests_per_unit",
    "unlimited",
    "name",
    "replaces",
    "algorithm",
    "burst",
];

/// Collects errors for one file.
pub(super) struct Ctx<'a> {
    file: &'a str,
    errors: Vec<ConfigError>,
    stats: &'a StatsRegistry,
}

impl Ctx<'_> {
    /// Whether an error was already reported at or below `path`.
    pub(super) fn has_errors_under(&self, path: &str) -> bool {
        self.errors.iter().any(|e| e.path.starts_with(path))
    }

    pub(super) fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            path: if path.is_empty() {
                "(top level)".to_string()
            } else {
                path.to_string()
            },
            message: message.into(),
        });
    }

    /// Reports keys of `map` that are not in `allowed`.
    pub(super) fn check_keys(&mut self, path: &str, map: &Mapping, allowed: &[&str]) {
        for k in map.keys() {
            match k.as_str() {
                Some(name) if allowed.contains(&name) => {}
                Some(name) => self.err(
                    path,
                    format!("unknown key '{name}' (allowed: {})", allowed.join(", ")),
                ),
                None => self.err(path, format!("key {} is not a string", show(k))),
            }
        }
    }

    /// A scalar read as a string, as the reference's YAML decoder does
    /// (`value: 10` is the string "10").
    pub(super) fn string(&mut self, path: &str, field: &str, v: Option<&Value>) -> Option<String> {
        match v? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Null => None,
            other => {
                self.err(
                    &join(path, field),
                    format!("must be a string, not {}", kind(other)),
                );
                None
            }
        }
    }

    fn bool(&mut self, path: &str, field: &str, v: Option<&Value>) -> bool {
        match v {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.err(
                    &join(path, field),
                    format!("must be true or false, not {}", show(other)),
                );
                false
            }
        }
    }

    fn u32(&mut self, path: &str, field: &str, v: Option<&Value>) -> Option<u32> {
        match v? {
            Value::Null => None,
            Value::Number(n) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => Some(n),
                None => {
                    self.err(
                        &join(path, field),
                        format!("must be a whole number from 0 to {}, not {n}", u32::MAX),
                    );
                    None
                }
            },
            other => {
                self.err(
                    &join(path, field),
                    format!("must be a whole number, not {}", show(other)),
                );
                None
            }
        }
    }
}

pub(super) fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

pub(super) fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{s}'"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => kind(other).to_string(),
    }
}

/// Parses one file's text. Returns the domain name, if one could be read
/// (so duplicate domains are reported even for a file with other errors),
/// and the domain if the file had no errors.
pub fn parse_domain(
    file: &str,
    text: &str,
    stats: &StatsRegistry,
) -> (Option<Arc<str>>, Result<Domain, Vec<ConfigError>>) {
    let mut ctx = Ctx {
        file,
        errors: Vec::new(),
        stats,
    };
    let root: Value = match serde_yaml_ng::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            ctx.err("", format!("not valid YAML: {e}"));
            return (None, Err(ctx.errors));
        }
    };
    let Value::Mapping(map) = root else {
        ctx.err(
            "",
            format!(
                "must be a mapping with 'domain' and 'descriptors', not {}",
                kind(&root)
            ),
        );
        return (None, Err(ctx.errors));
    };
    ctx.check_keys("", &map, TOP_KEYS);
    let name = ctx
        .string("", "domain", map.get("domain"))
        .unwrap_or_default();
    if name.is_empty() {
        ctx.err("domain", "must be set and not empty");
    }
    let name: Arc<str> = name.into();
    let root = parse_level(&mut ctx, "", &name, map.get("descriptors"));
    let api_key = parse_api_key(&mut ctx, map.get("api_key"));
    let authz = super::authz::parse_authz(&mut ctx, map.get("authz"));
    let known = (!name.is_empty()).then(|| name.clone());
    if ctx.errors.is_empty() {
        (
            known,
            Ok(Domain {
                name,
                root,
                api_key,
                authz,
            }),
        )
    } else {
        (known, Err(ctx.errors))
    }
}

/// `api_key: {descriptor_key: x-api-key, on_invalid: deny, caller_entry: remote_address}`.
fn parse_api_key(ctx: &mut Ctx<'_>, v: Option<&Value>) -> Option<ApiKeyRule> {
    let map = match v? {
        Value::Null => return None,
        Value::Mapping(m) => m,
        other => {
            ctx.err(
                "api_key",
                format!(
                    "must be a mapping with 'descriptor_key' and 'on_invalid', not {}",
                    kind(other)
                ),
            );
            return None;
        }
    };
    ctx.check_keys("api_key", map, API_KEY_KEYS);
    let key = ctx
        .string("api_key", "descriptor_key", map.get("descriptor_key"))
        .unwrap_or_default();
    if key.is_empty() {
        ctx.err("api_key.descriptor_key", "must be set and not empty");
    }
    let on_invalid = match ctx
        .string("api_key", "on_invalid", map.get("on_invalid"))
        .as_deref()
    {
        None | Some("deny") => OnInvalid::Deny,
        Some("allow") => OnInvalid::Allow,
        Some(other) => {
            ctx.err(
                "api_key.on_invalid",
                format!("unknown value '{other}' (use deny or allow)"),
            );
            OnInvalid::Deny
        }
    };
    let caller_entry = ctx.string("api_key", "caller_entry", map.get("caller_entry"));
    if caller_entry.as_deref().is_some_and(str::is_empty) {
        ctx.err("api_key.caller_entry", "must not be empty when set");
    }
    (!key.is_empty()).then(|| ApiKeyRule {
        descriptor_key: key.into(),
        on_invalid,
        caller_entry: caller_entry.filter(|c| !c.is_empty()).map(Into::into),
    })
}

fn parse_level(ctx: &mut Ctx<'_>, path: &str, parent_key: &str, v: Option<&Value>) -> Level {
    let mut level = Level::default();
    let items = match v {
        None | Some(Value::Null) => return level,
        Some(Value::Sequence(items)) => items,
        Some(other) => {
            ctx.err(
                &join(path, "descriptors"),
                format!("must be a list, not {}", kind(other)),
            );
            return level;
        }
    };
    for (i, item) in items.iter().enumerate() {
        let here = join(path, &format!("descriptors[{i}]"));
        if let Some(node) = parse_node(ctx, &here, parent_key, item) {
            let label = describe(&node);
            if let Err(e) = level.insert(node) {
                ctx.err(&format!("{here}{label}"), e.to_string());
            }
        }
    }
    level
}

/// ` (key=value)` for error paths.
fn describe(node: &Node) -> String {
    match &node.value {
        NodeValue::Default => format!("(key={})", node.key),
        NodeValue::Exact(v) => format!("(key={}, value={v})", node.key),
        NodeValue::Wildcard(w) => format!("(key={}, value={})", node.key, w.as_str()),
    }
}

fn parse_node(ctx: &mut Ctx<'_>, path: &str, parent_key: &str, v: &Value) -> Option<Node> {
    let Value::Mapping(map) = v else {
        ctx.err(path, format!("must be a mapping, not {}", kind(v)));
        return None;
    };
    ctx.check_keys(path, map, NODE_KEYS);
    let key = ctx.string(path, "key", map.get("key")).unwrap_or_default();
    let value = ctx
        .string(path, "value", map.get("value"))
        .unwrap_or_default();
    let label_path = if value.is_empty() {
        format!("{path}(key={key})")
    } else {
        format!("{path}(key={key}, value={value})")
    };
    let path = label_path.as_str();
    if key.is_empty() {
        ctx.err(path, "'key' must be set and not empty");
    }
    let node_value = if value.is_empty() {
        NodeValue::Default
    } else if let Some(w) = Wildcard::new(&value) {
        NodeValue::Wildcard(w)
    } else {
        NodeValue::Exact(value.clone().into())
    };
    let shadow_mode = ctx.bool(path, "shadow_mode", map.get("shadow_mode"));
    let quota_mode = ctx.bool(path, "quota_mode", map.get("quota_mode"));
    let detailed_metric = ctx.bool(path, "detailed_metric", map.get("detailed_metric"));
    let value_to_metric = ctx.bool(path, "value_to_metric", map.get("value_to_metric"));
    let share_threshold = ctx.bool(path, "share_threshold", map.get("share_threshold"));
    if share_threshold && !matches!(node_value, NodeValue::Wildcard(_)) {
        ctx.err(
            &join(path, "share_threshold"),
            "only applies to a wildcard value (one containing '*')",
        );
    }
    match map.get("metadata") {
        None | Some(Value::Null | Value::Mapping(_)) => {}
        Some(other) => ctx.err(
            &join(path, "metadata"),
            format!("must be a mapping, not {}", kind(other)),
        ),
    }

    let label = match &node_value {
        NodeValue::Default => key.clone(),
        NodeValue::Exact(_) | NodeValue::Wildcard(_) => format!("{key}_{value}"),
    };
    let full_key = format!("{parent_key}.{label}");

    let rule = match (map.get("rate_limit"), map.get("rate_limits")) {
        (Some(_), Some(_)) => {
            ctx.err(path, "has both 'rate_limit' and 'rate_limits'; use one");
            None
        }
        (Some(Value::Null), None) | (None, Some(Value::Null)) | (None, None) => None,
        (Some(one), None) => {
            parse_single(ctx, &join(path, "rate_limit"), one).map(|(limits, name, replaces)| {
                let limit_names =
                    vec![name.clone(); usize::from(matches!(limits, RuleLimits::Limited { .. }))];
                Rule {
                    name,
                    limits,
                    limit_names: limit_names.into(),
                    shadow_mode,
                    quota_mode,
                    detailed_metric,
                    replaces,
                    stats: ctx.stats.get_or_create(&full_key),
                    stats_key: full_key.as_str().into(),
                }
            })
        }
        (None, Some(list)) => {
            parse_list(ctx, &join(path, "rate_limits"), list).map(|(limits, names, replaces)| {
                Rule {
                    name: None,
                    limits,
                    limit_names: names,
                    shadow_mode,
                    quota_mode,
                    detailed_metric,
                    replaces,
                    stats: ctx.stats.get_or_create(&full_key),
                    stats_key: full_key.as_str().into(),
                }
            })
        }
    };
    let children = parse_level(ctx, path, &full_key, map.get("descriptors"));
    if key.is_empty() {
        return None;
    }
    Some(Node {
        key: key.into(),
        value: node_value,
        rule: rule.map(Arc::new),
        children,
        share_threshold,
        value_to_metric,
    })
}

/// One parsed `rate_limit` block.
struct Block {
    /// `None` for `unlimited: true`.
    spec: Option<LimitSpec>,
    name: Option<Arc<str>>,
    replaces: Vec<Arc<str>>,
}

fn parse_block(
    ctx: &mut Ctx<'_>,
    path: &str,
    v: &Value,
    index: usize,
    in_list: bool,
) -> Option<Block> {
    let Value::Mapping(map) = v else {
        ctx.err(path, format!("must be a mapping, not {}", kind(v)));
        return None;
    };
    ctx.check_keys(path, map, LIMIT_KEYS);
    let errors_before = ctx.errors.len();
    let unlimited = ctx.bool(path, "unlimited", map.get("unlimited"));
    let name = ctx
        .string(path, "name", map.get("name"))
        .filter(|n| !n.is_empty());
    let unit_name = ctx.string(path, "unit", map.get("unit"));
    let requests_per_unit = ctx.u32(path, "requests_per_unit", map.get("requests_per_unit"));
    let algorithm_name = ctx.string(path, "algorithm", map.get("algorithm"));
    let burst = ctx.u32(path, "burst", map.get("burst"));

    let mut replaces = Vec::new();
    match map.get("replaces") {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(items)) => {
            for (i, item) in items.iter().enumerate() {
                let here = join(path, &format!("replaces[{i}]"));
                let Value::Mapping(r) = item else {
                    ctx.err(
                        &here,
                        format!("must be a mapping with a 'name', not {}", kind(item)),
                    );
                    continue;
                };
                ctx.check_keys(&here, r, &["name"]);
                match ctx
                    .string(&here, "name", r.get("name"))
                    .filter(|n| !n.is_empty())
                {
                    None => ctx.err(&here, "'name' must be set and not empty"),
                    Some(n) if Some(&n) == name.as_ref() => ctx.err(
                        &here,
                        format!("a limit cannot replace itself ('{n}' is this limit's name)"),
                    ),
                    Some(n) => replaces.push(Arc::from(n)),
                }
            }
        }
        Some(other) => ctx.err(
            &join(path, "replaces"),
            format!("must be a list, not {}", kind(other)),
        ),
    }

    let algorithm = match algorithm_name.as_deref() {
        None => Algorithm::FixedWindow,
        Some(a) => Algorithm::parse(a).unwrap_or_else(|| {
            ctx.err(
                &join(path, "algorithm"),
                format!(
                    "unknown algorithm '{a}' (use fixed_window, sliding_window or token_bucket)"
                ),
            );
            Algorithm::FixedWindow
        }),
    };
    if burst.is_some() && algorithm != Algorithm::TokenBucket {
        ctx.err(
            &join(path, "burst"),
            "only applies to algorithm: token_bucket",
        );
    }
    if burst == Some(0) {
        ctx.err(&join(path, "burst"), "must be at least 1");
    }

    if unlimited {
        if in_list {
            ctx.err(
                &join(path, "unlimited"),
                "is not allowed inside 'rate_limits'; use a 'rate_limit' with unlimited: true",
            );
        }
        if let Some(u) = &unit_name {
            ctx.err(
                &join(path, "unit"),
                format!("must not be set together with unlimited: true (found '{u}')"),
            );
        }
        if algorithm_name.is_some() {
            ctx.err(
                &join(path, "algorithm"),
                "must not be set together with unlimited: true",
            );
        }
        return (ctx.errors.len() == errors_before).then(|| Block {
            spec: None,
            name: name.map(Arc::from),
            replaces,
        });
    }
    let unit = match unit_name.as_deref() {
        None => {
            ctx.err(
                &join(path, "unit"),
                "must be set (second, minute, hour, day, week, month or year) unless unlimited: true",
            );
            None
        }
        Some(u) => Unit::parse(u).or_else(|| {
            ctx.err(
                &join(path, "unit"),
                format!("unknown unit '{u}' (use second, minute, hour, day, week, month or year)"),
            );
            None
        }),
    };
    let unit = unit?;
    (ctx.errors.len() == errors_before).then(|| Block {
        spec: Some(LimitSpec::new(
            requests_per_unit.unwrap_or(0),
            unit,
            algorithm,
            burst,
            index,
        )),
        name: name.map(Arc::from),
        replaces,
    })
}

type Parsed = (RuleLimits, Option<Arc<str>>, Box<[Arc<str>]>);
type ParsedList = (RuleLimits, Box<[Option<Arc<str>>]>, Box<[Arc<str>]>);

fn parse_single(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<Parsed> {
    let block = parse_block(ctx, path, v, 0, false)?;
    let limits = match block.spec {
        None => RuleLimits::Unlimited,
        Some(spec) => {
            let limits: SmallVec<[LimitSpec; 2]> = SmallVec::from_iter([spec]);
            RuleLimits::Limited {
                policy: ChargePolicy::for_limits(&limits),
                limits,
            }
        }
    };
    Some((limits, block.name, block.replaces.into()))
}

fn parse_list(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<ParsedList> {
    let Value::Sequence(items) = v else {
        ctx.err(path, format!("must be a list of limits, not {}", kind(v)));
        return None;
    };
    if items.is_empty() {
        ctx.err(path, "must list at least one limit");
        return None;
    }
    let mut limits = SmallVec::new();
    let mut names = Vec::new();
    let mut replaces: Vec<Arc<str>> = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match parse_block(ctx, &format!("{path}[{i}]"), item, i, true) {
            Some(Block {
                spec: Some(spec),
                name,
                replaces: r,
            }) => {
                limits.push(spec);
                names.push(name);
                replaces.extend(r);
            }
            Some(Block { spec: None, .. }) | None => ok = false,
        }
    }
    for r in &replaces {
        if names.iter().flatten().any(|n| n == r) {
            ctx.err(
                path,
                format!("a limit cannot replace its own rule ('{r}' names one of its limits)"),
            );
            ok = false;
        }
    }
    ok.then(|| {
        (
            RuleLimits::Limited {
                policy: ChargePolicy::AllOrNothing,
                limits,
            },
            names.into(),
            replaces.into(),
        )
    })
}
