//! examples/istio: what the EnvoyFilters patch into Istio's Envoys is
//! exactly what examples/istio/envoy.yaml runs (the rate-limit filter, the
//! virtual host's rate_limits, the cluster the filter calls), the
//! descriptors are those of examples/config/edge.yaml, and that Envoy,
//! for real, gets its decisions from sluice: 200s, then 429 at the limit.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize as _;
use serde_json::Value;

use crate::envoy::{get, start_envoy_from};
use crate::support::{Sluice, avoid_minute_boundary};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_docs(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The front listener's HTTP connection manager in examples/istio/envoy.yaml.
fn front_hcm(envoy: &Value) -> &Value {
    let listener = envoy["static_resources"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "front")
        .unwrap();
    &listener["filter_chains"][0]["filters"][0]["typed_config"]
}

#[test]
fn envoyfilter_patches_are_the_tested_envoy_config() {
    let filters = yaml_docs("examples/istio/envoyfilter.yaml");
    let envoy = &yaml_docs("examples/istio/envoy.yaml")[0];
    let hcm = front_hcm(envoy);
    let http_filters = hcm["http_filters"].as_array().unwrap();
    let vhost = &hcm["route_config"]["virtual_hosts"][0];

    let mut contexts = BTreeSet::new();
    for f in &filters {
        assert_eq!(f["apiVersion"], "networking.istio.io/v1alpha3");
        assert_eq!(f["kind"], "EnvoyFilter");
        assert!(f["spec"]["workloadSelector"]["labels"].is_object(), "{f}");
        let patches = f["spec"]["configPatches"].as_array().unwrap();
        assert_eq!(patches.len(), 2, "{f}");
        for p in patches {
            let context = p["match"]["context"].as_str().unwrap();
            contexts.insert(context.to_string());
            match p["applyTo"].as_str().unwrap() {
                "HTTP_FILTER" => {
                    // Inserted right before the router, as in envoy.yaml.
                    assert_eq!(p["patch"]["operation"], "INSERT_BEFORE");
                    let m = &p["match"]["listener"]["filterChain"]["filter"];
                    assert_eq!(m["name"], "envoy.filters.network.http_connection_manager");
                    assert_eq!(m["subFilter"]["name"], "envoy.filters.http.router");
                    let at = http_filters
                        .iter()
                        .position(|h| h == &p["patch"]["value"])
                        .unwrap_or_else(|| {
                            panic!("{context}: the HTTP_FILTER patch is not in envoy.yaml")
                        });
                    assert_eq!(http_filters[at + 1]["name"], "envoy.filters.http.router");
                }
                "VIRTUAL_HOST" => {
                    assert_eq!(p["patch"]["operation"], "MERGE");
                    let value = p["patch"]["value"].as_object().unwrap();
                    assert_eq!(value.len(), 1, "{context}: only rate_limits are merged");
                    assert_eq!(
                        value["rate_limits"], vhost["rate_limits"],
                        "{context}: rate_limits differ from envoy.yaml's"
                    );
                }
                other => panic!("unexpected patch {other}"),
            }
        }
    }
    assert_eq!(
        contexts,
        BTreeSet::from(["GATEWAY".to_string(), "SIDECAR_INBOUND".to_string()])
    );

    // The filter calls the cluster Istio makes for sluice's Service port
    // (the chart's grpc port, appProtocol grpc: HTTP/2); envoy.yaml has
    // one of that name, speaking HTTP/2.
    let rl = &http_filters[0]["typed_config"];
    let cluster = rl["rate_limit_service"]["grpc_service"]["envoy_grpc"]["cluster_name"]
        .as_str()
        .unwrap();
    assert_eq!(cluster, "outbound|8081||sluice.sluice.svc.cluster.local");
    let c = envoy["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster)
        .expect("envoy.yaml has the cluster the filter calls");
    assert!(
        c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            ["explicit_http_config"]["http2_protocol_options"]
            .is_object()
    );

    // The domain and the descriptor keys are examples/config/edge.yaml's.
    let edge = &yaml_docs("examples/config/edge.yaml")[0];
    assert_eq!(rl["domain"], edge["domain"]);
    let keys: BTreeSet<&str> = edge["descriptors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["key"].as_str().unwrap())
        .collect();
    for rate_limit in vhost["rate_limits"].as_array().unwrap() {
        for action in rate_limit["actions"].as_array().unwrap() {
            let (_, a) = action.as_object().unwrap().iter().next().unwrap();
            let key = a["descriptor_key"].as_str().unwrap();
            assert!(keys.contains(key), "descriptor key {key} not in edge.yaml");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_equivalent_envoy_enforces_sluice_limits() {
    avoid_minute_boundary(25).await;
    let edge = std::fs::read_to_string(root().join("examples/config/edge.yaml")).unwrap();
    let sluice = Sluice::start(&edge, &[]);
    let envoy = start_envoy_from(
        "examples/istio/envoy.yaml",
        sluice.config_dir(),
        sluice.grpc_addr.port(),
    )
    .await;

    // /limited (generic_key, limited): 5 a minute, then 429.
    for i in 0..5 {
        let r = get(&envoy, "/limited/a", &[]).await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(
            r.headers()["x-ratelimit-remaining"],
            (4 - i).to_string().as_str()
        );
    }
    assert_eq!(get(&envoy, "/limited/b", &[]).await.status(), 429);
    // /shadow: counted, never refused.
    for _ in 0..4 {
        assert_eq!(get(&envoy, "/shadow", &[]).await.status(), 200);
    }
    // (user, x-user) on any path: 3 a minute per user.
    for _ in 0..3 {
        assert_eq!(
            get(&envoy, "/any", &[("x-user", "carol")]).await.status(),
            200
        );
    }
    assert_eq!(
        get(&envoy, "/other", &[("x-user", "carol")]).await.status(),
        429
    );
    assert_eq!(
        get(&envoy, "/any", &[("x-user", "dave")]).await.status(),
        200
    );
    // No descriptor: no call, no limit.
    for _ in 0..8 {
        assert_eq!(get(&envoy, "/free", &[]).await.status(), 200);
    }
    let metrics = sluice.metrics().await;
    assert!(
        metrics.contains("sluice_rule_over_limit_total{key=\"edge.generic_key_limited\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_rule_shadow_mode_total{key=\"edge.generic_key_shadow\"} 2"),
        "{metrics}"
    );
}
