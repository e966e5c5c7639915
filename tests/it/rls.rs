//! ShouldRateLimit over gRPC against the real binary: the reference
//! semantics end to end.

use std::time::Duration;

use sluice::grpc::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;

use crate::support::{OK, OVER, Sluice, avoid_minute_boundary, call, codes, desc, req};

const CONFIG: &str = r#"
domain: rls
descriptors:
  - key: generic_key
    value: three
    rate_limit: {unit: minute, requests_per_unit: 3, name: three}
  - key: generic_key
    value: zero
    rate_limit: {unit: minute, requests_per_unit: 0}
  - key: generic_key
    value: free
    rate_limit: {unlimited: true}
  - key: allow_listed
    value: me
  - key: user
    rate_limit: {unit: Minute, requests_per_unit: 2}
    descriptors:
      - key: path
        value: /api/*
        rate_limit: {unit: MINUTE, requests_per_unit: 1}
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: replaced
    rate_limit: {unit: minute, requests_per_unit: 1, name: global}
  - key: replacer
    rate_limit:
      unit: minute
      requests_per_unit: 10
      replaces: [{name: global}]
  - key: quota_a
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: quota_b
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: multi
    rate_limits:
      - {unit: second, requests_per_unit: 100, name: burst}
      - {unit: minute, requests_per_unit: 2, name: per_minute}
  - key: bucket
    rate_limit: {unit: minute, requests_per_unit: 60, algorithm: token_bucket, burst: 2}
  - key: sliding
    rate_limit: {unit: minute, requests_per_unit: 2, algorithm: sliding_window}
"#;

#[tokio::test]
async fn fixed_window_limit_reports_limit_remaining_and_reset() {
    avoid_minute_boundary(10).await;
    let s = Sluice::start(CONFIG, &[]);
    let mut c = s.client().await;
    let r = req("rls", vec![desc(&[("generic_key", "three")])]);
    for remaining in [2, 1, 0] {
        let resp = call(&mut c, r.clone()).await;
        assert_eq!(resp.overall_code, OK);
        let st = &resp.statuses[0];
        assert_eq!(st.code, OK);
        let limit = st.current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.unit, limit.name.as_str()),
            (3, 2, "three")
        );
        assert_eq!(st.limit_remaining, remaining);
        let reset = st.duration_until_reset.as_ref().unwrap().seconds;
        assert!((1..=60).contains(&reset), "reset {reset}");
    }
    let resp = call(&mut c, r.clone()).await;
    assert_eq!(resp.overall_code, OVER);
    assert_eq!(resp.statuses[0].code, OVER);
    assert_eq!(resp.statuses[0].limit_remaining, 0);
}

#[tokio::test]
async fn unknown_domain_no_match_allow_list_and_unlimited() {
    let s = Sluice::start(CONFIG, &[]);
    let mut c = s.client().await;
    let resp = call(&mut c, req("nope", vec![desc(&[("generic_key", "three")])])).await;
    assert_eq!(resp.overall_code, OK);
    assert_eq!(resp.statuses.len(), 1);
    assert!(resp.statuses[0].current_limit.is_none());

    let resp = call(
        &mut c,
        req(
            "rls",
            vec![desc(&[("no", "rule")]), desc(&[("allow_listed", "me")])],
        ),
    )
    .await;
    assert_eq!(resp.overall_code, OK);
    assert_eq!(resp.statuses.len(), 2);
    assert!(
        resp.statuses
            .iter()
            .all(|s| s.code == OK && s.current_limit.is_none())
    );

    for _ in 0..5 {
        let resp = call(&mut c, req("rls", vec![desc(&[("generic_key", "free")])])).await;
        assert_eq!(resp.overall_code, OK);
        assert_eq!(resp.statuses[0].limit_remaining, u32::MAX);
        assert!(resp.statuses[0].current_limit.is_none());
    }
}

#[tokio::test]
async fn zero_limit_blocks_everything() {
    let s = Sluice::start(CONFIG, &[]);
    let mut c = s.client().await;
    let r = req("rls", vec![desc(&[("generic_key", "zero")])]);
    assert_eq!(codes(&mut c, &r, 3).await, vec![OVER; 3]);
}

#[tokio::test]
async fn default_nodes_count_each_value_and_depth_is_exact() {
    avoid_minute_boundary(10).await;
    let s = Sluice::start(CONFIG, &[]);
    let mut c = s.client().await;
    let alice = req("rls", vec![desc(&[("user", "alice")])]);
    let bob = req("rls", vec![desc(&[("user", "bob")])]);
    assert_eq!(codes(&mut c, &alice, 3).await, vec![OK, OK, OVER]);
    assert_eq!(codes(&mut c, &bob, 2).await, vec![OK, OK]);
    // Deeper: the wildcard child applies, with its own counter.
    let path = req("rls", vec![desc(&[("user", "carol"), ("path", "/api/v1")])]);
    assert_eq!(codes(&mut c, &path, 2).await, vec![OK, OVER]);
    // A path the wildcard does not match: no rule at that depth.
    let other = req("rls", vec![desc(&[("user", "carol"), ("path", "/other")])]);
    let resp = call(&mut c, other).await;
    assert!(resp.statuses[0].current_limit.is_none());
    // More entries than the tree: no rule.
    let deep = req(
        "rls",
        vec![desc(&[
            ("user", "dave"),
            ("path", "/api/x"),
            ("extra", "1"),
        ])],
    );
    assert!(call(&mut c, deep).await.statuses[0].current_limit.is_none());
}

#[tokio::test]
async fn hits_addend_request_and_per_descriptor() {
    avoid_minute_boundary(10).await;
    let s = Sluice::start(CONFIG, &[]);
    let mut c = s.client().await;
    let mut r = req("rls", vec![desc(&[("generic_key", "three")])]);
    r.hits_addend = 2;
    let resp = call(&mut c, r.clone()).await;
    assert_eq!(resp.statuses[0].limit_remaining, 1);
    // Per-descriptor 0 wins: check without consuming.
    let mut check = r.clone();
    check.descriptors[0].hits_addend = Some(pbjson_types::UInt64Value { value: 0 });
    for _ in 0..3 {
        let resp = call(&mut c, check.clone()).await;
        assert_eq!(resp.overall_code, OK);
        assert_eq!(resp.statuses[0].limit_remaining, 1);
    }
    // Over the limit: the reference adds hits even when over, so a check
    // afterwards still answers OVER_LIMIT.
    let resp = call(&mut c, r.clone()).await;
    assert_eq!(resp.overall_code, OVER);
    let resp = call(&mut c, check.clone()).await;
    assert_eq!(resp.overall_code, OVER);
}

#[tokio::test]
async fn shadow_mode_rule_and_replaces() {
    avoid_minute_boundary(10).await;
    let s = Sluice::start(CONFIG, &[]);
    let mut c = s.client().await;
    let shadow = req("rls", vec![desc(&[("shadow", "x")])]);
    assert_eq!(codes(&mut c, &shadow, 3).await, vec![OK; 3]);

    // `replacer` replaces the limit named `global`, whichever comes first.
    for order in [
        vec![desc(&[("replaced", "x")]), desc(&[("replacer", "y")])],
        vec![desc(&[("replacer", "y")]), desc(&[("replaced", "x")])],
    ] {
        let r = req("rls", order);
        for _ in 0..3 {
            let resp = call(&mut c, r.clone()).await;
            assert_eq!(resp.overall_code, OK);
        }
    }
    // Alone, `replaced` is limited to 1 and was never counted above.
    let alone = req("rls", vec![desc(&[("replaced", "x")])]);
    assert_eq!(codes(&mut c, &alone, 2).await, vec![OK, OVER]);
}

#[tokio::test]
async fn quota_mode_is_over_only_when_all_quota_descriptors_are() {
    avoid_minute_boundary(10).await;
    let s = Sluice::start(CONFIG, &[]);
    let mut c = s.client().await;
    let r = req(
        "rls",
        vec![desc(&[("quota_a", "k")]), desc(&[("quota_b", "k")])],
    );
    let first = call(&mut c, r.clone()).await;
    assert_eq!(first.overall_code, OK);
    // quota_a is now over (1/min), quota_b still has room: overall OK.
    let second = call(&mut c, r.clone()).await;
    assert_eq!(second.statuses[0].code, OVER);
    assert_eq!(second.overall_code, OK);
    // Both over.
    let third = call(&mut c, r.clone()).await;
    assert_eq!(third.overall_code, OVER);
}

#[tokio::test]
async fn override_bypasses_matching_and_unknown_unit_is_invalid() {
    let s = Sluice::start(CONFIG, &[]);
    let mut c = s.client().await;
    let mut d = desc(&[("anything", "at-all")]);
    d.limit = Some(RateLimitOverride {
        requests_per_unit: 2,
        unit: 4, // DAY
    });
    let r = req("rls", vec![d.clone()]);
    let resp = call(&mut c, r.clone()).await;
    assert_eq!(resp.statuses[0].current_limit.as_ref().unwrap().unit, 4);
    assert_eq!(codes(&mut c, &r, 2).await, vec![OK, OVER]);

    let mut bad = d;
    bad.limit = Some(RateLimitOverride {
        requests_per_unit: 2,
        unit: 0,
    });
    let err = c
        .should_rate_limit(req("rls", vec![bad]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("descriptors[0].limit.unit"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn multi_limit_is_all_or_nothing_and_reports_the_tightest() {
    avoid_minute_boundary(10).await;
    let s = Sluice::start(CONFIG, &[]);
    let mut c = s.client().await;
    let r = req("rls", vec![desc(&[("multi", "k")])]);
    let resp = call(&mut c, r.clone()).await;
    let st = &resp.statuses[0];
    assert_eq!(st.current_limit.as_ref().unwrap().name, "per_minute");
    assert_eq!(st.limit_remaining, 1);
    assert_eq!(codes(&mut c, &r, 2).await, vec![OK, OVER]);
}

#[tokio::test]
async fn token_bucket_and_sliding_window_never_charge_rejections() {
    avoid_minute_boundary(10).await;
    let s = Sluice::start(CONFIG, &[]);
    let mut c = s.client().await;
    let bucket = req("rls", vec![desc(&[("bucket", "k")])]);
    let got = codes(&mut c, &bucket, 3).await;
    assert_eq!(got, vec![OK, OK, OVER]);
    // Refills one token per second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(codes(&mut c, &bucket, 2).await, vec![OK, OVER]);

    let sliding = req("rls", vec![desc(&[("sliding", "k")])]);
    assert_eq!(codes(&mut c, &sliding, 4).await, vec![OK, OK, OVER, OVER]);
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let s = Sluice::start(
        CONFIG,
        &[
            "--max-descriptors",
            "2",
            "--max-entries",
            "2",
            "--max-value-bytes",
            "16",
        ],
    );
    let mut c = s.client().await;
    let cases = [
        (req("", vec![desc(&[("a", "b")])]), "domain"),
        (req("rls", vec![]), "descriptors"),
        (req("rls", vec![desc(&[])]), "descriptors[0].entries"),
        (
            req("rls", vec![desc(&[("", "b")])]),
            "descriptors[0].entries[0].key",
        ),
        (req("rls", vec![desc(&[("a", "b")]); 3]), "limit of 2"),
        (
            req("rls", vec![desc(&[("a", "b"), ("c", "d"), ("e", "f")])]),
            "limit of 2",
        ),
        (
            req("rls", vec![desc(&[("a", &"x".repeat(17))])]),
            "limit of 16",
        ),
    ];
    for (r, needle) in cases {
        let err = c.should_rate_limit(r).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains(needle),
            "{needle:?} not in {:?}",
            err.message()
        );
    }
    // Still serving afterwards.
    let resp = call(&mut c, req("rls", vec![desc(&[("generic_key", "free")])])).await;
    assert_eq!(resp.overall_code, OK);
}

#[tokio::test]
async fn global_shadow_mode_answers_ok() {
    let s = Sluice::start_with(
        CONFIG,
        crate::support::Opts {
            env: &[("SLUICE_SHADOW_MODE", "true")],
            ..Default::default()
        },
    );
    let mut c = s.client().await;
    let r = req("rls", vec![desc(&[("generic_key", "zero")])]);
    let resp = call(&mut c, r).await;
    assert_eq!(resp.overall_code, OK);
    assert_eq!(resp.statuses[0].code, OVER);
}

#[tokio::test]
async fn response_headers_draft03_and_ietf() {
    avoid_minute_boundary(10).await;
    let s = Sluice::start(CONFIG, &["--response-headers", "draft03"]);
    let mut c = s.client().await;
    let resp = call(
        &mut c,
        req(
            "rls",
            vec![desc(&[("generic_key", "three")]), desc(&[("user", "h")])],
        ),
    )
    .await;
    let h: Vec<(String, String)> = resp
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    assert!(
        h.contains(&("RateLimit-Limit".into(), "2, 2;w=60".into())),
        "{h:?}"
    );
    assert!(
        h.contains(&("RateLimit-Remaining".into(), "1".into())),
        "{h:?}"
    );
    let resp = call(&mut c, req("rls", vec![desc(&[("no", "rule")])])).await;
    assert!(resp.response_headers_to_add.is_empty());

    let s = Sluice::start(CONFIG, &["--response-headers", "ietf"]);
    let mut c = s.client().await;
    let resp = call(&mut c, req("rls", vec![desc(&[("generic_key", "three")])])).await;
    let h: Vec<(String, String)> = resp
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    assert!(
        h.contains(&("RateLimit-Policy".into(), "\"three\";q=3;w=60".into())),
        "{h:?}"
    );
    assert!(
        h.iter()
            .any(|(k, v)| k == "RateLimit" && v.starts_with("\"three\";r=2;t=")),
        "{h:?}"
    );
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let s = Sluice::start(CONFIG, &[]);
    let mut c = s.client().await;
    let mut r = tonic::Request::new(req("rls", vec![desc(&[("generic_key", "free")])]));
    r.metadata_mut()
        .insert("x-request-id", "abc-123".parse().unwrap());
    let resp = c.should_rate_limit(r).await.unwrap();
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "abc-123");
    let resp = c
        .should_rate_limit(req("rls", vec![desc(&[("generic_key", "free")])]))
        .await
        .unwrap();
    let id = resp
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(id.len() >= 14 && id.contains('-'), "{id}");
    let next = c
        .should_rate_limit(req("rls", vec![desc(&[("generic_key", "free")])]))
        .await
        .unwrap();
    assert_ne!(
        next.metadata()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap(),
        id
    );
}

/// `hits_addend` is bounded (request and descriptor), so that one call
/// cannot use up a window: past `--max-hits-addend` (default 1,000,000)
/// the answer is INVALID_ARGUMENT naming the field and the bound, over
/// gRPC and `/json`, and nothing is counted.
#[tokio::test]
async fn hits_addend_is_bounded() {
    let s = Sluice::start(CONFIG, &[]);
    let mut c = s.client().await;
    let mut r = req("rls", vec![desc(&[("generic_key", "three")])]);
    r.hits_addend = 1_000_001;
    let err = c.should_rate_limit(r.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "hits_addend: is 1000001, more than the limit of 1000000 (--max-hits-addend)"
    );
    let mut d = desc(&[("generic_key", "three")]);
    d.hits_addend = Some(pbjson_types::UInt64Value { value: 1_000_001 });
    let err = c
        .should_rate_limit(req("rls", vec![desc(&[("user", "u")]), d]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("descriptors[1].hits_addend: is 1000001, more than the limit of 1000000"),
        "{}",
        err.message()
    );
    // Nothing was charged: the limit of 3 still admits 3.
    let three = req("rls", vec![desc(&[("generic_key", "three")])]);
    assert_eq!(codes(&mut c, &three, 4).await, vec![OK, OK, OK, OVER]);

    let s = Sluice::start(CONFIG, &["--max-hits-addend", "5"]);
    let json = |hits: u32| {
        let url = s.http("/json");
        async move {
            let body = format!(
                r#"{{"domain":"rls","hitsAddend":{hits},"descriptors":[{{"entries":[{{"key":"user","value":"j"}}]}}]}}"#
            );
            let r = reqwest::Client::new()
                .post(url)
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, body) = json(6).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("limit of 5 (--max-hits-addend)"), "{body}");
    // At the bound: decided (over the limit of 2 per minute).
    assert_eq!(json(5).await.0, 429);
}
