use std::sync::Arc;

use super::*;
use crate::config::{LoadOptions, load_sources};
use crate::core::clock::ManualClock;
use crate::core::rules::Entry;
use crate::core::stats::StatsRegistry;
use crate::engine::{Descriptor, Settings};
use crate::store::MemoryStore;

const CONFIG: &str = "\
domain: gw
api_key: {descriptor_key: x-api-key, on_invalid: deny}
descriptors:
  - key: ip
    rate_limit: {unit: minute, requests_per_unit: 1}
";

fn decider(yaml: &str) -> Decider<MemoryStore> {
    let stats = StatsRegistry::default();
    let rules = load_sources(
        &[("t.yaml".to_string(), yaml.to_string())],
        LoadOptions::default(),
        &stats,
    )
    .unwrap();
    let store = MemoryStore::new(Arc::new(ManualClock::new(1_000_000_000)), 1000);
    Decider::new(
        Arc::new(Engine::new(store, rules, Settings::default())),
        None,
    )
}

fn one<'a>(k: &'a str, v: &'a str) -> Descriptor<'a> {
    Descriptor {
        entries: [Entry { key: k, value: v }].into_iter().collect(),
        ..Descriptor::default()
    }
}

fn request<'a>(domain: &'a str, descriptors: Vec<Descriptor<'a>>) -> Request<'a> {
    Request {
        domain,
        descriptors: descriptors.into_iter().collect(),
        hits_addend: 0,
        header_mode: None,
    }
}

#[tokio::test]
async fn without_a_key_store_a_key_is_denied_and_the_rest_still_decided() {
    let d = decider(CONFIG);
    let a = d
        .should_rate_limit(
            request("gw", vec![one("x-api-key", "sk_live_x"), one("ip", "1")]),
            || panic!("no caller needed without a key store"),
        )
        .await
        .unwrap();
    assert_eq!(a.decision.overall, Code::OverLimit);
    assert_eq!(a.decision.statuses[0].code, Code::OverLimit);
    assert_eq!(a.decision.statuses[1].code, Code::Ok);
    assert!(a.decision.statuses[1].current_limit.is_some(), "decided");
    assert_eq!(a.problem.unwrap().code, "KEY_STORE_UNAVAILABLE");
    assert_eq!(a.keys.len(), 1);
    assert_eq!(a.keys[0].outcome, KeyOutcome::StoreUnavailable);
    // The per-IP limit was charged: the next call is over it.
    let a = d
        .should_rate_limit(request("gw", vec![one("ip", "1")]), || None)
        .await
        .unwrap();
    assert_eq!(a.decision.overall, Code::OverLimit);
}

#[tokio::test]
async fn bad_requests_are_refused_before_any_key_work() {
    let d = decider(CONFIG);
    let e = d
        .should_rate_limit(
            request("gw", vec![one("x-api-key", "k"), one("", "v")]),
            || panic!("not asked"),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("descriptors[1].entries[0].key"),
        "{e}"
    );
}

#[tokio::test]
async fn a_key_free_domain_is_the_engine_alone() {
    let d = decider(
        "domain: plain\ndescriptors:\n  - key: ip\n    rate_limit: {unit: minute, requests_per_unit: 5}\n",
    );
    let a = d
        .should_rate_limit(
            request("plain", vec![one("x-api-key", "k"), one("ip", "1")]),
            || panic!("not asked"),
        )
        .await
        .unwrap();
    assert_eq!(a.decision.overall, Code::Ok);
    assert!(a.problem.is_none() && a.keys.is_empty());
    assert_eq!(a.decision.statuses[1].limit_remaining, 4);
}

#[test]
fn problems_are_json_with_a_stable_code() {
    let b: serde_json::Value =
        serde_json::from_str(&Problem::invalid(Verdict::Revoked).body()).unwrap();
    assert_eq!(b["code"], "REVOKED");
    assert_eq!(b["status"], 429);
    let b: serde_json::Value = serde_json::from_str(&Problem::store_unavailable().body()).unwrap();
    assert_eq!(b["code"], "KEY_STORE_UNAVAILABLE");
}
