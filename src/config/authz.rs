//! The `authz:` block of a domain file → [`AuthzRule`].
//!
//! ```yaml
//! authz:
//!   key_from: [header:x-api-key, bearer, query:api_key]
//!   scopes: [orders:read]
//!   cost: 1
//!   descriptors:
//!     - [remote_address]
//!     - [{key: path, from: path}, {key: tier, value: gold}]
//! ```

use std::sync::Arc;

use serde_yaml_ng::Value;

use super::parse::{Ctx, join, kind, show};
use crate::core::authz::{
    AuthzRule, DescriptorTemplate, EntryTemplate, KeySource, MAX_COST, MAX_SCOPES, ValueSource,
};

const AUTHZ_KEYS: &[&str] = &["key_from", "scopes", "cost", "descriptors"];
const ENTRY_KEYS: &[&str] = &["key", "from", "value"];
/// Most descriptors and entries per descriptor one domain builds.
const MAX_DESCRIPTORS: usize = 16;
const MAX_ENTRIES: usize = 16;
const MAX_SCOPE: usize = 64;

pub(super) fn parse_authz(ctx: &mut Ctx<'_>, v: Option<&Value>) -> Option<AuthzRule> {
    let map = match v? {
        Value::Null => return None,
        Value::Mapping(m) => m,
        other => {
            ctx.err("authz", format!("must be a mapping, not {}", kind(other)));
            return None;
        }
    };
    ctx.check_keys("authz", map, AUTHZ_KEYS);
    let mut rule = AuthzRule::default();
    if let Some(v) = map.get("key_from") {
        rule.key_sources = key_sources(ctx, v);
    }
    if let Some(v) = map.get("scopes") {
        rule.scopes = scopes(ctx, "authz.scopes", v);
    }
    match map.get("cost") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64().is_some_and(|c| c <= MAX_COST) => {
            rule.cost = n.as_u64().unwrap_or(1);
        }
        Some(other) => ctx.err(
            "authz.cost",
            format!(
                "must be a whole number from 0 to {MAX_COST}, not {}",
                show(other)
            ),
        ),
    }
    if let Some(v) = map.get("descriptors") {
        rule.descriptors = descriptors(ctx, v);
    }
    Some(rule)
}

fn list<'v>(ctx: &mut Ctx<'_>, path: &str, v: &'v Value) -> &'v [Value] {
    match v {
        Value::Sequence(items) => items,
        Value::Null => &[],
        other => {
            ctx.err(path, format!("must be a list, not {}", kind(other)));
            &[]
        }
    }
}

/// A header name as HTTP spells tokens, lower-cased.
fn header_name(ctx: &mut Ctx<'_>, path: &str, name: &str) -> Option<Arc<str>> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Some(name.to_ascii_lowercase().into())
    } else {
        ctx.err(
            path,
            format!("'{name}' is not a header name (letters, digits and !#$%&'*+-.^_`|~)"),
        );
        None
    }
}

fn key_sources(ctx: &mut Ctx<'_>, v: &Value) -> Vec<KeySource> {
    let path = "authz.key_from";
    let mut out = Vec::new();
    for (i, item) in list(ctx, path, v).iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Value::String(s) = item else {
            ctx.err(&p, format!("must be a string, not {}", kind(item)));
            continue;
        };
        let source = match s.split_once(':') {
            None if s == "bearer" => Some(KeySource::Bearer),
            Some(("header", name)) => header_name(ctx, &p, name).map(KeySource::Header),
            Some(("query", name)) if !name.is_empty() => Some(KeySource::Query(name.into())),
            _ => {
                ctx.err(
                    &p,
                    format!("unknown key source '{s}' (use header:NAME, bearer or query:NAME)"),
                );
                None
            }
        };
        if let Some(source) = source {
            if out.contains(&source) {
                ctx.err(&p, format!("repeats '{s}'"));
            } else {
                out.push(source);
            }
        }
    }
    if out.is_empty() && !ctx.has_errors_under(path) {
        ctx.err(path, "needs at least one source");
    }
    out
}

/// Scopes as keys carry them: 1 to 64 visible ASCII characters, at most
/// 32, no repeats.
pub(super) fn scopes(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Vec<String> {
    let items = list(ctx, path, v);
    if items.len() > MAX_SCOPES {
        ctx.err(
            path,
            format!(
                "has {} scopes; at most {MAX_SCOPES} are allowed",
                items.len()
            ),
        );
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let s = match item {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                ctx.err(&p, format!("must be a string, not {}", kind(other)));
                continue;
            }
        };
        if s.is_empty() || s.len() > MAX_SCOPE || !s.bytes().all(|b| b.is_ascii_graphic()) {
            ctx.err(
                &p,
                format!("'{s}' is not a scope (1 to {MAX_SCOPE} visible ASCII characters)"),
            );
        } else if out.contains(&s) {
            ctx.err(&p, format!("repeats scope '{s}'"));
        } else {
            out.push(s);
        }
    }
    out
}

fn descriptors(ctx: &mut Ctx<'_>, v: &Value) -> Vec<DescriptorTemplate> {
    let path = "authz.descriptors";
    let items = list(ctx, path, v);
    if items.len() > MAX_DESCRIPTORS {
        ctx.err(
            path,
            format!(
                "has {} descriptors; at most {MAX_DESCRIPTORS} are allowed",
                items.len()
            ),
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, d) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let entries = list(ctx, &p, d);
        if entries.is_empty() {
            ctx.err(&p, "needs at least one entry");
            continue;
        }
        if entries.len() > MAX_ENTRIES {
            ctx.err(
                &p,
                format!(
                    "has {} entries; at most {MAX_ENTRIES} are allowed",
                    entries.len()
                ),
            );
            continue;
        }
        let built: Vec<_> = entries
            .iter()
            .enumerate()
            .filter_map(|(j, e)| entry(ctx, &format!("{p}[{j}]"), e))
            .collect();
        if built.len() == entries.len() {
            out.push(DescriptorTemplate { entries: built });
        }
    }
    out
}

/// `remote_address` | `header:x-tenant` | `{key: K, from: SOURCE}` |
/// `{key: K, value: V}`.
fn entry(ctx: &mut Ctx<'_>, path: &str, v: &Value) -> Option<EntryTemplate> {
    match v {
        Value::String(s) => {
            let value = source(ctx, path, s)?;
            let key: Arc<str> = match &value {
                ValueSource::Header(h) => h.clone(),
                _ => s.as_str().into(),
            };
            Some(EntryTemplate { key, value })
        }
        Value::Mapping(map) => {
            ctx.check_keys(path, map, ENTRY_KEYS);
            let key = ctx.string(path, "key", map.get("key")).unwrap_or_default();
            if key.is_empty() {
                ctx.err(&join(path, "key"), "must be set and not empty");
            }
            let from = ctx.string(path, "from", map.get("from"));
            let fixed = ctx.string(path, "value", map.get("value"));
            let value = match (from, fixed) {
                (Some(f), None) => source(ctx, &join(path, "from"), &f)?,
                (None, Some(v)) if !v.is_empty() => ValueSource::Fixed(v.into()),
                (None, Some(_)) => {
                    ctx.err(&join(path, "value"), "must not be empty");
                    return None;
                }
                (Some(_), Some(_)) => {
                    ctx.err(path, "has both 'from' and 'value'; use one");
                    return None;
                }
                (None, None) => {
                    ctx.err(path, "needs 'from' or 'value'");
                    return None;
                }
            };
            (!key.is_empty()).then(|| EntryTemplate {
                key: key.into(),
                value,
            })
        }
        other => {
            ctx.err(
                path,
                format!("must be a source name or a mapping, not {}", kind(other)),
            );
            None
        }
    }
}

fn source(ctx: &mut Ctx<'_>, path: &str, s: &str) -> Option<ValueSource> {
    match s {
        "remote_address" => Some(ValueSource::RemoteAddress),
        "method" => Some(ValueSource::Method),
        "path" => Some(ValueSource::Path),
        "host" => Some(ValueSource::Host),
        _ => match s.strip_prefix("header:") {
            Some(name) => header_name(ctx, path, name).map(ValueSource::Header),
            None => {
                ctx.err(
                    path,
                    format!(
                        "unknown source '{s}' (use remote_address, method, path, host or header:NAME)"
                    ),
                );
                None
            }
        },
    }
}

#[cfg(test)]
mod tests;
