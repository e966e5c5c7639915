//! The YAML loader: what it accepts, what it rejects and how it says so,
//! and how loaded trees match requests.

use std::sync::Arc;

use proptest::prelude::*;
use serde_yaml_ng::{Mapping, Value};

use super::*;
use crate::core::limit::{Algorithm, ChargePolicy, LimitSpec};
use crate::core::rules::{Entry, Rule, RuleLimits};
use crate::core::unit::Unit;

// ---------------------------------------------------------------------------
// Helpers

/// Removes the indentation shared by every non-blank line, so that YAML can
/// be written indented inside the tests.
fn dedent(text: &str) -> String {
    let text = text.strip_prefix('\n').unwrap_or(text);
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .map(|l| l.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

fn sources(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(name, text)| (name.to_string(), dedent(text)))
        .collect()
}

fn load_files(files: &[(&str, &str)], options: LoadOptions) -> Result<RuleSet, LoadConfigError> {
    load_sources(&sources(files), options, &StatsRegistry::default())
}

/// Loads one file that must be valid.
fn load_ok(yaml: &str) -> RuleSet {
    match load_files(&[("ok.yaml", yaml)], LoadOptions::default()) {
        Ok(rules) => rules,
        Err(e) => panic!("expected the config to load, got {e}"),
    }
}

/// Every error of one file that must be invalid.
fn errors(yaml: &str) -> Vec<ConfigError> {
    match load_files(&[("bad.yaml", yaml)], LoadOptions::default()) {
        Ok(_) => panic!("expected the config to be rejected:\n{}", dedent(yaml)),
        Err(e) => {
            assert!(!e.errors.is_empty());
            e.errors
        }
    }
}

/// The one error of a file with a single problem.
fn only_error(yaml: &str) -> ConfigError {
    let mut errs = errors(yaml);
    assert_eq!(errs.len(), 1, "expected exactly one error, got {errs:#?}");
    errs.remove(0)
}

/// Asserts that `e` is in `file`, that its path contains every part of
/// `path_parts`, and that its message contains `message`.
fn assert_error(e: &ConfigError, file: &str, path_parts: &[&str], message: &str) {
    assert_eq!(e.file, file, "{e}");
    for part in path_parts {
        assert!(e.path.contains(part), "path of {e} should contain {part:?}");
    }
    assert!(
        e.message.contains(message),
        "message of {e} should contain {message:?}"
    );
}

/// Asserts that some error of `errs` fits (see [`assert_error`]).
fn assert_has(errs: &[ConfigError], file: &str, path_parts: &[&str], message: &str) {
    let found = errs.iter().any(|e| {
        e.file == file
            && path_parts.iter().all(|p| e.path.contains(p))
            && e.message.contains(message)
    });
    assert!(
        found,
        "no error in {file} at {path_parts:?} saying {message:?} among {errs:#?}"
    );
}

/// The rule a request finds in `domain`.
fn find<'r>(rules: &'r RuleSet, domain: &str, entries: &[(&str, &str)]) -> Option<&'r Arc<Rule>> {
    let entries: Vec<Entry<'_>> = entries
        .iter()
        .map(|&(key, value)| Entry { key, value })
        .collect();
    rules.domain(domain)?.find(&entries).map(|m| m.rule)
}

/// The rule a request must find.
fn rule<'r>(rules: &'r RuleSet, domain: &str, entries: &[(&str, &str)]) -> &'r Arc<Rule> {
    find(rules, domain, entries).unwrap_or_else(|| panic!("no rule for {entries:?} in {domain}"))
}

/// The single limit of a `rate_limit` rule.
fn single_limit(r: &Rule) -> LimitSpec {
    match &r.limits {
        RuleLimits::Limited { limits, .. } if limits.len() == 1 => limits[0],
        other => panic!("expected one limit, got {other:?}"),
    }
}

fn rule_name(r: &Rule) -> Option<&str> {
    r.name.as_deref()
}

// ---------------------------------------------------------------------------
// Accepted configurations

#[test]
fn reference_style_config_loads_unchanged() {
    let rules = load_ok(
        r#"
        domain: edge_proxy
        descriptors:
          - key: remote_address
            rate_limit:
              unit: second
              requests_per_unit: 50

          - key: generic_key
            value: login
            rate_limit:
              name: login_cap
              unit: Minute
              requests_per_unit: 5

          - key: header_match
            value: bulk
            shadow_mode: true
            rate_limit:
              unit: HOUR
              requests_per_unit: 1000

          - key: client_id
            value: internal
            rate_limit:
              unlimited: true

          - key: client_id
            descriptors:
              - key: path
                value: /upload
                rate_limit:
                  unit: day
                  requests_per_unit: 100
              - key: path
                rate_limit:
                  unit: week
                  requests_per_unit: 10000
        "#,
    );
    let ip = single_limit(rule(
        &rules,
        "edge_proxy",
        &[("remote_address", "10.0.0.1")],
    ));
    assert_eq!((ip.requests_per_unit, ip.unit), (50, Unit::Second));
    assert_eq!(ip.algorithm, Algorithm::FixedWindow);

    let login = rule(&rules, "edge_proxy", &[("generic_key", "login")]);
    assert_eq!(rule_name(login), Some("login_cap"));
    assert_eq!(single_limit(login).unit, Unit::Minute);

    let bulk = rule(&rules, "edge_proxy", &[("header_match", "bulk")]);
    assert!(bulk.shadow_mode);
    assert_eq!(single_limit(bulk).unit, Unit::Hour);

    let internal = rule(&rules, "edge_proxy", &[("client_id", "internal")]);
    assert_eq!(internal.limits, RuleLimits::Unlimited);

    let upload = rule(
        &rules,
        "edge_proxy",
        &[("client_id", "anyone"), ("path", "/upload")],
    );
    assert_eq!(single_limit(upload).unit, Unit::Day);
    let other = rule(
        &rules,
        "edge_proxy",
        &[("client_id", "anyone"), ("path", "/x")],
    );
    assert_eq!(single_limit(other).requests_per_unit, 10000);
    // `client_id` alone (default node, no rule) and deeper requests: nothing.
    assert!(find(&rules, "edge_proxy", &[("client_id", "anyone")]).is_none());
    assert!(
        find(
            &rules,
            "edge_proxy",
            &[("client_id", "internal"), ("path", "/upload")]
        )
        .is_none()
    );

    assert_eq!(rules.rules().len(), 6);
}

#[test]
fn unit_names_in_any_case() {
    for (written, unit) in [
        ("second", Unit::Second),
        ("SECOND", Unit::Second),
        ("Minute", Unit::Minute),
        ("hOuR", Unit::Hour),
        ("DAY", Unit::Day),
        ("Week", Unit::Week),
        ("month", Unit::Month),
        ("YEAR", Unit::Year),
    ] {
        let rules = load_ok(&format!(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: {written}\n      requests_per_unit: 1\n"
        ));
        assert_eq!(
            single_limit(rule(&rules, "d", &[("k", "v")])).unit,
            unit,
            "{written}"
        );
    }
}

#[test]
fn scalar_values_are_read_as_strings() {
    let rules = load_ok(
        r#"
        domain: 42
        descriptors:
          - key: code
            value: 10
            rate_limit: {unit: second, requests_per_unit: 1}
          - key: flag
            value: true
            rate_limit: {unit: second, requests_per_unit: 2}
          - key: 7
            rate_limit: {unit: second, requests_per_unit: 3}
        "#,
    );
    assert!(rules.domain("42").is_some());
    assert_eq!(
        single_limit(rule(&rules, "42", &[("code", "10")])).requests_per_unit,
        1
    );
    assert!(find(&rules, "42", &[("code", "11")]).is_none());
    assert_eq!(
        single_limit(rule(&rules, "42", &[("flag", "true")])).requests_per_unit,
        2
    );
    assert_eq!(
        single_limit(rule(&rules, "42", &[("7", "x")])).requests_per_unit,
        3
    );
    assert_eq!(
        &*rule(&rules, "42", &[("code", "10")]).stats_key,
        "42.code_10"
    );
}

#[test]
fn zero_requests_per_unit_and_missing_requests_per_unit_mean_zero() {
    let rules = load_ok(
        r#"
        domain: d
        descriptors:
          - key: blocked
            rate_limit: {unit: second, requests_per_unit: 0}
          - key: unset
            rate_limit: {unit: second}
        "#,
    );
    assert_eq!(
        single_limit(rule(&rules, "d", &[("blocked", "x")])).requests_per_unit,
        0
    );
    assert_eq!(
        single_limit(rule(&rules, "d", &[("unset", "x")])).requests_per_unit,
        0
    );
}

#[test]
fn unlimited_needs_no_unit_and_may_have_a_name() {
    let rules = load_ok(
        r#"
        domain: d
        descriptors:
          - key: k
            rate_limit:
              unlimited: true
              name: free
          - key: j
            rate_limit:
              unlimited: false
              unit: second
              requests_per_unit: 3
        "#,
    );
    let free = rule(&rules, "d", &[("k", "x")]);
    assert_eq!(free.limits, RuleLimits::Unlimited);
    assert_eq!(rule_name(free), Some("free"));
    assert!(free.limit_names.is_empty());
    assert_eq!(
        single_limit(rule(&rules, "d", &[("j", "x")])).requests_per_unit,
        3
    );
}

#[test]
fn names_replaces_and_flags_are_kept() {
    let rules = load_ok(
        r#"
        domain: d
        descriptors:
          - key: user
            shadow_mode: true
            quota_mode: true
            detailed_metric: true
            value_to_metric: true
            metadata:
              owner: team-a
              tags: [x, y]
              nested: {deep: 1}
            rate_limit:
              name: per_user
              unit: minute
              requests_per_unit: 10
              replaces:
                - name: global
                - name: other
          - key: plain
            shadow_mode: false
            metadata: ~
            rate_limit:
              unit: minute
              requests_per_unit: 10
        "#,
    );
    let user = rule(&rules, "d", &[("user", "u1")]);
    assert_eq!(rule_name(user), Some("per_user"));
    assert_eq!(&*user.limit_names, [Some(Arc::from("per_user"))]);
    let replaces: Vec<&str> = user.replaces.iter().map(|r| &**r).collect();
    assert_eq!(replaces, ["global", "other"]);
    assert!(user.shadow_mode && user.quota_mode && user.detailed_metric);

    let entries = [Entry {
        key: "user",
        value: "u1",
    }];
    let m = rules
        .domain("d")
        .and_then(|d| d.find(&entries))
        .expect("matches");
    assert!(m.path[0].value_to_metric);
    assert!(!m.path[0].share_threshold);

    let plain = rule(&rules, "d", &[("plain", "p")]);
    assert_eq!(rule_name(plain), None);
    assert!(plain.replaces.is_empty());
    assert!(!plain.shadow_mode && !plain.quota_mode && !plain.detailed_metric);
}

#[test]
fn share_threshold_on_a_wildcard() {
    let rules = load_ok(
        r#"
        domain: d
        descriptors:
          - key: path
            value: /files/*
            share_threshold: true
            rate_limit: {unit: second, requests_per_unit: 5}
        "#,
    );
    let entries = [Entry {
        key: "path",
        value: "/files/a",
    }];
    let m = rules
        .domain("d")
        .and_then(|d| d.find(&entries))
        .expect("matches");
    assert!(m.path[0].share_threshold);
    assert_eq!(m.via_wildcard.as_slice(), [true]);
}

#[test]
fn rate_limits_lists_with_algorithms() {
    let rules = load_ok(
        r#"
        domain: d
        descriptors:
          - key: api
            rate_limits:
              - name: burst
                unit: second
                requests_per_unit: 10
                algorithm: token_bucket
                burst: 20
              - name: smooth
                unit: minute
                requests_per_unit: 100
                algorithm: sliding_window
              - unit: hour
                requests_per_unit: 1000
                algorithm: fixed_window
                replaces: [{name: legacy}]
          - key: bucket
            rate_limit:
              unit: second
              requests_per_unit: 7
              algorithm: token_bucket
        "#,
    );
    let api = rule(&rules, "d", &[("api", "x")]);
    let RuleLimits::Limited { limits, policy } = &api.limits else {
        panic!("expected limits, got {:?}", api.limits);
    };
    assert_eq!(*policy, ChargePolicy::AllOrNothing);
    let shape: Vec<(u32, Unit, Algorithm, u32)> = limits
        .iter()
        .map(|l| (l.requests_per_unit, l.unit, l.algorithm, l.burst))
        .collect();
    assert_eq!(
        shape,
        [
            (10, Unit::Second, Algorithm::TokenBucket, 20),
            (100, Unit::Minute, Algorithm::SlidingWindow, 100),
            (1000, Unit::Hour, Algorithm::FixedWindow, 1000),
        ]
    );
    // Each limit has its own counter slot.
    assert_ne!(limits[0].slot, limits[1].slot);
    assert_ne!(limits[1].slot, limits[2].slot);
    assert_eq!(
        &*api.limit_names,
        [Some(Arc::from("burst")), Some(Arc::from("smooth")), None]
    );
    assert_eq!(rule_name(api), None);
    assert_eq!(&*api.replaces, [Arc::from("legacy")]);

    // A single token bucket: burst defaults to the rate, all-or-nothing.
    let bucket = rule(&rules, "d", &[("bucket", "x")]);
    let one = single_limit(bucket);
    assert_eq!((one.algorithm, one.burst), (Algorithm::TokenBucket, 7));
    assert!(matches!(
        bucket.limits,
        RuleLimits::Limited {
            policy: ChargePolicy::AllOrNothing,
            ..
        }
    ));
    // A single fixed window is charged the reference's way.
    let fixed = load_ok(
        "domain: d\ndescriptors: [{key: k, rate_limit: {unit: second, requests_per_unit: 1}}]",
    );
    assert!(matches!(
        rule(&fixed, "d", &[("k", "v")]).limits,
        RuleLimits::Limited {
            policy: ChargePolicy::Always,
            ..
        }
    ));
}

#[test]
fn empty_value_is_the_default_node() {
    let rules = load_ok(
        r#"
        domain: d
        descriptors:
          - key: k
            value: ""
            rate_limit: {unit: second, requests_per_unit: 1}
        "#,
    );
    assert!(find(&rules, "d", &[("k", "anything")]).is_some());
    assert!(find(&rules, "d", &[("k", "")]).is_some());
    assert_eq!(&*rule(&rules, "d", &[("k", "x")]).stats_key, "d.k");

    // ... so it collides with a sibling that has no value at all.
    let e = only_error(
        r#"
        domain: d
        descriptors:
          - key: k
          - key: k
            value: ""
        "#,
    );
    assert_error(&e, "bad.yaml", &["descriptors[1]", "(key=k)"], "duplicate");
}

#[test]
fn domain_without_descriptors_loads_empty() {
    for yaml in [
        "domain: d",
        "domain: d\ndescriptors:",
        "domain: d\ndescriptors: []",
    ] {
        let rules = load_ok(yaml);
        assert!(rules.domain("d").is_some(), "{yaml}");
        assert!(rules.rules().is_empty(), "{yaml}");
    }
}

// ---------------------------------------------------------------------------
// Rejected configurations: one problem each

#[test]
fn unknown_top_level_key() {
    let e = only_error("domain: d\ndescriptor: []");
    assert_error(&e, "bad.yaml", &["top level"], "unknown key 'descriptor'");
}

#[test]
fn unknown_descriptor_key() {
    let e = only_error(
        r#"
        domain: d
        descriptors:
          - key: k
            rate_limt: {unit: second}
        "#,
    );
    assert_error(
        &e,
        "bad.yaml",
        &["descriptors[0]"],
        "unknown key 'rate_limt'",
    );
}

#[test]
fn unknown_rate_limit_key() {
    let e = only_error(
        r#"
        domain: d
        descriptors:
          - key: k
            descriptors:
              - key: inner
                rate_limit:
                  unit: second
                  requests_per_units: 5
        "#,
    );
    assert_error(
        &e,
        "bad.yaml",
        &["descriptors[0](key=k).descriptors[0](key=inner).rate_limit"],
        "unknown key 'requests_per_units'",
    );
}

#[test]
fn unknown_key_in_a_rate_limits_entry_and_in_replaces() {
    let errs = errors(
        r#"
        domain: d
        descriptors:
          - key: k
            rate_limits:
              - {unit: second, requests_per_unit: 1, window: 5}
          - key: j
            rate_limit:
              unit: second
              replaces: [{name: x, why: y}]
        "#,
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_has(
        &errs,
        "bad.yaml",
        &["descriptors[0]", "rate_limits[0]"],
        "unknown key 'window'",
    );
    assert_has(
        &errs,
        "bad.yaml",
        &["descriptors[1]", "replaces[0]"],
        "unknown key 'why'",
    );
}

#[test]
fn missing_or_empty_domain() {
    for yaml in ["descriptors: []", "domain: ''", "domain:\ndescriptors: []"] {
        let e = only_error(yaml);
        assert_error(&e, "bad.yaml", &["domain"], "must be set");
    }
}

#[test]
fn missing_or_empty_key() {
    for node in ["{value: v}", "{key: '', value: v}", "{key: ~}"] {
        let e = only_error(&format!(
            "domain: d\ndescriptors:\n  - {{key: ok}}\n  - {node}\n"
        ));
        assert_error(&e, "bad.yaml", &["descriptors[1]"], "'key' must be set");
    }
}

#[test]
fn duplicate_exact_siblings() {
    let e = only_error(
        r#"
        domain: d
        descriptors:
          - key: k
            value: v
          - key: other
          - key: k
            value: v
            rate_limit: {unit: second, requests_per_unit: 1}
        "#,
    );
    assert_error(
        &e,
        "bad.yaml",
        &["descriptors[2]", "key=k, value=v"],
        "duplicate",
    );
    assert!(
        e.message.contains("'k'") && e.message.contains("'v'"),
        "{e}"
    );
}

#[test]
fn duplicate_default_siblings() {
    let e = only_error(
        r#"
        domain: d
        descriptors:
          - key: k
            descriptors:
              - key: inner
              - key: inner
        "#,
    );
    assert_error(
        &e,
        "bad.yaml",
        &["descriptors[0](key=k).descriptors[1](key=inner)"],
        "duplicate",
    );
    assert!(e.message.contains("no value"), "{e}");
}

#[test]
fn duplicate_identical_wildcards() {
    let e = only_error(
        r#"
        domain: d
        descriptors:
          - key: path
            value: /a/*
          - key: path
            value: /b/*
          - key: path
            value: /a/*
        "#,
    );
    assert_error(
        &e,
        "bad.yaml",
        &["descriptors[2]", "value=/a/*"],
        "duplicate",
    );
}

#[test]
fn same_value_under_different_parents_is_not_a_duplicate() {
    let rules = load_ok(
        r#"
        domain: d
        descriptors:
          - key: a
            descriptors:
              - {key: k, value: v, rate_limit: {unit: second, requests_per_unit: 1}}
          - key: b
            descriptors:
              - {key: k, value: v, rate_limit: {unit: second, requests_per_unit: 2}}
        "#,
    );
    assert_eq!(
        single_limit(rule(&rules, "d", &[("a", "x"), ("k", "v")])).requests_per_unit,
        1
    );
    assert_eq!(
        single_limit(rule(&rules, "d", &[("b", "x"), ("k", "v")])).requests_per_unit,
        2
    );
}

#[test]
fn unknown_unit() {
    let e = only_error(
        r#"
        domain: d
        descriptors:
          - key: k
            rate_limit: {unit: fortnight, requests_per_unit: 1}
        "#,
    );
    assert_error(
        &e,
        "bad.yaml",
        &["descriptors[0]", "rate_limit.unit"],
        "unknown unit 'fortnight'",
    );
}

#[test]
fn missing_unit_when_limited() {
    for limit in [
        "{requests_per_unit: 5}",
        "{requests_per_unit: 5, unlimited: false}",
    ] {
        let e = only_error(&format!(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {limit}\n"
        ));
        assert_error(
            &e,
            "bad.yaml",
            &["descriptors[0]", "rate_limit.unit"],
            "must be set",
        );
    }
}

#[test]
fn unit_together_with_unlimited() {
    let e = only_error(
        r#"
        domain: d
        descriptors:
          - key: k
            rate_limit: {unlimited: true, unit: second}
        "#,
    );
    assert_error(
        &e,
        "bad.yaml",
        &["descriptors[0]", "rate_limit.unit"],
        "unlimited",
    );
}

#[test]
fn replaces_entry_without_a_name() {
    for entry in ["{name: ''}", "{}", "{name: ~}"] {
        let e = only_error(&format!(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      replaces: [{entry}]\n"
        ));
        assert_error(
            &e,
            "bad.yaml",
            &["descriptors[0]", "rate_limit.replaces[0]"],
            "'name' must be set",
        );
    }
}

#[test]
fn replaces_that_is_not_a_list_of_mappings() {
    let errs = errors(
        r#"
        domain: d
        descriptors:
          - key: k
            rate_limit: {unit: second, replaces: global}
          - key: j
            rate_limit: {unit: second, replaces: [global]}
        "#,
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_has(
        &errs,
        "bad.yaml",
        &["descriptors[0]", "rate_limit.replaces"],
        "must be a list",
    );
    assert_has(
        &errs,
        "bad.yaml",
        &["descriptors[1]", "replaces[0]"],
        "must be a mapping",
    );
}

#[test]
fn limit_replacing_itself() {
    let e = only_error(
        r#"
        domain: d
        descriptors:
          - key: k
            rate_limit:
              name: mine
              unit: second
              replaces:
                - name: other
                - name: mine
        "#,
    );
    assert_error(
        &e,
        "bad.yaml",
        &["descriptors[0]", "rate_limit.replaces[1]"],
        "cannot replace itself",
    );

    // In a list, a limit may not replace a sibling limit of the same rule.
    let e = only_error(
        r#"
        domain: d
        descriptors:
          - key: k
            rate_limits:
              - {name: a, unit: second}
              - {name: b, unit: minute, replaces: [{name: a}]}
        "#,
    );
    assert_error(
        &e,
        "bad.yaml",
        &["descriptors[0]", "rate_limits"],
        "cannot replace its own rule",
    );
}

#[test]
fn share_threshold_without_a_wildcard() {
    for value in ["value: exact", "value: ''", ""] {
        let e = only_error(&format!(
            "domain: d\ndescriptors:\n  - key: k\n    {value}\n    share_threshold: true\n"
        ));
        assert_error(
            &e,
            "bad.yaml",
            &["descriptors[0]", "share_threshold"],
            "wildcard",
        );
    }
    // `false` is harmless anywhere.
    load_ok("domain: d\ndescriptors:\n  - key: k\n    value: v\n    share_threshold: false\n");
}

#[test]
fn flags_must_be_booleans_and_metadata_a_mapping() {
    let errs = errors(
        r#"
        domain: d
        descriptors:
          - key: k
            shadow_mode: "yes"
            quota_mode: 1
            metadata: [a, b]
            rate_limit: {unlimited: sure, unit: second}
        "#,
    );
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert_has(
        &errs,
        "bad.yaml",
        &["descriptors[0]", "shadow_mode"],
        "true or false",
    );
    assert_has(
        &errs,
        "bad.yaml",
        &["descriptors[0]", "quota_mode"],
        "true or false",
    );
    assert_has(
        &errs,
        "bad.yaml",
        &["descriptors[0]", "metadata"],
        "must be a mapping",
    );
    assert_has(
        &errs,
        "bad.yaml",
        &["rate_limit.unlimited"],
        "true or false",
    );
}

#[test]
fn rate_limit_and_rate_limits_on_one_node() {
    let e = only_error(
        r#"
        domain: d
        descriptors:
          - key: k
            rate_limit: {unit: second}
            rate_limits: [{unit: second}]
        "#,
    );
    assert_error(
        &e,
        "bad.yaml",
        &["descriptors[0]", "(key=k)"],
        "both 'rate_limit' and 'rate_limits'",
    );
}

#[test]
fn empty_rate_limits_list() {
    let e = only_error("domain: d\ndescriptors:\n  - key: k\n    rate_limits: []\n");
    assert_error(
        &e,
        "bad.yaml",
        &["descriptors[0]", "rate_limits"],
        "at least one",
    );
}

#[test]
fn rate_limits_must_be_a_list_of_mappings() {
    let errs = errors(
        r#"
        domain: d
        descriptors:
          - key: k
            rate_limits: {unit: second}
          - key: j
            rate_limits: [second]
        "#,
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_has(
        &errs,
        "bad.yaml",
        &["descriptors[0]", "rate_limits"],
        "must be a list",
    );
    assert_has(
        &errs,
        "bad.yaml",
        &["descriptors[1]", "rate_limits[0]"],
        "must be a mapping",
    );
}

#[test]
fn unlimited_inside_rate_limits() {
    let e = only_error(
        r#"
        domain: d
        descriptors:
          - key: k
            rate_limits:
              - {unit: second, requests_per_unit: 1}
              - {unlimited: true}
        "#,
    );
    assert_error(
        &e,
        "bad.yaml",
        &["descriptors[0]", "rate_limits[1].unlimited"],
        "not allowed",
    );
}

#[test]
fn unknown_algorithm() {
    let e = only_error(
        r#"
        domain: d
        descriptors:
          - key: k
            rate_limit: {unit: second, algorithm: leaky_bucket}
        "#,
    );
    assert_error(
        &e,
        "bad.yaml",
        &["descriptors[0]", "rate_limit.algorithm"],
        "unknown algorithm 'leaky_bucket'",
    );
}

#[test]
fn algorithm_together_with_unlimited() {
    let e = only_error(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, algorithm: token_bucket}\n",
    );
    assert_error(&e, "bad.yaml", &["rate_limit.algorithm"], "unlimited");
}

#[test]
fn burst_without_token_bucket() {
    for limit in [
        "{unit: second, burst: 5}",
        "{unit: second, burst: 5, algorithm: sliding_window}",
        "{unit: second, burst: 5, algorithm: fixed_window}",
    ] {
        let e = only_error(&format!(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {limit}\n"
        ));
        assert_error(
            &e,
            "bad.yaml",
            &["descriptors[0]", "rate_limit.burst"],
            "token_bucket",
        );
    }
    let e = only_error(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limits:\n      - {unit: second, burst: 5}\n",
    );
    assert_error(&e, "bad.yaml", &["rate_limits[0].burst"], "token_bucket");
}

#[test]
fn burst_zero() {
    let e = only_error(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, algorithm: token_bucket, burst: 0}\n",
    );
    assert_error(
        &e,
        "bad.yaml",
        &["descriptors[0]", "rate_limit.burst"],
        "at least 1",
    );
}

#[test]
fn requests_per_unit_out_of_range_or_not_a_number() {
    for (written, message) in [
        ("-1", "from 0 to 4294967295"),
        ("4294967296", "from 0 to 4294967295"),
        ("1.5", "whole number"),
        ("'10'", "whole number"),
        ("ten", "whole number"),
        ("[1]", "whole number"),
    ] {
        let e = only_error(&format!(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {{unit: second, requests_per_unit: {written}}}\n"
        ));
        assert_error(
            &e,
            "bad.yaml",
            &["descriptors[0]", "rate_limit.requests_per_unit"],
            message,
        );
    }
    // The largest value is fine.
    let rules = load_ok(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 4294967295}\n",
    );
    assert_eq!(
        single_limit(rule(&rules, "d", &[("k", "v")])).requests_per_unit,
        u32::MAX
    );
}

#[test]
fn burst_out_of_range() {
    let e = only_error(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, algorithm: token_bucket, burst: 4294967296}\n",
    );
    assert_error(&e, "bad.yaml", &["rate_limit.burst"], "whole number");
}

#[test]
fn yaml_syntax_errors() {
    for text in [
        "domain: d\ndescriptors:\n  - key: k\n   value: v\n",
        "domain: [unclosed\n",
        "domain: d\n\tdescriptors: []\n",
        "domain: d\ndomain: e\n",
    ] {
        let e = only_error(text);
        assert_error(&e, "bad.yaml", &["top level"], "not valid YAML");
    }
}

#[test]
fn root_that_is_not_a_mapping() {
    for text in ["- domain: d", "just text", "42", "", "~"] {
        let e = only_error(text);
        assert_error(&e, "bad.yaml", &["top level"], "must be a mapping");
    }
}

#[test]
fn descriptors_that_are_not_a_list_of_mappings() {
    let errs = errors(
        r#"
        domain: d
        descriptors:
          - key: k
            descriptors: {key: inner}
          - just-a-string
        "#,
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_has(
        &errs,
        "bad.yaml",
        &["descriptors[0](key=k).descriptors"],
        "must be a list",
    );
    assert_has(&errs, "bad.yaml", &["descriptors[1]"], "must be a mapping");
    let e = only_error("domain: d\ndescriptors: nope\n");
    assert_error(&e, "bad.yaml", &["descriptors"], "must be a list");
}

#[test]
fn non_string_keys_are_reported() {
    let e = only_error("domain: d\n1: x\n");
    assert_error(&e, "bad.yaml", &["top level"], "not a string");
}

// ---------------------------------------------------------------------------
// Several problems at once

#[test]
fn every_problem_in_a_file_is_reported() {
    let errs = errors(
        r#"
        domain: ""
        extra: 1
        descriptors:
          - key: a
            bogus: 1
            rate_limit:
              unit: fortnight
              requests_per_unit: -1
          - value: orphan
          - key: b
            share_threshold: true
            rate_limit:
              unit: second
              unlimited: true
          - key: c
            rate_limits:
              - {unit: second, burst: 3}
              - {unit: lightyear}
            descriptors:
              - key: d
                rate_limit: {unit: second, algorithm: magic}
          - key: a
        "#,
    );
    let f = "bad.yaml";
    assert_has(&errs, f, &["top level"], "unknown key 'extra'");
    assert_has(&errs, f, &["domain"], "must be set");
    assert_has(&errs, f, &["descriptors[0]"], "unknown key 'bogus'");
    assert_has(
        &errs,
        f,
        &["descriptors[0](key=a).rate_limit.unit"],
        "unknown unit 'fortnight'",
    );
    assert_has(
        &errs,
        f,
        &["descriptors[0](key=a).rate_limit.requests_per_unit"],
        "from 0 to",
    );
    assert_has(&errs, f, &["descriptors[1]"], "'key' must be set");
    assert_has(
        &errs,
        f,
        &["descriptors[2](key=b).share_threshold"],
        "wildcard",
    );
    assert_has(
        &errs,
        f,
        &["descriptors[2](key=b).rate_limit.unit"],
        "unlimited",
    );
    assert_has(
        &errs,
        f,
        &["descriptors[3](key=c).rate_limits[0].burst"],
        "token_bucket",
    );
    assert_has(
        &errs,
        f,
        &["descriptors[3](key=c).rate_limits[1].unit"],
        "unknown unit 'lightyear'",
    );
    assert_has(
        &errs,
        f,
        &["descriptors[3](key=c).descriptors[0](key=d).rate_limit.algorithm"],
        "unknown algorithm 'magic'",
    );
    assert_has(&errs, f, &["descriptors[4](key=a)"], "duplicate");
    assert_eq!(errs.len(), 12, "{errs:#?}");
}

#[test]
fn errors_from_every_file_are_reported() {
    let result = load_files(
        &[
            (
                "one.yaml",
                "domain: one\ndescriptors:\n  - key: k\n    rate_limit: {unit: eon}\n",
            ),
            ("good.yaml", "domain: good\ndescriptors:\n  - key: k\n"),
            (
                "two.yaml",
                "domain: two\nextra: 1\ndescriptors:\n  - {key: ''}\n",
            ),
            ("three.yaml", "domain: [broken\n"),
        ],
        LoadOptions::default(),
    );
    let errs = result.expect_err("three bad files").errors;
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert_has(
        &errs,
        "one.yaml",
        &["descriptors[0]", "rate_limit.unit"],
        "unknown unit 'eon'",
    );
    assert_has(&errs, "two.yaml", &["top level"], "unknown key 'extra'");
    assert_has(&errs, "two.yaml", &["descriptors[0]"], "'key' must be set");
    assert_has(&errs, "three.yaml", &["top level"], "not valid YAML");
    assert!(errs.iter().all(|e| e.file != "good.yaml"));

    // The summary names every problem.
    let text = LoadConfigError { errors: errs }.to_string();
    assert!(text.starts_with("4 configuration error(s)"), "{text}");
    assert!(
        text.contains("one.yaml: descriptors[0](key=k).rate_limit.unit: unknown unit"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// Several files and domains

const FILE_A: &str = r#"
domain: shared
descriptors:
  - key: a
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: k
    value: x
    rate_limit: {unit: second, requests_per_unit: 2}
"#;

const FILE_B: &str = r#"
domain: shared
descriptors:
  - key: b
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: k
    value: y
    rate_limit: {unit: minute, requests_per_unit: 4}
"#;

#[test]
fn same_domain_in_two_files_is_rejected_by_default() {
    let errs = load_files(
        &[("a.yaml", FILE_A), ("b.yaml", FILE_B)],
        LoadOptions::default(),
    )
    .expect_err("duplicate domain")
    .errors;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_error(&errs[0], "b.yaml", &["domain"], "already defined in a.yaml");
    assert!(errs[0].message.contains("'shared'"), "{}", errs[0]);
}

#[test]
fn same_domain_in_two_files_is_merged_on_request() {
    let rules = load_files(
        &[("a.yaml", FILE_A), ("b.yaml", FILE_B)],
        LoadOptions {
            merge_domains: true,
        },
    )
    .expect("merged");
    assert_eq!(rules.domains().count(), 1);
    let rpu =
        |entries: &[(&str, &str)]| single_limit(rule(&rules, "shared", entries)).requests_per_unit;
    assert_eq!(rpu(&[("a", "1")]), 1);
    assert_eq!(rpu(&[("k", "x")]), 2);
    assert_eq!(rpu(&[("b", "1")]), 3);
    assert_eq!(rpu(&[("k", "y")]), 4);
    assert!(find(&rules, "shared", &[("k", "z")]).is_none());
    assert_eq!(rules.rules().len(), 4);
}

#[test]
fn duplicate_domain_is_reported_alongside_other_errors() {
    let bad_a = "domain: shared\ndescriptors:\n  - {key: k, rate_limit: {unit: eon}}\n";
    let bad_b = "domain: shared\nbogus: 1\ndescriptors:\n  - {key: j}\n";
    // The first file's errors do not hide the second file's duplicate
    // domain, nor does the duplicate hide the second file's own problems.
    let errs = load_files(
        &[("a.yaml", bad_a), ("b.yaml", bad_b)],
        LoadOptions::default(),
    )
    .expect_err("both files are bad")
    .errors;
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert_has(&errs, "a.yaml", &["rate_limit.unit"], "unknown unit 'eon'");
    assert_has(&errs, "b.yaml", &["domain"], "already defined in a.yaml");
    assert_has(&errs, "b.yaml", &["top level"], "unknown key 'bogus'");

    // A valid first file and a second one that is both a duplicate and bad.
    let errs = load_files(
        &[("a.yaml", FILE_A), ("b.yaml", bad_b)],
        LoadOptions::default(),
    )
    .expect_err("duplicate and bad")
    .errors;
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_has(&errs, "b.yaml", &["domain"], "already defined in a.yaml");
    assert_has(&errs, "b.yaml", &["top level"], "unknown key 'bogus'");
}

#[test]
fn merged_files_must_not_repeat_a_node() {
    let c = r#"
    domain: shared
    descriptors:
      - key: a
        rate_limit: {unit: hour, requests_per_unit: 9}
      - key: k
        value: x
      - key: new
    "#;
    let errs = load_files(
        &[("a.yaml", FILE_A), ("b.yaml", FILE_B), ("c.yaml", c)],
        LoadOptions {
            merge_domains: true,
        },
    )
    .expect_err("c repeats two nodes of a")
    .errors;
    assert_eq!(errs.len(), 2, "{errs:#?}");
    for e in &errs {
        assert_error(e, "c.yaml", &["shared"], "duplicate");
        assert!(e.message.contains("a.yaml"), "{e}");
    }
}

#[test]
fn different_domains_load_side_by_side() {
    let rules = load_files(
        &[
            ("x.yaml", "domain: x\ndescriptors: [{key: k, rate_limit: {unit: second, requests_per_unit: 1}}]"),
            ("y.yaml", "domain: y\ndescriptors: [{key: k, rate_limit: {unit: second, requests_per_unit: 2}}]"),
        ],
        LoadOptions::default(),
    )
    .expect("two domains");
    assert_eq!(
        single_limit(rule(&rules, "x", &[("k", "v")])).requests_per_unit,
        1
    );
    assert_eq!(
        single_limit(rule(&rules, "y", &[("k", "v")])).requests_per_unit,
        2
    );
    assert!(rules.domain("z").is_none());
}

// ---------------------------------------------------------------------------
// Matching on loaded trees

#[test]
fn loaded_wildcards_keep_file_order() {
    let yaml = |first: &str, second: &str| {
        format!(
            "domain: d\ndescriptors:\n  - {{key: p, value: '{first}', rate_limit: {{name: '{first}', unit: second}}}}\n  - {{key: p, value: '{second}', rate_limit: {{name: '{second}', unit: second}}}}\n"
        )
    };
    let narrow_first = load_ok(&yaml("/api/*", "/*"));
    assert_eq!(
        rule_name(rule(&narrow_first, "d", &[("p", "/api/v1")])),
        Some("/api/*")
    );
    assert_eq!(
        rule_name(rule(&narrow_first, "d", &[("p", "/other")])),
        Some("/*")
    );
    let broad_first = load_ok(&yaml("/*", "/api/*"));
    assert_eq!(
        rule_name(rule(&broad_first, "d", &[("p", "/api/v1")])),
        Some("/*")
    );
}

#[test]
fn loaded_tree_matches_exact_then_wildcard_then_default_without_backtracking() {
    let rules = load_ok(
        r#"
        domain: d
        descriptors:
          - key: route
            rate_limit: {name: any_route, unit: second}
            descriptors:
              - {key: method, rate_limit: {name: any_route.method, unit: second}}
          - key: route
            value: /api/*/users/*
            rate_limit: {name: users, unit: second}
          - key: route
            value: /health
          - key: route
            value: /login
            descriptors:
              - {key: user, value: admin, rate_limit: {name: admin_login, unit: second}}
        "#,
    );
    let name = |entries: &[(&str, &str)]| {
        find(&rules, "d", entries).and_then(|r| r.name.as_deref().map(str::to_string))
    };
    assert_eq!(
        name(&[("route", "/api/v2/users/7")]).as_deref(),
        Some("users")
    );
    assert_eq!(
        name(&[("route", "/api/v2/groups/7")]).as_deref(),
        Some("any_route")
    );
    assert_eq!(
        name(&[("route", "/x"), ("method", "GET")]).as_deref(),
        Some("any_route.method")
    );
    // Allow-listed: the exact node has no rule, so nothing applies.
    assert_eq!(name(&[("route", "/health")]), None);
    assert_eq!(
        name(&[("route", "/login"), ("user", "admin")]).as_deref(),
        Some("admin_login")
    );
    // No backtracking to the default node's `method` child.
    assert_eq!(name(&[("route", "/login"), ("method", "GET")]), None);
    assert_eq!(name(&[("route", "/login"), ("user", "bob")]), None);
    // Too deep or too shallow.
    assert_eq!(
        name(&[("route", "/x"), ("method", "GET"), ("extra", "1")]),
        None
    );
    assert_eq!(name(&[("route", "/login")]), None);
}

#[test]
fn underscored_key_and_key_value_pair_are_different_nodes() {
    let rules = load_ok(
        r#"
        domain: d
        descriptors:
          - {key: a_b, rate_limit: {name: key_a_b, unit: second}}
          - {key: a, value: b, rate_limit: {name: a_is_b, unit: second}}
        "#,
    );
    assert_eq!(
        rule_name(rule(&rules, "d", &[("a_b", "x")])),
        Some("key_a_b")
    );
    assert_eq!(rule_name(rule(&rules, "d", &[("a", "b")])), Some("a_is_b"));
    assert!(find(&rules, "d", &[("a", "x")]).is_none());

    let only_pair =
        load_ok("domain: d\ndescriptors: [{key: a, value: b, rate_limit: {unit: second}}]");
    assert!(find(&only_pair, "d", &[("a_b", "x")]).is_none());
    assert!(find(&only_pair, "d", &[("a_b", "")]).is_none());
    let only_key = load_ok("domain: d\ndescriptors: [{key: a_b, rate_limit: {unit: second}}]");
    assert!(find(&only_key, "d", &[("a", "b")]).is_none());
}

// ---------------------------------------------------------------------------
// Statistics keys and their survival across reloads

const STATS_CONFIG: &str = r#"
domain: svc
descriptors:
  - key: tenant
    value: acme
    descriptors:
      - key: path
        rate_limit: {unit: second, requests_per_unit: 5}
  - key: tenant
    rate_limit: {unit: second, requests_per_unit: 50}
  - key: host
    value: "*.internal"
    rate_limit: {unit: second, requests_per_unit: 7}
"#;

#[test]
fn stats_keys_follow_the_reference_format() {
    let rules = load_ok(STATS_CONFIG);
    assert_eq!(
        &*rule(&rules, "svc", &[("tenant", "acme"), ("path", "/")]).stats_key,
        "svc.tenant_acme.path"
    );
    assert_eq!(
        &*rule(&rules, "svc", &[("tenant", "other")]).stats_key,
        "svc.tenant"
    );
    assert_eq!(
        &*rule(&rules, "svc", &[("host", "db.internal")]).stats_key,
        "svc.host_*.internal"
    );
    let mut keys: Vec<&str> = rules.rules().iter().map(|r| &*r.stats_key).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["svc.host_*.internal", "svc.tenant", "svc.tenant_acme.path"]
    );
}

fn stats_of(rules: &RuleSet, entries: &[(&str, &str)]) -> Arc<crate::core::stats::RuleStats> {
    rule(rules, "svc", entries).stats.clone()
}

#[test]
fn reload_through_the_same_registry_keeps_rule_stats() {
    let registry = StatsRegistry::default();
    let files = sources(&[("svc.yaml", STATS_CONFIG)]);
    let first = load_sources(&files, LoadOptions::default(), &registry).expect("first load");
    let second = load_sources(&files, LoadOptions::default(), &registry).expect("reload");
    for entries in [
        &[("tenant", "acme"), ("path", "/")][..],
        &[("tenant", "other")],
        &[("host", "a.internal")],
    ] {
        assert!(
            Arc::ptr_eq(&stats_of(&first, entries), &stats_of(&second, entries)),
            "{entries:?}"
        );
    }

    // A changed amount keeps the rule's identity, hence its counters.
    let raised = STATS_CONFIG.replace("requests_per_unit: 50", "requests_per_unit: 500");
    let third = load_sources(
        &sources(&[("svc.yaml", &raised)]),
        LoadOptions::default(),
        &registry,
    )
    .expect("raised limit");
    assert!(Arc::ptr_eq(
        &stats_of(&first, &[("tenant", "other")]),
        &stats_of(&third, &[("tenant", "other")])
    ));

    // A fresh registry starts fresh.
    let other =
        load_sources(&files, LoadOptions::default(), &StatsRegistry::default()).expect("load");
    assert!(!Arc::ptr_eq(
        &stats_of(&first, &[("tenant", "other")]),
        &stats_of(&other, &[("tenant", "other")])
    ));
}

#[test]
fn failed_reload_forgets_nothing_and_removed_rules_are_forgotten() {
    let registry = StatsRegistry::default();
    let files = sources(&[("svc.yaml", STATS_CONFIG)]);
    let first = load_sources(&files, LoadOptions::default(), &registry).expect("first load");
    let tenant = stats_of(&first, &[("tenant", "other")]);

    // A broken reload leaves the registry as it was.
    let broken = sources(&[(
        "svc.yaml",
        "domain: svc\ndescriptors: [{key: x, rate_limit: {unit: nope}}]",
    )]);
    assert!(load_sources(&broken, LoadOptions::default(), &registry).is_err());
    let again = load_sources(&files, LoadOptions::default(), &registry).expect("reload");
    assert!(Arc::ptr_eq(
        &tenant,
        &stats_of(&again, &[("tenant", "other")])
    ));

    // A reload without the rule drops its stats; bringing it back starts over.
    let without = sources(&[(
        "svc.yaml",
        "domain: svc\ndescriptors: [{key: other, rate_limit: {unit: second}}]",
    )]);
    load_sources(&without, LoadOptions::default(), &registry).expect("rule removed");
    let back = load_sources(&files, LoadOptions::default(), &registry).expect("rule back");
    assert!(!Arc::ptr_eq(
        &tenant,
        &stats_of(&back, &[("tenant", "other")])
    ));
}

// ---------------------------------------------------------------------------
// Files on disk

#[test]
fn load_reads_yaml_files_of_a_directory_in_name_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write =
        |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect("write");
    write(
        "b.yml",
        "domain: b\ndescriptors: [{key: k, rate_limit: {unit: second}}]\n",
    );
    write(
        "a.yaml",
        "domain: a\ndescriptors: [{key: k, rate_limit: {unit: second}}]\n",
    );
    write(".hidden.yaml", "not: [valid");
    write("notes.txt", "not: [valid");
    std::fs::create_dir(dir.path().join("sub.yaml")).expect("subdir");

    let files = config_files(dir.path()).expect("listing");
    let names: Vec<String> = files
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(names, ["a.yaml", "b.yml"]);

    let rules = load(
        dir.path(),
        LoadOptions::default(),
        &StatsRegistry::default(),
    )
    .expect("loads");
    assert!(rules.domain("a").is_some() && rules.domain("b").is_some());

    // A single file path is loaded on its own; errors name it.
    let single = dir.path().join("a.yaml");
    assert_eq!(
        config_files(&single).expect("file"),
        std::slice::from_ref(&single)
    );
    write("c.yaml", "domain: c\nbogus: 1\n");
    let errs = load(
        dir.path(),
        LoadOptions::default(),
        &StatsRegistry::default(),
    )
    .expect_err("c.yaml is bad")
    .errors;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].file.ends_with("c.yaml"), "{}", errs[0]);

    let missing = load(
        &dir.path().join("absent"),
        LoadOptions::default(),
        &StatsRegistry::default(),
    )
    .expect_err("missing path")
    .errors;
    assert_eq!(missing.len(), 1);
    assert!(missing[0].message.contains("cannot read"), "{}", missing[0]);
}

// ---------------------------------------------------------------------------
// Known differences from the reference loader (Go yaml.v2 keeps a plain
// scalar's text when the field is a string; serde_yaml_ng resolves it first).

// ---------------------------------------------------------------------------
// Robustness: nothing makes the loader panic.

const WORDS: &[&str] = &[
    "domain",
    "descriptors",
    "key",
    "value",
    "rate_limit",
    "rate_limits",
    "unit",
    "requests_per_unit",
    "unlimited",
    "name",
    "replaces",
    "algorithm",
    "burst",
    "shadow_mode",
    "quota_mode",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
    "bogus",
    "second",
    "MINUTE",
    "token_bucket",
    "sliding_window",
    "fixed_window",
    "*",
    "a*b",
    "",
    "d",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<u64>().prop_map(|n| Value::Number(n.into())),
        prop::sample::select(vec![0i64, 1, -1, 10, 4_294_967_295, 4_294_967_296])
            .prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_map(|f| Value::Number(f.into())),
        prop::sample::select(WORDS).prop_map(|s| Value::String(s.to_string())),
        "[a-z*_/. ]{0,8}".prop_map(Value::String),
    ]
}

fn word() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => prop::sample::select(WORDS).prop_map(|s| Value::String(s.to_string())),
        1 => scalar(),
    ]
}

/// Nested lists and mappings whose keys are mostly the real key names.
fn tree() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Sequence),
            prop::collection::vec((word(), inner), 0..6)
                .prop_map(|pairs| Value::Mapping(pairs.into_iter().collect())),
        ]
    })
}

fn mapping(pairs: impl IntoIterator<Item = (&'static str, Value)>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(Value::String(k.to_string()), v);
    }
    Value::Mapping(m)
}

/// Usually a value from `valid`, sometimes any scalar.
fn mostly(valid: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![24 => valid, 1 => scalar()].boxed()
}

fn str_of(words: &[&'static str]) -> impl Strategy<Value = Value> + 'static {
    prop::sample::select(words.to_vec()).prop_map(|s| Value::String(s.to_string()))
}

fn num_in(range: std::ops::Range<u64>) -> impl Strategy<Value = Value> {
    range.prop_map(|n| Value::Number(n.into()))
}

fn field(
    name: &'static str,
    p: f64,
    v: BoxedStrategy<Value>,
) -> BoxedStrategy<Option<(&'static str, Value)>> {
    prop::option::weighted(p, v.prop_map(move |v| (name, v))).boxed()
}

/// A `rate_limit` block: usually plausible fields, sometimes anything.
fn limit_block() -> impl Strategy<Value = Value> {
    let replaces = prop::collection::vec(
        prop::option::weighted(0.9, mostly(str_of(&["n1", "n2", "n3", ""])))
            .prop_map(|n| mapping(n.map(|n| ("name", n)))),
        0..3,
    )
    .prop_map(Value::Sequence)
    .boxed();
    (
        field(
            "unit",
            0.97,
            mostly(str_of(&["second", "MINUTE", "Hour", "day"])),
        ),
        field("requests_per_unit", 0.8, mostly(num_in(0..100))),
        field(
            "unlimited",
            0.05,
            mostly(any::<bool>().prop_map(Value::Bool)),
        ),
        field("name", 0.3, mostly(str_of(&["n1", "n2", "n3"]))),
        field(
            "algorithm",
            0.2,
            mostly(str_of(&["fixed_window", "sliding_window", "token_bucket"])),
        ),
        field("burst", 0.05, mostly(num_in(0..10))),
        field(
            "replaces",
            0.1,
            prop_oneof![9 => replaces, 1 => scalar()].boxed(),
        ),
        field("bogus", 0.02, scalar().boxed()),
    )
        .prop_map(|(a, b, c, d, e, f, g, h)| {
            mapping([a, b, c, d, e, f, g, h].into_iter().flatten())
        })
}

/// A descriptor node shaped like the real thing, with plausible contents
/// most of the time.
fn descriptor() -> impl Strategy<Value = Value> {
    let flag = (
        prop::sample::select(vec![
            "shadow_mode",
            "quota_mode",
            "detailed_metric",
            "value_to_metric",
            "shadow_mode",
            "quota_mode",
            "detailed_metric",
            "value_to_metric",
            "share_threshold",
        ]),
        mostly(any::<bool>().prop_map(Value::Bool)),
    );
    // Usually one of `rate_limit` and `rate_limits`, rarely both.
    let limits = prop_oneof![
        8 => Just(Vec::new()),
        8 => limit_block().prop_map(|l| vec![("rate_limit", l)]),
        4 => prop::collection::vec(limit_block(), 1..3)
            .prop_map(|l| vec![("rate_limits", Value::Sequence(l))]),
        1 => Just(vec![("rate_limits", Value::Sequence(Vec::new()))]),
        1 => (limit_block(), limit_block()).prop_map(|(a, b)| {
            vec![("rate_limit", a), ("rate_limits", Value::Sequence(vec![b]))]
        }),
    ];
    let base = (
        field("key", 0.97, mostly(str_of(&["a", "b", "c", "d", "e", "f"]))),
        field(
            "value",
            0.5,
            mostly(str_of(&["x", "y", "*", "x*", "*y", ""])),
        ),
        prop::collection::vec(flag, 0..2),
        limits,
        field("metadata", 0.05, tree().boxed()),
    )
        .prop_map(|(key, value, flags, limits, metadata)| {
            let mut fields: Vec<(&'static str, Value)> = flags;
            fields.extend(limits);
            fields.extend([key, value, metadata].into_iter().flatten());
            fields
        })
        .boxed();
    base.clone()
        .prop_map(mapping)
        .prop_recursive(3, 10, 3, move |inner| {
            (base.clone(), prop::collection::vec(inner, 0..4)).prop_map(|(mut fields, children)| {
                fields.push(("descriptors", Value::Sequence(children)));
                mapping(fields)
            })
        })
}

fn document() -> impl Strategy<Value = Value> {
    (
        prop::option::weighted(
            0.97,
            prop_oneof![4 => Just(Value::String("d".into())), 4 => Just(Value::String("e".into())), 1 => scalar()],
        ),
        prop::collection::vec(descriptor(), 0..4),
        prop::option::weighted(0.1, (word(), tree())),
    )
        .prop_map(|(domain, descriptors, extra)| {
            let mut m = Mapping::new();
            if let Some(d) = domain {
                m.insert(Value::String("domain".into()), d);
            }
            m.insert(Value::String("descriptors".into()), Value::Sequence(descriptors));
            if let Some((k, v)) = extra {
                m.insert(k, v);
            }
            Value::Mapping(m)
        })
}

/// Loads `texts` as files; errors must be attributed to those files.
fn load_never_panics(texts: Vec<String>, merge_domains: bool) -> Result<(), TestCaseError> {
    let files: Vec<(String, String)> = texts
        .into_iter()
        .enumerate()
        .map(|(i, t)| (format!("f{i}.yaml"), t))
        .collect();
    match load_sources(
        &files,
        LoadOptions { merge_domains },
        &StatsRegistry::default(),
    ) {
        Ok(rules) => {
            // Whatever loaded can be matched against.
            for d in rules.domains() {
                let _ = d.find(&[
                    Entry {
                        key: "key",
                        value: "d",
                    },
                    Entry {
                        key: "value",
                        value: "",
                    },
                ]);
            }
        }
        Err(e) => {
            prop_assert!(!e.errors.is_empty());
            for err in &e.errors {
                prop_assert!(files.iter().any(|(name, _)| *name == err.file), "{}", err);
                prop_assert!(!err.path.is_empty() && !err.message.is_empty(), "{}", err);
            }
        }
    }
    Ok(())
}

fn to_yaml(v: &Value) -> String {
    serde_yaml_ng::to_string(v).unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>(), yamlish in "[a-z_:\\-\\[\\]{}*'\" \n]{0,120}") {
        load_never_panics(vec![text, yamlish], false)?;
    }

    #[test]
    fn arbitrary_trees_never_panic(trees in prop::collection::vec(tree(), 1..3), merge in any::<bool>()) {
        load_never_panics(trees.iter().map(to_yaml).collect(), merge)?;
    }

    #[test]
    fn config_shaped_documents_never_panic(docs in prop::collection::vec(document(), 1..4), merge in any::<bool>()) {
        load_never_panics(docs.iter().map(to_yaml).collect(), merge)?;
    }
}

#[test]
fn api_key_rules_name_the_key_and_the_caller_entries() {
    let rules = load_ok(
        "
        domain: gw
        api_key: {descriptor_key: x-api-key, on_invalid: allow, caller_entry: remote_address}
        descriptors: []
        ",
    );
    assert!(rules.has_api_keys());
    let rule = rules.domain("gw").unwrap().api_key.clone().unwrap();
    assert_eq!(&*rule.descriptor_key, "x-api-key");
    assert_eq!(rule.on_invalid, crate::core::rules::OnInvalid::Allow);
    assert_eq!(rule.caller_entry.as_deref(), Some("remote_address"));
    let plain = load_ok("domain: plain\ndescriptors: []\n");
    assert!(!plain.has_api_keys());

    let e = only_error(
        "
        domain: gw
        api_key: {descriptor_key: x-api-key, caller_entry: ''}
        ",
    );
    assert_error(
        &e,
        "bad.yaml",
        &["api_key.caller_entry"],
        "must not be empty",
    );
    let e = only_error(
        "
        domain: gw
        api_key: {descriptor_key: x-api-key, caller: ip}
        ",
    );
    assert_error(&e, "bad.yaml", &["api_key"], "caller");
}
