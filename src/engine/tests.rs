//! The engine end to end over the memory store and rules loaded from YAML:
//! matching outcomes, hits, charging, replaces, shadow and quota modes,
//! overrides, validation, several limits, sharing, headers and statistics.

use proptest::prelude::*;

use super::*;
use crate::config::{LoadOptions, load_sources};
use crate::core::clock::ManualClock;
use crate::core::rules::Entry;
use crate::core::stats::{StatsRegistry, StatsSnapshot};
use crate::core::unit::Unit;
use crate::engine::request::LimitOverride;
use crate::store::MemoryStore;
use crate::store::memory::DEFAULT_MAX_COUNTERS;

const SEC: u64 = 1_000_000_000;
/// 22:10:05.5 UTC: half a second left of the second, 54.5 s of the minute.
const T0: u64 = 1_699_999_805 * SEC + SEC / 2;

const RULES: &str = r#"
domain: t
descriptors:
  - key: fixed
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: seven
    rate_limit: {unit: minute, requests_per_unit: 7}
  - key: zero
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: free
    rate_limit: {unlimited: true}
  - key: route
    value: checkout
    descriptors:
      - key: user
        rate_limit: {unit: hour, requests_per_unit: 20}
  - key: user
    rate_limit: {name: per_user, unit: minute, requests_per_unit: 5}
  - key: plan
    value: premium
    rate_limit:
      unit: minute
      requests_per_unit: 100
      replaces: [{name: per_user}]
  - key: vip
    rate_limit:
      unlimited: true
      replaces: [{name: per_user}]
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: quota_a
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: quota_b
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: multi
    rate_limits:
      - {name: burst, unit: second, requests_per_unit: 10}
      - {name: sustained, unit: minute, requests_per_unit: 15}
  - key: sliding
    rate_limit: {unit: minute, requests_per_unit: 3, algorithm: sliding_window}
  - key: bucket
    rate_limit: {unit: minute, requests_per_unit: 3, algorithm: token_bucket}
  - key: dry_bucket
    rate_limit: {unit: second, requests_per_unit: 0, algorithm: token_bucket, burst: 5}
  - key: shared
    value: "team-*"
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: separate
    value: "team-*"
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: detail
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 3}
"#;

fn settings() -> Settings {
    Settings {
        max_metric_keys: 100,
        ..Settings::default()
    }
}

fn load(sources: &[(&str, &str)]) -> RuleSet {
    let sources: Vec<(String, String)> = sources
        .iter()
        .map(|&(f, t)| (f.to_string(), t.to_string()))
        .collect();
    load_sources(&sources, LoadOptions::default(), &StatsRegistry::default())
        .expect("test configuration loads")
}

fn engine_with(
    sources: &[(&str, &str)],
    settings: Settings,
) -> (Arc<ManualClock>, Engine<MemoryStore>) {
    let clock = Arc::new(ManualClock::new(T0));
    let store = MemoryStore::new(clock.clone(), DEFAULT_MAX_COUNTERS);
    (clock, Engine::new(store, load(sources), settings))
}

fn engine(settings: Settings) -> (Arc<ManualClock>, Engine<MemoryStore>) {
    engine_with(&[("t.yaml", RULES)], settings)
}

fn desc<'a>(entries: &[(&'a str, &'a str)]) -> Descriptor<'a> {
    Descriptor {
        entries: entries
            .iter()
            .map(|&(key, value)| Entry { key, value })
            .collect(),
        ..Descriptor::default()
    }
}

fn one<'a>(key: &'a str, value: &'a str) -> Descriptor<'a> {
    desc(&[(key, value)])
}

fn request<'a>(domain: &'a str, descriptors: Vec<Descriptor<'a>>) -> Request<'a> {
    Request {
        domain,
        descriptors: descriptors.into_iter().collect(),
        hits_addend: 0,
        header_mode: None,
    }
}

async fn decide(engine: &Engine<MemoryStore>, req: &Request<'_>) -> Decision {
    engine
        .decide(req)
        .await
        .expect("a valid request is decided")
}

/// Decides a request with one descriptor in domain `t`.
async fn single(engine: &Engine<MemoryStore>, d: Descriptor<'_>) -> DescriptorStatus {
    let d = decide(engine, &request("t", vec![d])).await;
    assert_eq!(d.statuses.len(), 1);
    d.statuses.into_iter().next().expect("one status")
}

fn limit(rpu: u32, unit: Unit, name: Option<&str>) -> Option<CurrentLimit> {
    Some(CurrentLimit {
        requests_per_unit: rpu,
        unit,
        window_seconds: unit.seconds(),
        name: name.map(Arc::from),
    })
}

fn stats_of(engine: &Engine<MemoryStore>, stats_key: &str) -> StatsSnapshot {
    let rules = engine.rules();
    let rule = rules
        .rules()
        .into_iter()
        .find(|r| &*r.stats_key == stats_key)
        .unwrap_or_else(|| panic!("no rule with stats key {stats_key}"));
    rule.stats.snapshot()
}

fn invalid(result: Result<Decision, DecideError>) -> InvalidRequest {
    match result {
        Err(DecideError::Invalid(e)) => e,
        other => panic!("expected an invalid request, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// What applies

#[tokio::test]
async fn unknown_domain_answers_ok_without_limits() {
    let (_, e) = engine(settings());
    let mut overridden = one("fixed", "x");
    overridden.limit_override = Some(LimitOverride {
        requests_per_unit: 0,
        unit: Some(Unit::Second),
    });
    let d = decide(
        &e,
        &request(
            "nope",
            vec![one("fixed", "x"), overridden, one("zero", "z")],
        ),
    )
    .await;
    assert_eq!(d.overall, Code::Ok);
    assert_eq!(d.statuses, vec![DescriptorStatus::no_limit(); 3]);
    assert!(d.response_headers.is_empty());
    assert_eq!(e.store().store_stats().live_counters, 0);
}

#[tokio::test]
async fn no_matching_rule_answers_ok_with_an_empty_status() {
    let (_, e) = engine(settings());
    for d in [
        one("nothing", "x"),
        // The rule is one level deeper.
        one("route", "checkout"),
        desc(&[("route", "other"), ("user", "u")]),
        // Deeper than the tree.
        desc(&[("fixed", "x"), ("more", "y")]),
    ] {
        let s = single(&e, d).await;
        assert_eq!(s.code, Code::Ok);
        assert_eq!(s.current_limit, None);
        assert_eq!(s.limit_remaining, 0);
        assert_eq!(s.duration_until_reset, None);
    }
    let s = single(&e, desc(&[("route", "checkout"), ("user", "u")])).await;
    assert_eq!(s.current_limit, limit(20, Unit::Hour, None));
    assert_eq!(s.limit_remaining, 19);
}

#[tokio::test]
async fn unlimited_answers_max_remaining_and_counts_nothing() {
    let (_, e) = engine(settings());
    for _ in 0..5 {
        let s = single(&e, one("free", "x")).await;
        assert_eq!(s, DescriptorStatus::unlimited());
        assert_eq!(s.limit_remaining, u32::MAX);
    }
    assert_eq!(e.store().store_stats().live_counters, 0);
}

// ---------------------------------------------------------------------------
// Hits

#[tokio::test]
async fn hits_addend_defaults_to_one_and_descriptors_may_override_it() {
    let (_, e) = engine(settings());
    // Unset (0) means 1.
    let s = single(&e, one("fixed", "h")).await;
    assert_eq!(s.limit_remaining, 9);

    // The request's 5.
    let mut r = request("t", vec![one("fixed", "h")]);
    r.hits_addend = 5;
    assert_eq!(decide(&e, &r).await.statuses[0].limit_remaining, 4);

    // A descriptor's Some(0) wins over the request's 5: checked, not charged.
    let mut d = one("fixed", "h");
    d.hits_addend = Some(0);
    let mut r = request("t", vec![d]);
    r.hits_addend = 5;
    for _ in 0..3 {
        let s = decide(&e, &r).await.statuses.remove(0);
        assert_eq!(s.code, Code::Ok);
        assert_eq!(s.limit_remaining, 4);
    }

    // Some(3) wins too.
    let mut d = one("fixed", "h");
    d.hits_addend = Some(3);
    let mut r = request("t", vec![d, one("fixed", "other")]);
    r.hits_addend = 5;
    let statuses = decide(&e, &r).await.statuses;
    assert_eq!(statuses[0].limit_remaining, 1);
    // The other descriptor takes the request's 5.
    assert_eq!(statuses[1].limit_remaining, 5);

    // 1 left: one more fits, then over.
    assert_eq!(single(&e, one("fixed", "h")).await.limit_remaining, 0);
    assert_eq!(single(&e, one("fixed", "h")).await.code, Code::OverLimit);
}

#[tokio::test]
async fn a_limit_of_zero_blocks_every_request() {
    let (clock, e) = engine(settings());
    for _ in 0..5 {
        let d = decide(&e, &request("t", vec![one("zero", "z")])).await;
        assert_eq!(d.overall, Code::OverLimit);
        assert_eq!(d.statuses[0].code, Code::OverLimit);
        assert_eq!(d.statuses[0].current_limit, limit(0, Unit::Second, None));
        assert_eq!(d.statuses[0].limit_remaining, 0);
        clock.advance(SEC);
    }
}

#[tokio::test]
async fn a_single_fixed_window_counts_hits_even_over_the_limit() {
    let (clock, e) = engine(settings());
    for i in 0..10u32 {
        let s = single(&e, one("fixed", "f")).await;
        assert_eq!(s.code, Code::Ok);
        assert_eq!(s.limit_remaining, 9 - i);
        assert_eq!(s.current_limit, limit(10, Unit::Minute, None));
        assert_eq!(s.duration_until_reset, Some(55));
    }
    let s = single(&e, one("fixed", "f")).await;
    assert_eq!(s.code, Code::OverLimit);
    assert_eq!(s.limit_remaining, 0);
    // 11 are counted, so a check without hits is over the limit too.
    let mut check = one("fixed", "f");
    check.hits_addend = Some(0);
    assert_eq!(single(&e, check.clone()).await.code, Code::OverLimit);
    // A new window starts over.
    clock.advance(55 * SEC);
    assert_eq!(single(&e, check).await.code, Code::Ok);
    let s = single(&e, one("fixed", "f")).await;
    assert_eq!((s.code, s.limit_remaining), (Code::Ok, 9));
}

#[tokio::test]
async fn duration_until_reset_stays_within_the_window() {
    let (clock, e) = engine(settings());
    let mut offset = 0u64;
    for step in 0..200u64 {
        // Steps of irregular length, crossing many minute boundaries.
        let dt = (step * 7_919 + 13) % 5_000 * SEC / 1_000 + step % 3;
        clock.advance(dt);
        offset += dt;
        let s = single(&e, one("fixed", "reset")).await;
        let left = s.duration_until_reset.expect("a limit applied");
        assert!((1..=60).contains(&left), "{left}s left at +{offset}ns");
        let now = T0 + offset;
        let exact = (60 * SEC - now % (60 * SEC)).div_ceil(SEC);
        assert_eq!(left, exact.max(1));
    }
}

// ---------------------------------------------------------------------------
// Replaces, shadow mode, quota mode

#[tokio::test]
async fn replaced_limits_are_neither_reported_nor_counted() {
    let (_, e) = engine(settings());
    let premium = one("plan", "premium");
    for descriptors in [
        vec![one("user", "alice"), premium.clone()],
        vec![premium.clone(), one("user", "alice")],
    ] {
        let user_first = descriptors[0].entries[0].key == "user";
        let d = decide(&e, &request("t", descriptors)).await;
        let (user, plan) = if user_first {
            (&d.statuses[0], &d.statuses[1])
        } else {
            (&d.statuses[1], &d.statuses[0])
        };
        assert_eq!(*user, DescriptorStatus::no_limit());
        assert_eq!(plan.current_limit, limit(100, Unit::Minute, None));
    }
    // alice's own limit was never charged.
    let s = single(&e, one("user", "alice")).await;
    assert_eq!(s.current_limit, limit(5, Unit::Minute, Some("per_user")));
    assert_eq!(s.limit_remaining, 4);
}

#[tokio::test]
async fn an_unlimited_rule_replaces_too() {
    // As in the reference, `replaces` of a matched unlimited limit removes
    // the named limit; the unlimited one stays unlimited.
    let (_, e) = engine(settings());
    for descriptors in [
        vec![one("user", "bob"), one("vip", "yes")],
        vec![one("vip", "yes"), one("user", "bob")],
    ] {
        let user_first = descriptors[0].entries[0].key == "user";
        let d = decide(&e, &request("t", descriptors)).await;
        let (user, vip) = if user_first {
            (&d.statuses[0], &d.statuses[1])
        } else {
            (&d.statuses[1], &d.statuses[0])
        };
        assert_eq!(*user, DescriptorStatus::no_limit());
        assert_eq!(*vip, DescriptorStatus::unlimited());
    }
    assert_eq!(single(&e, one("user", "bob")).await.limit_remaining, 4);
}

#[tokio::test]
async fn shadow_mode_answers_ok_but_counts() {
    let (_, e) = engine(settings());
    for _ in 0..2 {
        assert_eq!(single(&e, one("shadow", "s")).await.code, Code::Ok);
    }
    let d = decide(&e, &request("t", vec![one("shadow", "s")])).await;
    assert_eq!(d.overall, Code::Ok);
    assert_eq!(d.statuses[0].code, Code::Ok);
    assert_eq!(d.statuses[0].current_limit, limit(2, Unit::Minute, None));
    assert_eq!(d.statuses[0].limit_remaining, 0);
    let snap = stats_of(&e, "t.shadow");
    assert_eq!(snap.total_hits, 3);
    assert_eq!(snap.over_limit, 1);
    assert_eq!(snap.shadow_mode, 1);
    assert_eq!(snap.within_limit, 2);
}

#[tokio::test]
async fn global_shadow_mode_answers_ok_overall_only() {
    let (_, e) = engine(Settings {
        global_shadow_mode: true,
        ..settings()
    });
    let d = decide(&e, &request("t", vec![one("zero", "z"), one("fixed", "g")])).await;
    assert_eq!(d.overall, Code::Ok);
    assert_eq!(d.statuses[0].code, Code::OverLimit);
    assert_eq!(d.statuses[1].code, Code::Ok);
}

#[tokio::test]
async fn quota_mode_is_over_only_when_every_quota_descriptor_is() {
    let (_, e) = engine(settings());
    let both = |v: &'static str| request("t", vec![one("quota_a", v), one("quota_b", v)]);
    // Fresh: both pass.
    let d = decide(&e, &both("1")).await;
    assert_eq!(d.overall, Code::Ok);
    // Both spent: over.
    let d = decide(&e, &both("1")).await;
    assert_eq!(d.overall, Code::OverLimit);
    assert_eq!(d.statuses[0].code, Code::OverLimit);
    assert_eq!(d.statuses[1].code, Code::OverLimit);

    // Only one quota descriptor over: OK overall, its status still over.
    decide(&e, &request("t", vec![one("quota_a", "2")])).await;
    let d = decide(&e, &both("2")).await;
    assert_eq!(d.overall, Code::Ok);
    assert_eq!(d.statuses[0].code, Code::OverLimit);
    assert_eq!(d.statuses[1].code, Code::Ok);

    // A lone quota descriptor that is over is every quota descriptor.
    let d = decide(&e, &request("t", vec![one("quota_a", "2")])).await;
    assert_eq!(d.overall, Code::OverLimit);

    // A non-quota descriptor over the limit makes it over whatever quota says.
    let d = decide(
        &e,
        &request("t", vec![one("quota_a", "3"), one("zero", "z")]),
    )
    .await;
    assert_eq!(d.statuses[0].code, Code::Ok);
    assert_eq!(d.overall, Code::OverLimit);
}

// ---------------------------------------------------------------------------
// Request-supplied limits

fn with_override(mut d: Descriptor<'_>, rpu: u32, unit: Option<Unit>) -> Descriptor<'_> {
    d.limit_override = Some(LimitOverride {
        requests_per_unit: rpu,
        unit,
    });
    d
}

#[tokio::test]
async fn an_override_bypasses_matching_in_a_known_domain() {
    let (_, e) = engine(settings());
    // No rule for these entries at all.
    for i in 0..3 {
        let s = single(
            &e,
            with_override(one("nothing", "x"), 2, Some(Unit::Second)),
        )
        .await;
        assert_eq!(s.current_limit, limit(2, Unit::Second, None));
        assert_eq!(s.code, if i < 2 { Code::Ok } else { Code::OverLimit });
        assert_eq!(s.duration_until_reset, Some(1));
    }
    // Entries that match a rule: the override's limit applies instead, with
    // a counter of its own.
    let s = single(&e, with_override(one("fixed", "o"), 2, Some(Unit::Second))).await;
    assert_eq!(s.current_limit, limit(2, Unit::Second, None));
    assert_eq!(s.limit_remaining, 1);
    assert_eq!(single(&e, one("fixed", "o")).await.limit_remaining, 9);
    // Another unit is another counter.
    let s = single(
        &e,
        with_override(one("nothing", "x"), 2, Some(Unit::Minute)),
    )
    .await;
    assert_eq!(s.code, Code::Ok);
}

#[tokio::test]
async fn an_override_without_a_unit_is_invalid() {
    let (_, e) = engine(settings());
    let err = invalid(
        e.decide(&request(
            "t",
            vec![with_override(one("fixed", "x"), 5, None)],
        ))
        .await,
    );
    assert_eq!(err.field, "descriptors[0].limit.unit");
    assert!(err.to_string().contains("descriptors[0].limit.unit"));
    let err = invalid(
        e.decide(&request(
            "nope",
            vec![one("a", "b"), with_override(one("fixed", "x"), 5, None)],
        ))
        .await,
    );
    assert_eq!(err.field, "descriptors[1].limit.unit");
}

// ---------------------------------------------------------------------------
// Validation

#[tokio::test]
async fn invalid_requests_name_the_field_and_the_bound() {
    let (_, e) = engine_with(
        &[("t.yaml", RULES)],
        Settings {
            request_limits: RequestLimits {
                max_descriptors: 2,
                max_entries: 3,
                max_value_bytes: 8,
                max_hits_addend: 100,
            },
            ..settings()
        },
    );
    let err = invalid(e.decide(&request("", vec![one("a", "b")])).await);
    assert_eq!(err.field, "domain");
    let err = invalid(e.decide(&request("t", vec![])).await);
    assert_eq!(err.field, "descriptors");
    let err = invalid(
        e.decide(&request("t", vec![one("a", "b"), desc(&[])]))
            .await,
    );
    assert_eq!(err.field, "descriptors[1].entries");
    let err = invalid(
        e.decide(&request("t", vec![desc(&[("a", "b"), ("", "c")])]))
            .await,
    );
    assert_eq!(err.field, "descriptors[0].entries[1].key");

    let err = invalid(
        e.decide(&request(
            "t",
            vec![one("a", "b"), one("a", "b"), one("a", "b")],
        ))
        .await,
    );
    assert_eq!(err.field, "descriptors");
    assert!(
        err.problem.contains('3') && err.problem.contains("limit of 2"),
        "{err}"
    );

    let err = invalid(
        e.decide(&request(
            "t",
            vec![desc(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")])],
        ))
        .await,
    );
    assert_eq!(err.field, "descriptors[0].entries");
    assert!(
        err.problem.contains("4 entries") && err.problem.contains("limit of 3"),
        "{err}"
    );

    let err = invalid(e.decide(&request("t", vec![one("a", "123456789")])).await);
    assert_eq!(err.field, "descriptors[0].entries[0].value");
    assert!(
        err.problem.contains("9 bytes") && err.problem.contains("limit of 8"),
        "{err}"
    );
    let err = invalid(e.decide(&request("t", vec![one("abcdefghij", "")])).await);
    assert_eq!(err.field, "descriptors[0].entries[0].key");
    assert!(err.problem.contains("limit of 8"), "{err}");
    let err = invalid(e.decide(&request("ninebytes", vec![one("a", "")])).await);
    assert_eq!(err.field, "domain");
    assert!(err.problem.contains("limit of 8"), "{err}");

    let mut r = request("t", vec![one("a", "b")]);
    r.hits_addend = 101;
    let err = invalid(e.decide(&r).await);
    assert_eq!(err.field, "hits_addend");
    assert!(
        err.problem.contains("101") && err.problem.contains("limit of 100 (--max-hits-addend)"),
        "{err}"
    );
    let mut d = one("a", "b");
    d.hits_addend = Some(101);
    let err = invalid(e.decide(&request("t", vec![one("a", "b"), d])).await);
    assert_eq!(err.field, "descriptors[1].hits_addend");
    assert!(err.problem.contains("limit of 100"), "{err}");

    // At the bounds: fine.
    let ok = e
        .decide(&request(
            "t",
            vec![
                desc(&[("a", "12345678"), ("b", ""), ("c", "")]),
                one("d", ""),
            ],
        ))
        .await;
    assert!(ok.is_ok());
    // Nothing was counted for the refused requests.
    assert_eq!(e.store().store_stats().live_counters, 0);
    let mut r = request("t", vec![one("x", "y")]);
    r.hits_addend = 100;
    assert!(e.decide(&r).await.is_ok());
    let mut d = one("x", "z");
    d.hits_addend = Some(100);
    assert!(e.decide(&request("t", vec![d])).await.is_ok());
}

// ---------------------------------------------------------------------------
// Several limits and the other algorithms

#[tokio::test]
async fn several_limits_are_all_or_nothing_and_report_the_tightest() {
    let (clock, e) = engine(settings());
    // Second 1: the per-second limit is the tighter one.
    for k in 1..=10u32 {
        let s = single(&e, one("multi", "m")).await;
        assert_eq!(s.code, Code::Ok);
        assert_eq!(s.current_limit, limit(10, Unit::Second, Some("burst")));
        assert_eq!(s.limit_remaining, 10 - k);
    }
    let s = single(&e, one("multi", "m")).await;
    assert_eq!(s.code, Code::OverLimit);
    assert_eq!(s.current_limit, limit(10, Unit::Second, Some("burst")));
    assert_eq!(s.limit_remaining, 0);
    assert_eq!(s.duration_until_reset, Some(1));

    // Second 2: the refused 11th charged nothing, so the minute has 5 left
    // and is now the tighter one.
    clock.advance(SEC);
    for k in 1..=5u32 {
        let s = single(&e, one("multi", "m")).await;
        assert_eq!(s.code, Code::Ok);
        assert_eq!(s.current_limit, limit(15, Unit::Minute, Some("sustained")));
        assert_eq!(s.limit_remaining, 5 - k);
    }
    let s = single(&e, one("multi", "m")).await;
    assert_eq!(s.code, Code::OverLimit);
    assert_eq!(s.current_limit, limit(15, Unit::Minute, Some("sustained")));
    assert_eq!(s.duration_until_reset, Some(54));

    // Next minute: the per-second count of second 2 (5) did not grow
    // from the refusal either, and everything is fresh again.
    clock.advance(54 * SEC);
    let s = single(&e, one("multi", "m")).await;
    assert_eq!(s.code, Code::Ok);
    assert_eq!(s.limit_remaining, 9);
}

#[tokio::test]
async fn sliding_window_never_charges_a_refused_request() {
    let (clock, e) = engine(settings());
    for _ in 0..3 {
        assert_eq!(single(&e, one("sliding", "s")).await.code, Code::Ok);
    }
    for _ in 0..5 {
        let s = single(&e, one("sliding", "s")).await;
        assert_eq!(s.code, Code::OverLimit);
        assert_eq!(s.current_limit, limit(3, Unit::Minute, None));
    }
    // 40 s into the next minute a third of the last one still weighs in:
    // 3 × 1/3 = 1 (8 × 1/3 had the refusals counted), so two more fit.
    clock.advance(54 * SEC + SEC / 2 + 40 * SEC);
    let s = single(&e, one("sliding", "s")).await;
    assert_eq!((s.code, s.limit_remaining), (Code::Ok, 1));
    assert_eq!(single(&e, one("sliding", "s")).await.code, Code::Ok);
    assert_eq!(single(&e, one("sliding", "s")).await.code, Code::OverLimit);
}

#[tokio::test]
async fn token_bucket_never_charges_a_refused_request() {
    let (clock, e) = engine(settings());
    for k in 1..=3u32 {
        let s = single(&e, one("bucket", "b")).await;
        assert_eq!((s.code, s.limit_remaining), (Code::Ok, 3 - k));
    }
    for _ in 0..5 {
        let s = single(&e, one("bucket", "b")).await;
        assert_eq!(s.code, Code::OverLimit);
        // One token comes back every 20 s.
        assert_eq!(s.duration_until_reset, Some(20));
    }
    // 20 s later exactly one token is back.
    clock.advance(20 * SEC);
    assert_eq!(single(&e, one("bucket", "b")).await.code, Code::Ok);
    assert_eq!(single(&e, one("bucket", "b")).await.code, Code::OverLimit);
}

// ---------------------------------------------------------------------------
// Sharing a counter

#[tokio::test]
async fn share_threshold_makes_wildcard_values_share_one_counter() {
    let (_, e) = engine(settings());
    for v in ["team-a", "team-b", "team-c"] {
        assert_eq!(single(&e, one("shared", v)).await.code, Code::Ok);
    }
    assert_eq!(
        single(&e, one("shared", "team-d")).await.code,
        Code::OverLimit
    );

    for _ in 0..3 {
        assert_eq!(single(&e, one("separate", "team-a")).await.code, Code::Ok);
    }
    assert_eq!(
        single(&e, one("separate", "team-a")).await.code,
        Code::OverLimit
    );
    let s = single(&e, one("separate", "team-b")).await;
    assert_eq!((s.code, s.limit_remaining), (Code::Ok, 2));
}

// ---------------------------------------------------------------------------
// Headers

fn header<'a>(d: &'a Decision, name: &str) -> Option<&'a str> {
    d.response_headers
        .iter()
        .find(|h| h.name == name)
        .map(|h| h.value.as_str())
}

#[tokio::test]
async fn draft03_headers_describe_the_tightest_descriptor() {
    let (_, e) = engine(Settings {
        headers: HeaderMode::Draft03,
        ..settings()
    });
    let d = decide(
        &e,
        &request(
            "t",
            vec![one("fixed", "h"), one("user", "h"), one("free", "h")],
        ),
    )
    .await;
    assert_eq!(header(&d, "RateLimit-Limit"), Some("5, 5;w=60"));
    assert_eq!(header(&d, "RateLimit-Remaining"), Some("4"));
    assert_eq!(header(&d, "RateLimit-Reset"), Some("55"));

    // An over-limit descriptor takes precedence.
    let d = decide(&e, &request("t", vec![one("fixed", "h"), one("zero", "h")])).await;
    assert_eq!(header(&d, "RateLimit-Limit"), Some("0, 0;w=1"));
    assert_eq!(header(&d, "RateLimit-Remaining"), Some("0"));
    assert_eq!(header(&d, "RateLimit-Reset"), Some("1"));

    // No limit applied: no headers.
    let d = decide(
        &e,
        &request("t", vec![one("free", "h"), one("nothing", "h")]),
    )
    .await;
    assert!(d.response_headers.is_empty());
}

/// A descriptor carrying an API key's limits.
fn subject(limits: &[LimitSpec]) -> Descriptor<'static> {
    Descriptor {
        subject: Some(Box::new(Subject {
            counter_key: Arc::from(&b"key-counter"[..]),
            limits: limits.iter().copied().collect(),
            label: "api_key.test".into(),
        })),
        ..one("api_key", "k")
    }
}

#[tokio::test]
async fn custom_windows_report_their_length_and_reset() {
    let (_, e) = engine(Settings {
        headers: HeaderMode::Draft03,
        ..settings()
    });
    // T0 is 65.5 s into its 90 s window.
    let limits = [LimitSpec::with_window(
        5,
        90 * SEC,
        0,
        Algorithm::FixedWindow,
        None,
        0,
    )];
    let d = decide(&e, &request("t", vec![subject(&limits)])).await;
    let s = &d.statuses[0];
    let current = s.current_limit.as_ref().expect("a limit applied");
    assert_eq!((current.unit, current.window_seconds), (Unit::Minute, 90));
    assert_eq!(s.duration_until_reset, Some(25));
    assert_eq!(header(&d, "RateLimit-Limit"), Some("5, 5;w=90"));
    assert_eq!(header(&d, "RateLimit-Reset"), Some("25"));

    // Windows are reported in whole seconds, rounded up; an offset moves
    // the reset: 1.5 s windows starting 0.75 s past the epoch-aligned ones,
    // T0 is 0.25 s into one.
    let limits = [LimitSpec::with_window(
        5,
        1_500_000_000,
        750_000_000,
        Algorithm::FixedWindow,
        None,
        0,
    )];
    let d = decide(&e, &request("t", vec![subject(&limits)])).await;
    let current = d.statuses[0]
        .current_limit
        .as_ref()
        .expect("a limit applied");
    assert_eq!((current.unit, current.window_seconds), (Unit::Second, 2));
    assert_eq!(header(&d, "RateLimit-Limit"), Some("5, 5;w=2"));
    assert_eq!(header(&d, "RateLimit-Reset"), Some("2"));
}

#[tokio::test]
async fn a_subject_is_decided_in_an_unknown_domain_and_a_request_may_pick_its_headers() {
    let (_, e) = engine(settings());
    let limits = [LimitSpec::new(
        2,
        Unit::Minute,
        Algorithm::FixedWindow,
        None,
        0,
    )];
    let mut req = request("no-such-domain", vec![subject(&limits), one("fixed", "h")]);
    req.header_mode = Some(HeaderMode::Ietf);
    for remaining in [1, 0] {
        let d = decide(&e, &req).await;
        assert_eq!(d.overall, Code::Ok);
        assert_eq!(d.statuses[0].limit_remaining, remaining);
        // No rules in an unknown domain: the other descriptor has no limit.
        assert_eq!(d.statuses[1], DescriptorStatus::no_limit());
        assert!(header(&d, "RateLimit").is_some(), "{d:?}");
    }
    let d = decide(&e, &req).await;
    assert_eq!(d.overall, Code::OverLimit);
    // Without a subject, an unknown domain is still answered OK unlimited.
    let d = decide(&e, &request("no-such-domain", vec![one("fixed", "h")])).await;
    assert_eq!(d.overall, Code::Ok);
    assert!(d.response_headers.is_empty());
}

#[tokio::test]
async fn no_headers_unless_asked() {
    let (_, e) = engine(settings());
    let d = decide(&e, &request("t", vec![one("fixed", "h")])).await;
    assert!(d.response_headers.is_empty());
}

// ---------------------------------------------------------------------------
// Statistics

#[tokio::test]
async fn stats_follow_the_reference_accounting() {
    let (_, e) = engine(settings());
    // Limit 10, near threshold 8: 1..=8 within, 9 and 10 near and within,
    // 11..=15 over.
    for _ in 0..15 {
        single(&e, one("fixed", "s")).await;
    }
    assert_eq!(
        stats_of(&e, "t.fixed"),
        StatsSnapshot {
            total_hits: 15,
            within_limit: 10,
            near_limit: 2,
            over_limit: 5,
            shadow_mode: 0,
        }
    );

    // Limit 7: near threshold floor(5.6) = 5.
    for _ in 0..9 {
        single(&e, one("seven", "s")).await;
    }
    let snap = stats_of(&e, "t.seven");
    assert_eq!(
        (
            snap.total_hits,
            snap.within_limit,
            snap.near_limit,
            snap.over_limit
        ),
        (9, 7, 2, 2)
    );
}

#[tokio::test]
async fn stats_split_multi_hit_requests_across_thresholds() {
    let (_, e) = engine(settings());
    // Limit 10 in steps of 3: 3, 6, 9 (one near), 12 (10 - 9 = 1 near,
    // 2 over), 15 (3 over).
    let mut d = one("fixed", "m");
    d.hits_addend = Some(3);
    for _ in 0..5 {
        single(&e, d.clone()).await;
    }
    let snap = stats_of(&e, "t.fixed");
    assert_eq!(
        (
            snap.total_hits,
            snap.within_limit,
            snap.near_limit,
            snap.over_limit
        ),
        (15, 9, 2, 5)
    );
    // A check without hits records nothing.
    d.hits_addend = Some(0);
    single(&e, d).await;
    assert_eq!(stats_of(&e, "t.fixed"), snap);
}

#[tokio::test]
async fn stats_of_a_bucket_that_never_fills_count_refusals_as_over() {
    let (_, e) = engine(settings());
    for _ in 0..3 {
        assert_eq!(
            single(&e, one("dry_bucket", "d")).await.code,
            Code::OverLimit
        );
    }
    let snap = stats_of(&e, "t.dry_bucket");
    assert_eq!(
        (
            snap.total_hits,
            snap.within_limit,
            snap.near_limit,
            snap.over_limit
        ),
        (3, 0, 0, 3)
    );
}

#[tokio::test]
async fn detailed_metric_keys_are_bounded() {
    let (_, e) = engine(Settings {
        max_metric_keys: 3,
        ..settings()
    });
    for v in ["d1", "d2", "d3", "d1"] {
        single(&e, one("detail", v)).await;
    }
    let mut keys: Vec<String> = e
        .dynamic_stats()
        .snapshot()
        .into_iter()
        .map(|(k, _)| k.to_string())
        .collect();
    keys.sort();
    assert_eq!(keys, ["t.detail_d1", "t.detail_d2", "t.detail_d3"]);
    let d1 = e
        .dynamic_stats()
        .snapshot()
        .into_iter()
        .find(|(k, _)| &**k == "t.detail_d1")
        .map(|(_, s)| s.snapshot())
        .expect("d1 is tracked");
    assert_eq!(d1.total_hits, 2);
    assert_eq!(e.dynamic_stats().overflow(), 0);

    // Past the cap: no new keys, the overflow grows, and the hits land on
    // the rule's own stats.
    for (i, v) in ["d4", "d5", "d4"].into_iter().enumerate() {
        single(&e, one("detail", v)).await;
        assert_eq!(e.dynamic_stats().overflow(), i as u64 + 1);
    }
    assert_eq!(e.dynamic_stats().snapshot().len(), 3);
    assert_eq!(stats_of(&e, "t.detail").total_hits, 3);
}

// ---------------------------------------------------------------------------
// Arbitrary requests

const WILD: &str = r#"
domain: w
descriptors:
  - key: a
    rate_limit: {unit: second, requests_per_unit: 2}
    descriptors:
      - key: b
        value: "x*"
        share_threshold: true
        rate_limit: {unit: minute, requests_per_unit: 3, name: ab}
      - key: b
        rate_limits:
          - {unit: second, requests_per_unit: 1, name: b1}
          - {unit: hour, requests_per_unit: 5, algorithm: sliding_window}
          - {unit: day, requests_per_unit: 2, algorithm: token_bucket, burst: 9}
        descriptors:
          - key: c
            value: "*"
            detailed_metric: true
            rate_limit: {unit: minute, requests_per_unit: 0}
  - key: a
    value: "*b*"
    value_to_metric: true
    rate_limit:
      unit: day
      requests_per_unit: 4
      algorithm: token_bucket
      burst: 2
      replaces: [{name: ab}]
  - key: b
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1, algorithm: token_bucket, burst: 9}
  - key: c
    shadow_mode: true
    rate_limit: {unit: second, requests_per_unit: 0, algorithm: token_bucket, burst: 3}
  - key: c
    value: "**"
    quota_mode: true
    rate_limit: {unit: week, requests_per_unit: 2, algorithm: sliding_window, name: cc}
  - key: user
    rate_limit: {unlimited: true, replaces: [{name: b1}]}
  - key: path
    value: "/api/*"
    rate_limit: {unit: minute, requests_per_unit: 2, name: api}
    descriptors:
      - key: user
        value_to_metric: true
        rate_limit: {unit: year, requests_per_unit: 4294967295, replaces: [{name: cc}]}
"#;

/// An owned request: domain, descriptors (entries, override as (rate,
/// unit number), hits) and the request's hits.
type Raw = (String, Vec<RawDescriptor>, u32, u64);
type RawDescriptor = (Vec<(String, String)>, Option<(u32, i32)>, Option<u64>);

fn short_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "", "a", "b", "c", "x", "xy", "b", "user", "path", "/api/v1", "*"
        ])
        .prop_map(String::from),
        "[abcxy*/]{0,4}",
    ]
}

fn raw_request() -> impl Strategy<Value = Raw> {
    let entry = (short_string(), short_string());
    let over = prop::option::weighted(0.2, (prop_oneof![0u32..4, any::<u32>()], -1i32..9));
    let hits = prop::option::weighted(0.3, prop_oneof![0u64..4, any::<u64>()]);
    let descriptor = (prop::collection::vec(entry, 0..4), over, hits);
    (
        prop::sample::select(vec!["w", "t", "nope", ""]).prop_map(String::from),
        prop::collection::vec(descriptor, 0..5),
        prop_oneof![0u32..3, any::<u32>()],
        0u64..3 * SEC,
    )
}

fn check_arbitrary_requests(settings: Settings) {
    let (clock, e) = engine_with(&[("t.yaml", RULES), ("w.yaml", WILD)], settings);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    });
    runner
        .run(&raw_request(), |(domain, raw, hits_addend, advance)| {
            clock.advance(advance);
            let req = Request {
                domain: &domain,
                descriptors: raw
                    .iter()
                    .map(|(entries, over, hits)| Descriptor {
                        entries: entries
                            .iter()
                            .map(|(k, v)| Entry { key: k, value: v })
                            .collect(),
                        limit_override: over.map(|(rpu, unit)| LimitOverride {
                            requests_per_unit: rpu,
                            unit: Unit::from_proto_number(unit),
                        }),
                        hits_addend: *hits,
                        subject: None,
                    })
                    .collect(),
                hits_addend,
                header_mode: None,
            };
            let Ok(d) = rt.block_on(e.decide(&req)) else {
                return Ok(());
            };
            prop_assert_eq!(d.statuses.len(), req.descriptors.len());
            for s in &d.statuses {
                prop_assert!(matches!(s.code, Code::Ok | Code::OverLimit));
                if s.code == Code::OverLimit {
                    prop_assert!(s.current_limit.is_some());
                }
                prop_assert_eq!(s.current_limit.is_some(), s.duration_until_reset.is_some());
                if let Some(secs) = s.duration_until_reset {
                    prop_assert!(secs >= 1);
                }
            }
            if d.overall == Code::OverLimit {
                prop_assert!(d.statuses.iter().any(|s| s.code == Code::OverLimit));
            }
            Ok(())
        })
        .expect("every arbitrary request is answered");
}

#[test]
fn arbitrary_requests_are_answered_one_status_per_descriptor() {
    check_arbitrary_requests(Settings {
        max_metric_keys: 8,
        ..Settings::default()
    });
}

#[test]
fn arbitrary_requests_with_headers_and_global_shadow_mode() {
    check_arbitrary_requests(Settings {
        global_shadow_mode: true,
        headers: HeaderMode::Ietf,
        max_metric_keys: 0,
        request_limits: RequestLimits {
            max_descriptors: 3,
            max_entries: 2,
            max_value_bytes: 3,
            ..RequestLimits::default()
        },
    });
    check_arbitrary_requests(Settings {
        headers: HeaderMode::Draft03,
        max_metric_keys: 1,
        ..Settings::default()
    });
}
