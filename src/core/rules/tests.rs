//! Rule-tree construction and matching, on trees built by hand (the YAML
//! loader has its own tests in `config`).

use super::*;
use proptest::prelude::*;

/// A rule identified by `name`; the limits do not matter for matching.
fn rule(name: &str) -> Arc<Rule> {
    Arc::new(Rule {
        name: Some(name.into()),
        limits: RuleLimits::Unlimited,
        limit_names: Box::new([]),
        shadow_mode: false,
        quota_mode: false,
        detailed_metric: false,
        replaces: Box::new([]),
        stats_key: format!("test.{name}").into(),
        stats: Arc::default(),
    })
}

/// The node value the loader would build for `value` ("" means none).
fn value_of(value: &str) -> NodeValue {
    if value.is_empty() {
        NodeValue::Default
    } else if let Some(w) = Wildcard::new(value) {
        NodeValue::Wildcard(w)
    } else {
        NodeValue::Exact(value.into())
    }
}

/// A node with an optional rule (named after it) and children, inserted in
/// the order given.
fn node(key: &str, value: &str, rule_name: Option<&str>, children: Vec<Node>) -> Node {
    Node {
        key: key.into(),
        value: value_of(value),
        rule: rule_name.map(rule),
        children: level(children),
        share_threshold: false,
        value_to_metric: false,
    }
}

fn level(nodes: Vec<Node>) -> Level {
    let mut level = Level::default();
    for n in nodes {
        level.insert(n).expect("test trees have distinct siblings");
    }
    level
}

fn domain(name: &str, nodes: Vec<Node>) -> Domain {
    Domain {
        api_key: None,
        authz: None,
        name: name.into(),
        root: level(nodes),
    }
}

/// The name of the rule a request finds, if any.
fn hit(d: &Domain, entries: &[(&str, &str)]) -> Option<String> {
    let entries: Vec<Entry<'_>> = entries
        .iter()
        .map(|&(key, value)| Entry { key, value })
        .collect();
    d.find(&entries).map(|m| {
        m.rule
            .name
            .as_deref()
            .expect("test rules are named")
            .to_string()
    })
}

fn some(name: &str) -> Option<String> {
    Some(name.to_string())
}

#[test]
fn exact_then_wildcard_then_default_at_one_level() {
    let d = domain(
        "d",
        vec![
            node("k", "", Some("default"), vec![]),
            node("k", "abc", Some("exact"), vec![]),
            node("k", "ab*", Some("wild"), vec![]),
        ],
    );
    assert_eq!(hit(&d, &[("k", "abc")]), some("exact"));
    assert_eq!(hit(&d, &[("k", "abd")]), some("wild"));
    assert_eq!(hit(&d, &[("k", "ab")]), some("wild"));
    assert_eq!(hit(&d, &[("k", "zzz")]), some("default"));
    assert_eq!(hit(&d, &[("k", "")]), some("default"));
    // Another key, or the same key in another case, matches nothing.
    assert_eq!(hit(&d, &[("other", "abc")]), None);
    assert_eq!(hit(&d, &[("K", "abc")]), None);
}

#[test]
fn no_entries_match_nothing() {
    let d = domain("d", vec![node("k", "", Some("default"), vec![])]);
    assert_eq!(hit(&d, &[]), None);
    let empty = domain("d", vec![]);
    assert_eq!(hit(&empty, &[]), None);
    assert_eq!(hit(&empty, &[("k", "v")]), None);
}

#[test]
fn first_matching_wildcard_in_insertion_order_wins() {
    let specific_first = domain(
        "d",
        vec![
            node("path", "/api/*", Some("api"), vec![]),
            node("path", "/*", Some("root"), vec![]),
        ],
    );
    assert_eq!(hit(&specific_first, &[("path", "/api/users")]), some("api"));
    assert_eq!(hit(&specific_first, &[("path", "/static/x")]), some("root"));

    // Same patterns listed the other way round: the broad one shadows the other.
    let broad_first = domain(
        "d",
        vec![
            node("path", "/*", Some("root"), vec![]),
            node("path", "/api/*", Some("api"), vec![]),
        ],
    );
    assert_eq!(hit(&broad_first, &[("path", "/api/users")]), some("root"));
    assert_eq!(hit(&broad_first, &[("path", "/static/x")]), some("root"));
}

#[test]
fn wildcards_with_stars_anywhere() {
    let d = domain(
        "d",
        vec![
            node("path", "/api/*/users/*", Some("users"), vec![]),
            node("host", "*.example.com", Some("suffix"), vec![]),
            node("id", "a*b*c", Some("several"), vec![]),
            node("any", "*", Some("star"), vec![]),
        ],
    );
    assert_eq!(hit(&d, &[("path", "/api/v1/users/42")]), some("users"));
    assert_eq!(hit(&d, &[("path", "/api//users/")]), some("users"));
    assert_eq!(hit(&d, &[("path", "/api/v1/groups/42")]), None);
    assert_eq!(hit(&d, &[("host", "www.example.com")]), some("suffix"));
    assert_eq!(hit(&d, &[("host", "example.org")]), None);
    assert_eq!(hit(&d, &[("id", "aXbYc")]), some("several"));
    assert_eq!(hit(&d, &[("id", "abc")]), some("several"));
    assert_eq!(hit(&d, &[("id", "aXbY")]), None);
    assert_eq!(hit(&d, &[("any", "")]), some("star"));
    assert_eq!(hit(&d, &[("any", "whatever")]), some("star"));
}

#[test]
fn the_rule_of_the_last_matched_node_applies_and_only_that_one() {
    // a=1 (rule "a1") → b (rule "b") → c=3 (no rule) → d (rule "d")
    let d = domain(
        "d",
        vec![node(
            "a",
            "1",
            Some("a1"),
            vec![node(
                "b",
                "",
                Some("b"),
                vec![node("c", "3", None, vec![node("d", "", Some("d"), vec![])])],
            )],
        )],
    );
    // An intermediate node's rule applies only when the request stops there.
    assert_eq!(hit(&d, &[("a", "1")]), some("a1"));
    assert_eq!(hit(&d, &[("a", "1"), ("b", "x")]), some("b"));
    // Stopping on a node without a rule: nothing, not the parent's rule.
    assert_eq!(hit(&d, &[("a", "1"), ("b", "x"), ("c", "3")]), None);
    assert_eq!(
        hit(&d, &[("a", "1"), ("b", "x"), ("c", "3"), ("d", "y")]),
        some("d")
    );
    // Deeper than the tree: nothing, not the deepest rule met.
    assert_eq!(
        hit(
            &d,
            &[("a", "1"), ("b", "x"), ("c", "3"), ("d", "y"), ("e", "z")]
        ),
        None
    );
    // A level that does not match: nothing, not the rule above it.
    assert_eq!(hit(&d, &[("a", "1"), ("zz", "x")]), None);
    assert_eq!(hit(&d, &[("a", "1"), ("b", "x"), ("c", "4")]), None);
    // Entries in another order do not match.
    assert_eq!(hit(&d, &[("b", "x"), ("a", "1")]), None);
}

#[test]
fn leaf_with_a_rule_does_not_match_longer_requests() {
    let d = domain("d", vec![node("k", "v", Some("leaf"), vec![])]);
    assert_eq!(hit(&d, &[("k", "v")]), some("leaf"));
    assert_eq!(hit(&d, &[("k", "v"), ("k", "v")]), None);
}

#[test]
fn allow_list_node_without_rule_or_children_matches_nothing() {
    let d = domain(
        "d",
        vec![
            node("client", "trusted", None, vec![]),
            node("client", "", Some("everyone"), vec![]),
        ],
    );
    // The exact node is chosen (and has no rule); the default is not used.
    assert_eq!(hit(&d, &[("client", "trusted")]), None);
    assert_eq!(hit(&d, &[("client", "other")]), some("everyone"));
}

#[test]
fn no_backtracking_from_exact_to_default() {
    let d = domain(
        "d",
        vec![
            node("k", "v", None, vec![node("x", "1", Some("v.x1"), vec![])]),
            node(
                "k",
                "",
                None,
                vec![node("y", "", Some("default.y"), vec![])],
            ),
        ],
    );
    assert_eq!(hit(&d, &[("k", "v"), ("x", "1")]), some("v.x1"));
    assert_eq!(hit(&d, &[("k", "other"), ("y", "2")]), some("default.y"));
    // k=v picks the exact node; its subtree has no `y`, and the default
    // node's subtree (which does) is not tried.
    assert_eq!(hit(&d, &[("k", "v"), ("y", "2")]), None);
    assert_eq!(hit(&d, &[("k", "v"), ("x", "2")]), None);
}

#[test]
fn no_backtracking_from_exact_to_wildcard_or_between_wildcards() {
    let d = domain(
        "d",
        vec![
            node("k", "ab", None, vec![node("x", "", Some("ab.x"), vec![])]),
            node("k", "a*", None, vec![node("y", "", Some("a*.y"), vec![])]),
            node("k", "*", None, vec![node("z", "", Some("*.z"), vec![])]),
        ],
    );
    assert_eq!(hit(&d, &[("k", "ab"), ("x", "1")]), some("ab.x"));
    assert_eq!(hit(&d, &[("k", "ab"), ("y", "1")]), None);
    assert_eq!(hit(&d, &[("k", "ac"), ("y", "1")]), some("a*.y"));
    // `a*` is the first wildcard that matches "ac"; `*` is not tried.
    assert_eq!(hit(&d, &[("k", "ac"), ("z", "1")]), None);
    assert_eq!(hit(&d, &[("k", "bc"), ("z", "1")]), some("*.z"));
}

#[test]
fn keys_and_values_do_not_run_together() {
    let d = domain(
        "d",
        vec![
            node("a_b", "", Some("key a_b"), vec![]),
            node("a", "b", Some("a=b"), vec![]),
            node("a", "b_c", Some("a=b_c"), vec![]),
            node("a_b", "c", Some("a_b=c"), vec![]),
        ],
    );
    assert_eq!(hit(&d, &[("a_b", "x")]), some("key a_b"));
    assert_eq!(hit(&d, &[("a_b", "")]), some("key a_b"));
    assert_eq!(hit(&d, &[("a_b", "c")]), some("a_b=c"));
    assert_eq!(hit(&d, &[("a", "b")]), some("a=b"));
    assert_eq!(hit(&d, &[("a", "b_c")]), some("a=b_c"));
    assert_eq!(hit(&d, &[("a", "x")]), None);
    assert_eq!(hit(&d, &[("a", "")]), None);

    // With only `key: a, value: b`, a request for key `a_b` finds nothing...
    let only_ab = domain("d", vec![node("a", "b", Some("a=b"), vec![])]);
    assert_eq!(hit(&only_ab, &[("a_b", "x")]), None);
    assert_eq!(hit(&only_ab, &[("a_b", "")]), None);
    // ...and with only `key: a_b`, a request a=b finds nothing.
    let only_a_b = domain("d", vec![node("a_b", "", Some("key a_b"), vec![])]);
    assert_eq!(hit(&only_a_b, &[("a", "b")]), None);
}

#[test]
fn match_reports_the_path_and_how_each_node_matched() {
    let d = domain(
        "d",
        vec![node(
            "k",
            "v*",
            None,
            vec![node(
                "e",
                "1",
                None,
                vec![node("f", "", Some("leaf"), vec![])],
            )],
        )],
    );
    let entries = [
        Entry {
            key: "k",
            value: "vx",
        },
        Entry {
            key: "e",
            value: "1",
        },
        Entry {
            key: "f",
            value: "q",
        },
    ];
    let m = d.find(&entries).expect("matches");
    assert_eq!(m.rule.name.as_deref(), Some("leaf"));
    let labels: Vec<String> = m.path.iter().map(|n| n.label()).collect();
    assert_eq!(labels, ["k_v*", "e_1", "f"]);
    assert_eq!(m.via_wildcard.as_slice(), [true, false, false]);
}

#[test]
fn labels_join_key_and_value() {
    assert_eq!(node("k", "", None, vec![]).label(), "k");
    assert_eq!(node("k", "v", None, vec![]).label(), "k_v");
    assert_eq!(node("k", "v*", None, vec![]).label(), "k_v*");
}

#[test]
fn insert_rejects_duplicate_siblings() {
    let mut l = Level::default();
    l.insert(node("k", "", None, vec![]))
        .expect("first default");
    l.insert(node("k", "v", None, vec![])).expect("first exact");
    l.insert(node("k", "v*", None, vec![]))
        .expect("first wildcard");
    l.insert(node("k", "*v", None, vec![]))
        .expect("another wildcard");
    l.insert(node("other", "", None, vec![]))
        .expect("another key");

    let e = l
        .insert(node("k", "", Some("r"), vec![]))
        .expect_err("second default");
    assert_eq!(e.key, "k");
    assert!(e.to_string().contains("no value"), "{e}");

    let e = l
        .insert(node("k", "v", None, vec![]))
        .expect_err("second exact");
    assert!(e.to_string().contains("'v'"), "{e}");
    assert!(e.to_string().contains("'k'"), "{e}");

    let e = l
        .insert(node("k", "v*", None, vec![]))
        .expect_err("same wildcard");
    assert!(e.to_string().contains("'v*'"), "{e}");

    assert_eq!(l.nodes().count(), 5);
}

#[test]
fn absorb_moves_new_nodes_and_reports_every_duplicate() {
    let mut a = level(vec![
        node("k", "1", Some("a.k1"), vec![]),
        node("w", "x*", Some("a.wx"), vec![]),
    ]);
    let b = level(vec![
        node("k", "2", Some("b.k2"), vec![]),
        node("w", "y*", Some("b.wy"), vec![]),
        node("j", "", Some("b.j"), vec![]),
    ]);
    a.absorb(b).expect("disjoint levels merge");
    let d = Domain {
        api_key: None,
        authz: None,
        name: "d".into(),
        root: a,
    };
    assert_eq!(hit(&d, &[("k", "1")]), some("a.k1"));
    assert_eq!(hit(&d, &[("k", "2")]), some("b.k2"));
    assert_eq!(hit(&d, &[("w", "xx")]), some("a.wx"));
    assert_eq!(hit(&d, &[("w", "yy")]), some("b.wy"));
    assert_eq!(hit(&d, &[("j", "q")]), some("b.j"));

    let mut a = level(vec![
        node("k", "1", None, vec![]),
        node("k", "", None, vec![]),
        node("w", "x*", None, vec![]),
    ]);
    let b = level(vec![
        node("k", "1", None, vec![]),
        node("k", "", None, vec![]),
        node("w", "x*", None, vec![]),
        node("k", "new", None, vec![]),
    ]);
    let errs = a.absorb(b).expect_err("three duplicates");
    assert_eq!(errs.len(), 3, "{errs:?}");
    // The one new node was still moved.
    assert_eq!(a.nodes().count(), 4);
}

#[test]
fn rule_set_finds_domains_and_lists_every_rule() {
    let one = domain(
        "one",
        vec![
            node(
                "a",
                "",
                Some("one.a"),
                vec![node("b", "", Some("one.a.b"), vec![])],
            ),
            node(
                "c",
                "1",
                None,
                vec![node("d", "*", Some("one.c1.d"), vec![])],
            ),
            node("allow", "x", None, vec![]),
        ],
    );
    let two = domain("two", vec![node("a", "", Some("two.a"), vec![])]);
    let set = RuleSet::new([one, two]);

    assert!(set.domain("one").is_some());
    assert!(set.domain("two").is_some());
    assert!(set.domain("three").is_none());
    assert_eq!(set.domains().count(), 2);

    let mut names: Vec<&str> = set
        .rules()
        .iter()
        .map(|r| r.name.as_deref().expect("named"))
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["one.a", "one.a.b", "one.c1.d", "two.a"]);

    let two = set.domain("two").expect("domain two");
    assert_eq!(hit(two, &[("a", "x")]), some("two.a"));
    assert!(RuleSet::default().rules().is_empty());
}

// ---------------------------------------------------------------------------
// Property: `find` agrees with a direct reading of the matching rules over a
// list of nodes kept in insertion order.

#[derive(Clone, Debug)]
struct Spec {
    key: &'static str,
    value: &'static str,
    has_rule: bool,
    children: Vec<Spec>,
}

fn spec_strategy() -> impl Strategy<Value = Vec<Spec>> {
    let leaf = (
        prop::sample::select(vec!["a", "b"]),
        prop::sample::select(vec!["", "x", "y", "xy", "x*", "*y", "*", "*x*"]),
        any::<bool>(),
    )
        .prop_map(|(key, value, has_rule)| Spec {
            key,
            value,
            has_rule,
            children: Vec::new(),
        });
    leaf.prop_recursive(3, 40, 5, |inner| {
        (
            prop::sample::select(vec!["a", "b"]),
            prop::sample::select(vec!["", "x", "y", "xy", "x*", "*y", "*", "*x*"]),
            any::<bool>(),
            prop::collection::vec(inner, 0..5),
        )
            .prop_map(|(key, value, has_rule, children)| Spec {
                key,
                value,
                has_rule,
                children,
            })
    })
    .prop_map(|s| s.children)
}

/// Drops later siblings with the same key and value, as `insert` would
/// refuse them, and names each rule after its position.
fn dedup(specs: Vec<Spec>) -> Vec<Spec> {
    let mut out: Vec<Spec> = Vec::new();
    for mut s in specs {
        if out.iter().any(|o| o.key == s.key && o.value == s.value) {
            continue;
        }
        s.children = dedup(s.children);
        out.push(s);
    }
    out
}

fn build(specs: &[Spec], prefix: &str) -> Vec<Node> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let id = format!("{prefix}/{i}");
            let rule_name = s.has_rule.then_some(id.as_str());
            node(s.key, s.value, rule_name, build(&s.children, &id))
        })
        .collect()
}

/// The documented rules, read literally.
fn model(specs: &[Spec], entries: &[(&str, &str)], prefix: &str) -> Option<String> {
    let ((key, value), rest) = entries.split_first()?;
    let same_key = || specs.iter().enumerate().filter(|(_, s)| s.key == *key);
    let found = same_key()
        .find(|(_, s)| !s.value.is_empty() && !s.value.contains('*') && s.value == *value)
        .or_else(|| {
            same_key().find(|(_, s)| Wildcard::new(s.value).is_some_and(|w| w.matches(value)))
        })
        .or_else(|| same_key().find(|(_, s)| s.value.is_empty()));
    let (i, s) = found?;
    let id = format!("{prefix}/{i}");
    if rest.is_empty() {
        s.has_rule.then_some(id)
    } else {
        model(&s.children, rest, &id)
    }
}

proptest! {
    #[test]
    fn find_agrees_with_the_model(
        specs in spec_strategy(),
        requests in prop::collection::vec(
            prop::collection::vec(
                (
                    prop::sample::select(vec!["a", "b", "c"]),
                    prop::sample::select(vec!["", "x", "y", "xy", "yx", "xyz", "z"]),
                ),
                0..5,
            ),
            1..20,
        ),
    ) {
        let specs = dedup(specs);
        let d = domain("d", build(&specs, ""));
        for request in &requests {
            prop_assert_eq!(hit(&d, request), model(&specs, request, ""), "request {:?}", request);
        }
    }
}
