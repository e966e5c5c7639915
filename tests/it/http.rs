//! The HTTP side: /json, /metrics, /healthz, /readyz.

use serde_json::{Value, json};

use crate::support::{Sluice, avoid_minute_boundary};

const CONFIG: &str = r#"
domain: web
descriptors:
  - key: k
    value: two
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: client
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 100}
"#;

async fn post(s: &Sluice, body: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(s.http("/json"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap())
}

#[tokio::test]
async fn json_endpoint_answers_200_then_429_and_400_for_bad_input() {
    avoid_minute_boundary(10).await;
    let s = Sluice::start(CONFIG, &[]);
    let body =
        json!({"domain": "web", "descriptors": [{"entries": [{"key": "k", "value": "two"}]}]})
            .to_string();
    let (code, v) = post(&s, &body).await;
    assert_eq!(code, 200);
    assert_eq!(v["overallCode"], "OK");
    assert_eq!(v["statuses"][0]["limitRemaining"], 1);
    assert_eq!(v["statuses"][0]["currentLimit"]["unit"], "MINUTE");
    let (code, _) = post(&s, &body).await;
    assert_eq!(code, 200);
    let (code, v) = post(&s, &body).await;
    assert_eq!(code, 429);
    assert_eq!(v["overallCode"], "OVER_LIMIT");

    // Original proto field names are accepted too (protojson).
    let snake = json!({"domain": "web", "descriptors": [{"entries": [{"key": "nope", "value": "x"}]}], "hits_addend": 1}).to_string();
    assert_eq!(post(&s, &snake).await.0, 200);

    let (code, v) = post(&s, "{not json").await;
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("protojson"));
    let (code, v) = post(&s, &json!({"domain": "", "descriptors": []}).to_string()).await;
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("domain"));
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let s = Sluice::start(CONFIG, &[]);
    let get = |p: &str| reqwest::get(s.http(p));
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);

    let body =
        json!({"domain": "web", "descriptors": [{"entries": [{"key": "k", "value": "two"}]}]})
            .to_string();
    for _ in 0..3 {
        post(&s, &body).await;
    }
    for client in ["a", "b"] {
        let b = json!({"domain": "web", "descriptors": [{"entries": [{"key": "client", "value": client}]}]}).to_string();
        post(&s, &b).await;
    }
    let text = get("/metrics").await.unwrap().text().await.unwrap();
    if !crate::support::on_redis() {
        assert!(text.contains("sluice_counters_live 3"), "{text}");
    }
    for needle in [
        "sluice_rule_total_hits_total{key=\"web.k_two\"} 3",
        "sluice_rule_over_limit_total{key=\"web.k_two\"} 1",
        "sluice_rule_within_limit_total{key=\"web.k_two\"} 2",
        "sluice_rule_near_limit_total{key=\"web.k_two\"} 1",
        "sluice_rule_total_hits_total{key=\"web.client_a\"} 1",
        "sluice_rule_total_hits_total{key=\"web.client_b\"} 1",
        "sluice_config_load_success_total 1",
        "sluice_rpc_duration_seconds_count 5",
        "sluice_rpc_decisions_total{result=\"over_limit\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[tokio::test]
async fn per_value_metrics_are_capped() {
    let s = Sluice::start(CONFIG, &["--max-metric-keys", "5"]);
    for i in 0..20 {
        let b = json!({"domain": "web", "descriptors": [{"entries": [{"key": "client", "value": format!("c{i}")}]}]}).to_string();
        post(&s, &b).await;
    }
    let text = s.metrics().await;
    let series = text
        .lines()
        .filter(|l| l.starts_with("sluice_rule_total_hits_total{key=\"web.client_c"))
        .count();
    assert_eq!(series, 5, "{text}");
    assert!(
        text.contains("sluice_metric_key_overflow_total 15"),
        "{text}"
    );
    assert!(
        text.contains("sluice_rule_total_hits_total{key=\"web.client\"} 15"),
        "{text}"
    );
}

#[tokio::test]
async fn memory_only_live_counters_are_capped_and_overflow_is_metered() {
    let s = Sluice::start(CONFIG, &["--max-counters", "10"]);
    for i in 0..25 {
        let b = json!({"domain": "web", "descriptors": [{"entries": [{"key": "client", "value": format!("v{i}")}]}]}).to_string();
        assert_eq!(post(&s, &b).await.0, 200);
    }
    let text = s.metrics().await;
    assert!(text.contains("sluice_counters_live 10"), "{text}");
    assert!(text.contains("sluice_counters_overflow_total 15"), "{text}");
}
