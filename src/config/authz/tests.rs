//! The `authz:` block: what it accepts, its defaults, and each refusal
//! naming the field.

use super::super::{ConfigError, LoadOptions, load_sources};
use crate::core::authz::{AuthzRule, EntryTemplate, KeySource, ValueSource};
use crate::core::rules::RuleSet;
use crate::core::stats::StatsRegistry;

fn load(yaml: &str) -> Result<RuleSet, Vec<ConfigError>> {
    load_sources(
        &[("a.yaml".to_string(), yaml.to_string())],
        LoadOptions::default(),
        &StatsRegistry::default(),
    )
    .map_err(|e| e.errors)
}

fn authz(yaml: &str) -> Option<AuthzRule> {
    let rules = load(yaml).unwrap();
    rules.domain("api").unwrap().authz.clone()
}

fn errors(yaml: &str) -> Vec<String> {
    load(yaml)
        .err()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn absent_block_is_none_and_empty_block_is_the_defaults() {
    assert_eq!(authz("domain: api\n"), None);
    let d = authz("domain: api\nauthz: {}\n").unwrap();
    assert_eq!(d, AuthzRule::default());
    assert_eq!(
        d.key_sources,
        vec![KeySource::Header("x-api-key".into()), KeySource::Bearer]
    );
    assert_eq!(d.cost, 1);
    assert!(d.scopes.is_empty() && d.descriptors.is_empty());
}

#[test]
fn every_field() {
    let d = authz(
        "domain: api
authz:
  key_from: [header:X-Key, bearer, query:api_key]
  scopes: [orders:read, orders:write]
  cost: 0
  descriptors:
    - [remote_address]
    - [header:X-Tenant, {key: route, from: path}, {key: tier, value: gold}]
    - [method, host]
",
    )
    .unwrap();
    assert_eq!(
        d.key_sources,
        vec![
            KeySource::Header("x-key".into()),
            KeySource::Bearer,
            KeySource::Query("api_key".into())
        ]
    );
    assert_eq!(d.scopes, ["orders:read", "orders:write"]);
    assert_eq!(d.cost, 0);
    let e = |key: &str, value| EntryTemplate {
        key: key.into(),
        value,
    };
    assert_eq!(
        d.descriptors[0].entries,
        [e("remote_address", ValueSource::RemoteAddress)]
    );
    assert_eq!(
        d.descriptors[1].entries,
        [
            e("x-tenant", ValueSource::Header("x-tenant".into())),
            e("route", ValueSource::Path),
            e("tier", ValueSource::Fixed("gold".into())),
        ]
    );
    assert_eq!(
        d.descriptors[2].entries,
        [
            e("method", ValueSource::Method),
            e("host", ValueSource::Host)
        ]
    );
}

#[test]
fn refusals_name_the_field() {
    let cases: &[(&str, &str)] = &[
        ("authz: [1]", "authz: must be a mapping"),
        ("authz: {keys: x}", "authz: unknown key 'keys'"),
        (
            "authz: {key_from: []}",
            "authz.key_from: needs at least one source",
        ),
        (
            "authz: {key_from: [cookie:k]}",
            "authz.key_from[0]: unknown key source 'cookie:k'",
        ),
        (
            "authz: {key_from: ['header:x y']}",
            "authz.key_from[0]: 'x y' is not a header name",
        ),
        (
            "authz: {key_from: [bearer, bearer]}",
            "authz.key_from[1]: repeats 'bearer'",
        ),
        (
            "authz: {scopes: ['a b']}",
            "authz.scopes[0]: 'a b' is not a scope",
        ),
        (
            "authz: {scopes: [a, a]}",
            "authz.scopes[1]: repeats scope 'a'",
        ),
        (
            "authz: {cost: 1000001}",
            "authz.cost: must be a whole number from 0 to 1000000, not 1000001",
        ),
        ("authz: {cost: -1}", "authz.cost: must be a whole number"),
        (
            "authz: {descriptors: [[]]}",
            "authz.descriptors[0]: needs at least one entry",
        ),
        (
            "authz: {descriptors: [[cookie]]}",
            "authz.descriptors[0][0]: unknown source 'cookie'",
        ),
        (
            "authz: {descriptors: [[{key: a}]]}",
            "authz.descriptors[0][0]: needs 'from' or 'value'",
        ),
        (
            "authz: {descriptors: [[{key: a, from: path, value: b}]]}",
            "authz.descriptors[0][0]: has both 'from' and 'value'",
        ),
        (
            "authz: {descriptors: [[{from: path}]]}",
            "authz.descriptors[0][0].key: must be set and not empty",
        ),
    ];
    for (block, want) in cases {
        let errs = errors(&format!("domain: api\n{block}\n"));
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "{block}: expected {want:?} in {errs:?}"
        );
    }
    let many: Vec<String> = (0..33).map(|i| format!("s{i}")).collect();
    let errs = errors(&format!(
        "domain: api\nauthz: {{scopes: [{}]}}\n",
        many.join(", ")
    ));
    assert!(errs[0].contains("has 33 scopes; at most 32"), "{errs:?}");
}

#[test]
fn merged_domains_must_agree_on_authz() {
    let files = [
        (
            "a.yaml".to_string(),
            "domain: api\nauthz: {cost: 1}\n".to_string(),
        ),
        (
            "b.yaml".to_string(),
            "domain: api\nauthz: {cost: 2}\n".to_string(),
        ),
    ];
    let e = load_sources(
        &files,
        LoadOptions {
            merge_domains: true,
        },
        &StatsRegistry::default(),
    )
    .unwrap_err();
    assert!(
        e.errors[0].to_string().contains("differs from the authz"),
        "{e}"
    );
}
