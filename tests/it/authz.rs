//! The gateway through the real binary: `envoy.service.auth.v3.Authorization/Check`
//! over gRPC and forward auth on `/auth` over HTTP, on SQLite (the key
//! store is not the subject; tests/it/keys.rs covers both databases).
//! Every answer: 200 with identity and the key kept from the upstream,
//! 401 (missing, unknown, wrong, revoked, disabled), 403 (scope), 429 (plan,
//! quota, the domain's descriptor limits), route settings and their
//! refusal, the failed-validation guard per client, usage per key.

use std::collections::HashMap;
use std::time::Duration;

use sluice::grpc::check_request::{
    AttributeContext, CheckRequest, HeaderEntry, HttpRequest, Request,
};
use sluice::grpc::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use sluice::grpc::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use sluice::grpc::pb::envoy::service::auth::v3::{
    CheckResponse, attribute_context, check_response,
};
use sluice::grpc::pb::sluice::v1 as pb;
use tonic::transport::Channel;

use crate::key_path::start_behind;
use crate::keys::{Admin, create_key, create_plan, limit, start_config};
use crate::support::avoid_minute_boundary;
use crate::support::db::{Kind, TestDb};
use crate::support::proxy::{Mode, Proxy};

pub(crate) const CONFIG: &str = "\
domain: api
authz:
  key_from: [header:x-api-key, bearer, query:api_key]
  scopes: [orders:read]
  descriptors:
    - [remote_address]
descriptors:
  - key: remote_address
    value: 198.51.100.1
    rate_limit: {unit: minute, requests_per_unit: 2}
";

/// A CheckRequest as Envoy sends it.
pub(crate) fn check(
    path: &str,
    remote: &str,
    headers: &[(&str, &str)],
    ext: &[(&str, &str)],
) -> CheckRequest {
    CheckRequest {
        attributes: Some(Box::new(AttributeContext {
            source: Some(attribute_context::Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: remote.into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(40000)),
                        ..SocketAddress::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    host: "api.example".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| HeaderEntry::new(k, v))
                        .collect(),
                    ..Default::default()
                }),
            }),
            context_extensions: ext
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        })),
    }
}

/// A Check answer, flattened.
#[derive(Debug)]
pub(crate) struct Got {
    pub rpc: i32,
    pub http: u16,
    /// Allow: headers set upstream; deny: the answer's headers.
    pub headers: HashMap<String, String>,
    pub removed: Vec<String>,
    pub removed_query: Vec<String>,
    /// Allow: headers for the client.
    pub client_headers: HashMap<String, String>,
    pub body: String,
    pub metadata: HashMap<String, String>,
}

impl Got {
    pub(crate) fn code(&self) -> String {
        if self.http == 200 {
            return "OK".into();
        }
        let v: serde_json::Value = serde_json::from_str(&self.body).unwrap();
        v["code"].as_str().unwrap().to_string()
    }
}

fn pairs(
    h: &[sluice::grpc::pb::envoy::config::core::v3::HeaderValueOption],
) -> HashMap<String, String> {
    h.iter()
        .map(|o| {
            // Every header replaces the client's (never appended).
            assert_eq!(o.append_action, 2, "{o:?}");
            let h = o.header.as_ref().unwrap();
            (h.key.clone(), h.value.clone())
        })
        .collect()
}

pub(crate) fn flatten(r: CheckResponse) -> Got {
    let rpc = r.status.as_ref().map_or(0, |s| s.code);
    let metadata = r
        .dynamic_metadata
        .map(|m| {
            m.fields
                .into_iter()
                .map(|(k, v)| match v.kind {
                    Some(pbjson_types::value::Kind::StringValue(s)) => (k, s),
                    other => panic!("metadata {k}: {other:?}"),
                })
                .collect()
        })
        .unwrap_or_default();
    match r.http_response.unwrap() {
        check_response::HttpResponse::OkResponse(ok) => {
            assert_eq!(rpc, 0);
            Got {
                rpc,
                http: 200,
                headers: pairs(&ok.headers),
                removed: ok.headers_to_remove,
                removed_query: ok.query_parameters_to_remove,
                client_headers: pairs(&ok.response_headers_to_add),
                body: String::new(),
                metadata,
            }
        }
        check_response::HttpResponse::DeniedResponse(d) => Got {
            rpc,
            http: u16::try_from(d.status.unwrap().code).unwrap(),
            headers: pairs(&d.headers),
            removed: Vec::new(),
            removed_query: Vec::new(),
            client_headers: HashMap::new(),
            body: d.body,
            metadata,
        },
    }
}

async fn ask(c: &mut AuthorizationClient<Channel>, r: CheckRequest) -> Got {
    flatten(c.check(r).await.unwrap().into_inner())
}

/// The problem body of a denial, parsed.
fn problem(g: &Got) -> serde_json::Value {
    assert_eq!(g.headers["content-type"], "application/problem+json");
    serde_json::from_str(&g.body).unwrap()
}

struct Setup {
    sluice: crate::support::Sluice,
    admin: Admin,
    client: AuthorizationClient<Channel>,
    _db: TestDb,
}

async fn setup(extra: &[&str]) -> Setup {
    let db = TestDb::new(Kind::Sqlite).await;
    let sluice = start_config(&db, CONFIG, extra);
    let admin = Admin::new(&sluice, "all").await;
    let client = AuthorizationClient::new(sluice.channel().await);
    Setup {
        sluice,
        admin,
        client,
        _db: db,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_allows_a_valid_key_and_tells_the_upstream_who_called() {
    avoid_minute_boundary(20).await;
    let mut t = setup(&[]).await;
    create_plan(&mut t.admin, "starter", vec![limit(5, pb::Unit::Minute)]).await;
    let (key, secret) = create_key(&mut t.admin, "starter", &["orders:read", "orders:write"]).await;
    let api = [("sluice.domain", "api")];

    // x-api-key: identity set (replacing what the client sent), the key's
    // header removed, IETF rate-limit headers for the client, metadata.
    let g = ask(
        &mut t.client,
        check(
            "/orders",
            "203.0.113.7",
            &[("x-api-key", &secret), ("x-sluice-key-id", "forged")],
            &api,
        ),
    )
    .await;
    assert_eq!(g.code(), "OK", "{g:?}");
    assert_eq!(g.headers["x-sluice-key-id"], key.id);
    assert_eq!(g.headers["x-sluice-owner"], "acme");
    assert_eq!(g.headers["x-sluice-plan"], "starter");
    assert_eq!(g.headers["x-sluice-scopes"], "orders:read orders:write");
    assert_eq!(g.removed, ["x-api-key"]);
    assert!(g.client_headers["ratelimit"].contains(";r=4;"), "{g:?}");
    assert!(
        g.client_headers["ratelimit-policy"].contains(";q=5;w=60"),
        "{g:?}"
    );
    assert_eq!(g.metadata["key_id"], key.id);
    assert_eq!(g.metadata["owner"], "acme");
    assert_eq!(g.metadata["plan"], "starter");

    // Bearer: authorization removed. Query parameter: removed from the query.
    let g = ask(
        &mut t.client,
        check(
            "/orders",
            "203.0.113.7",
            &[("authorization", &format!("Bearer {secret}"))],
            &api,
        ),
    )
    .await;
    assert_eq!(
        (g.code().as_str(), g.removed.as_slice()),
        ("OK", &["authorization".to_string()][..])
    );
    let g = ask(
        &mut t.client,
        check(
            &format!("/orders?api_key={secret}&page=2"),
            "203.0.113.7",
            &[],
            &api,
        ),
    )
    .await;
    assert_eq!(g.code(), "OK");
    assert_eq!(g.removed_query, ["api_key"]);

    // A key without scopes: the scopes header is removed, not left to the client.
    let (_, bare) = create_key(&mut t.admin, "starter", &[]).await;
    let g = ask(
        &mut t.client,
        check(
            "/",
            "203.0.113.7",
            &[("x-api-key", &bare)],
            &[("sluice.scopes", "")],
        ),
    )
    .await;
    assert_eq!(g.code(), "OK", "{g:?}");
    assert!(!g.headers.contains_key("x-sluice-scopes"));
    assert!(g.removed.contains(&"x-sluice-scopes".to_string()), "{g:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_refuses_missing_unknown_and_wrong_keys_alike_and_lacking_scopes() {
    let mut t = setup(&[]).await;
    create_plan(&mut t.admin, "starter", vec![limit(100, pb::Unit::Minute)]).await;
    let (key, secret) = create_key(&mut t.admin, "starter", &["orders:read"]).await;
    let api = [("sluice.domain", "api")];

    let g = ask(&mut t.client, check("/", "203.0.113.7", &[], &api)).await;
    assert_eq!((g.rpc, g.http, g.code().as_str()), (16, 401, "MISSING"));
    assert_eq!(g.headers["www-authenticate"], "Bearer realm=\"api\"");
    assert_eq!(problem(&g)["status"], 401);

    // Unknown, a real key mistyped, an absurdly long one: one answer.
    let mut wrong = secret.clone();
    wrong.pop();
    wrong.push(if secret.ends_with('x') { 'y' } else { 'x' });
    let long = "k".repeat(5000);
    let mut bodies = Vec::new();
    for k in ["sk_live_nonesuch", wrong.as_str(), long.as_str()] {
        let g = ask(
            &mut t.client,
            check("/", "203.0.113.7", &[("x-api-key", k)], &api),
        )
        .await;
        assert_eq!((g.rpc, g.http, g.code().as_str()), (16, 401, "NOT_FOUND"));
        assert_eq!(
            g.headers["www-authenticate"],
            "Bearer realm=\"api\", error=\"invalid_token\""
        );
        assert!(!g.body.contains(k.get(..12).unwrap_or(k)), "{}", g.body);
        bodies.push(g.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");

    // The domain requires orders:read; a route may require more.
    let g = ask(
        &mut t.client,
        check("/", "203.0.113.7", &[("x-api-key", &secret)], &api),
    )
    .await;
    assert_eq!(g.code(), "OK");
    let g = ask(
        &mut t.client,
        check(
            "/",
            "203.0.113.7",
            &[("x-api-key", &secret)],
            &[
                ("sluice.domain", "api"),
                ("sluice.scopes", "orders:read orders:write"),
            ],
        ),
    )
    .await;
    assert_eq!(
        (g.rpc, g.http, g.code().as_str()),
        (7, 403, "INSUFFICIENT_SCOPE")
    );
    assert!(
        problem(&g)["detail"]
            .as_str()
            .unwrap()
            .contains("orders:write")
    );

    // Disabled, then revoked: 401 each, told apart.
    let r = t.admin.req(pb::UpdateKeyRequest {
        id: key.id.clone(),
        enabled: Some(false),
        ..Default::default()
    });
    t.admin.client.update_key(r).await.unwrap();
    let g = ask(
        &mut t.client,
        check("/", "203.0.113.7", &[("x-api-key", &secret)], &api),
    )
    .await;
    assert_eq!((g.http, g.code().as_str()), (401, "DISABLED"));
    let r = t.admin.req(pb::RevokeKeyRequest {
        id: key.id.clone(),
        reason: String::new(),
    });
    t.admin.client.revoke_key(r).await.unwrap();
    let g = ask(
        &mut t.client,
        check("/", "203.0.113.7", &[("x-api-key", &secret)], &api),
    )
    .await;
    assert_eq!((g.http, g.code().as_str()), (401, "REVOKED"));
}

#[tokio::test(flavor = "multi_thread")]
async fn check_decides_the_plan_the_quota_and_the_domains_descriptors() {
    avoid_minute_boundary(20).await;
    let mut t = setup(&[]).await;
    create_plan(&mut t.admin, "starter", vec![limit(3, pb::Unit::Minute)]).await;
    let (key, secret) = create_key(&mut t.admin, "starter", &["orders:read"]).await;
    let api = [("sluice.domain", "api")];
    let k = [("x-api-key", secret.as_str())];

    // The plan: 3 a minute, then 429 with Retry-After and RateLimit.
    for _ in 0..3 {
        assert_eq!(
            ask(&mut t.client, check("/", "203.0.113.7", &k, &api))
                .await
                .code(),
            "OK"
        );
    }
    let g = ask(&mut t.client, check("/", "203.0.113.7", &k, &api)).await;
    assert_eq!((g.rpc, g.http, g.code().as_str()), (8, 429, "RATE_LIMITED"));
    let wait: u64 = g.headers["retry-after"].parse().unwrap();
    assert!((1..=60).contains(&wait), "{g:?}");
    assert!(g.headers["ratelimit"].contains(";r=0;"), "{g:?}");

    // The domain's descriptors: 198.51.100.1 may make 2 a minute, whatever
    // its key; a route cost of 2 spends both at once.
    let (_, other) = create_key(&mut t.admin, "starter", &["orders:read"]).await;
    let o = [("x-api-key", other.as_str())];
    let g = ask(
        &mut t.client,
        check(
            "/",
            "198.51.100.1",
            &o,
            &[("sluice.domain", "api"), ("sluice.cost", "2")],
        ),
    )
    .await;
    assert_eq!(g.code(), "OK", "{g:?}");
    let g = ask(&mut t.client, check("/", "198.51.100.1", &o, &api)).await;
    assert_eq!(g.code(), "RATE_LIMITED", "{g:?}");

    // A quota: USAGE_EXCEEDED once it is spent.
    let m = pb::CreatePlanRequest {
        plan: Some(pb::Plan {
            name: "metered".into(),
            monthly_quota: Some(pb::Quota {
                requests: 2,
                refill_day: 1,
            }),
            ..pb::Plan::default()
        }),
    };
    let r = t.admin.req(m);
    t.admin.client.create_plan(r).await.unwrap();
    let (_, metered) = create_key(&mut t.admin, "metered", &["orders:read"]).await;
    let m = [("x-api-key", metered.as_str())];
    for _ in 0..2 {
        assert_eq!(
            ask(&mut t.client, check("/", "203.0.113.8", &m, &api))
                .await
                .code(),
            "OK"
        );
    }
    let g = ask(&mut t.client, check("/", "203.0.113.8", &m, &api)).await;
    assert_eq!(
        (g.http, g.code().as_str()),
        (429, "USAGE_EXCEEDED"),
        "{g:?}"
    );
    assert!(g.headers.contains_key("retry-after"));

    // Usage per key per day: 3 admitted, 1 limited.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = t.admin.req(pb::GetUsageRequest {
        key_id: key.id.clone(),
        ..Default::default()
    });
    let days = t.admin.client.get_usage(r).await.unwrap().into_inner().days;
    let total = days
        .iter()
        .fold((0, 0), |t, d| (t.0 + d.admitted, t.1 + d.limited));
    assert_eq!(total, (3, 1), "{days:?}");

    let m = t.sluice.metrics().await;
    assert!(
        m.contains("sluice_authz_checks_total{transport=\"grpc\",code=\"RATE_LIMITED\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_refuses_route_settings_it_cannot_use_and_guards_each_client() {
    let mut t = setup(&["--failed-validations-per-minute", "3"]).await;
    create_plan(&mut t.admin, "starter", vec![limit(100, pb::Unit::Minute)]).await;
    let (_, secret) = create_key(&mut t.admin, "starter", &["orders:read"]).await;
    let k = [("x-api-key", secret.as_str())];
    for ext in [
        [("sluice.domain", "nonesuch"), ("sluice.cost", "1")],
        [("sluice.domain", "api"), ("sluice.cost", "-1")],
        [("sluice.domain", "api"), ("sluice.cost", "1000001")],
        [("sluice.domain", "api"), ("sluice.scopes", "bad\u{7f}")],
    ] {
        let g = ask(&mut t.client, check("/", "203.0.113.7", &k, &ext)).await;
        assert_eq!(
            (g.rpc, g.http, g.code().as_str()),
            (13, 500, "MISCONFIGURED"),
            "{ext:?}"
        );
    }
    // No domain at all: the key's own limits, the default key sources.
    let g = ask(&mut t.client, check("/", "203.0.113.7", &k, &[])).await;
    assert_eq!(g.code(), "OK", "{g:?}");

    // Three failures from one client, then it is refused even with a good
    // key; another client behind the same Envoy is not.
    for _ in 0..3 {
        let g = ask(
            &mut t.client,
            check("/", "203.0.113.66", &[("x-api-key", "sk_live_guess")], &[]),
        )
        .await;
        assert_eq!(g.code(), "NOT_FOUND");
    }
    let g = ask(&mut t.client, check("/", "203.0.113.66", &k, &[])).await;
    assert_eq!((g.http, g.code().as_str()), (429, "TOO_MANY_FAILURES"));
    assert_eq!(g.headers["retry-after"], "60");
    let g = ask(&mut t.client, check("/", "203.0.113.67", &k, &[])).await;
    assert_eq!(g.code(), "OK");
}

/// `/auth` as nginx, Traefik and Caddy call it.
/// The key store (PostgreSQL behind a proxy) goes down: a key it cannot
/// check is 503 KEY_STORE_UNAVAILABLE with Retry-After whatever
/// `--key-store-failure-mode` says (the gateway has no identity to let
/// through), and a key cached before the outage passes under `cached`
/// only. Never an allow without a key the store vouched for.
#[tokio::test(flavor = "multi_thread")]
async fn check_answers_per_the_failure_mode_when_the_key_store_is_down() {
    let db = TestDb::new(Kind::Postgres).await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let api = [("sluice.domain", "api")];
    let ask_with = |secret: &str| check("/orders", "203.0.113.40", &[("x-api-key", secret)], &api);
    for mode in ["cached", "deny", "allow"] {
        proxy.set(Mode::Forward);
        let s = start_behind(
            &db,
            &proxy,
            CONFIG,
            &["--key-cache-ttl", "1", "--key-store-failure-mode", mode],
        );
        s.wait_key_listener();
        let mut admin = Admin::new(&s, "all").await;
        let plan = format!("outage-{mode}");
        create_plan(&mut admin, &plan, vec![limit(100, pb::Unit::Hour)]).await;
        let (key, seen) = create_key(&mut admin, &plan, &["orders:read"]).await;
        let (_, unseen) = create_key(&mut admin, &plan, &["orders:read"]).await;
        let mut c = AuthorizationClient::new(s.channel().await);
        // Cached, then stale (--key-cache-ttl 1).
        let g = ask(&mut c, ask_with(&seen)).await;
        assert_eq!(g.code(), "OK", "{mode}: {g:?}");
        tokio::time::sleep(Duration::from_millis(1200)).await;

        proxy.set(Mode::Refuse);
        let g = ask(&mut c, ask_with(&unseen)).await;
        assert_eq!(
            (g.http, g.code().as_str()),
            (503, "KEY_STORE_UNAVAILABLE"),
            "{mode}: {g:?}"
        );
        assert_eq!(g.rpc, tonic::Code::Unavailable as i32, "{mode}");
        assert!(g.headers.contains_key("retry-after"), "{mode}: {g:?}");
        assert_eq!(problem(&g)["status"], 503);
        let g = ask(&mut c, ask_with(&seen)).await;
        if mode == "cached" {
            assert_eq!(g.code(), "OK", "{mode}: the cached key: {g:?}");
            assert_eq!(g.headers["x-sluice-key-id"], key.id);
        } else {
            assert_eq!(
                (g.http, g.code().as_str()),
                (503, "KEY_STORE_UNAVAILABLE"),
                "{mode}: the cached key: {g:?}"
            );
        }
    }
}

async fn forward(t: &Setup, query: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .get(t.sluice.http(&format!("/auth{query}")))
        .timeout(Duration::from_secs(5));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_auth_gives_the_same_answers_over_http() {
    avoid_minute_boundary(20).await;
    let mut t = setup(&[]).await;
    create_plan(&mut t.admin, "starter", vec![limit(2, pb::Unit::Minute)]).await;
    let (key, secret) = create_key(&mut t.admin, "starter", &["orders:read"]).await;
    let q = "?sluice.domain=api";
    let orig = [("x-original-uri", "/orders"), ("x-real-ip", "203.0.113.7")];
    let r = forward(&t, q, &h_with(&orig, &secret)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sluice-key-id"], key.id.as_str());
    assert_eq!(r.headers()["x-sluice-owner"], "acme");
    assert_eq!(r.headers()["x-sluice-plan"], "starter");
    assert_eq!(r.headers()["x-sluice-scopes"], "orders:read");
    assert_eq!(r.headers()["x-envoy-auth-headers-to-remove"], "x-api-key");
    assert!(r.headers().contains_key("ratelimit"));

    let r = forward(&t, q, &orig).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"api\"");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "MISSING");

    let r = forward(&t, q, &[("x-api-key", "sk_live_nonesuch")]).await;
    assert_eq!(r.status(), 401);
    let r = forward(
        &t,
        "?sluice.domain=api&sluice.scopes=orders:write",
        &[("x-api-key", &secret)],
    )
    .await;
    assert_eq!(r.status(), 403);

    // The second request of the plan, then 429 with Retry-After.
    assert_eq!(forward(&t, q, &h_with(&orig, &secret)).await.status(), 200);
    let r = forward(&t, q, &h_with(&orig, &secret)).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMITED");

    // The client is X-Real-IP, else the last X-Forwarded-For entry:
    // 198.51.100.1 may make 2 a minute (a key whose plan has room).
    create_plan(&mut t.admin, "roomy", vec![limit(100, pb::Unit::Minute)]).await;
    let (_, other) = create_key(&mut t.admin, "roomy", &["orders:read"]).await;
    let xff = [
        ("x-api-key", other.as_str()),
        ("x-forwarded-for", "10.0.0.1, 198.51.100.1"),
        ("x-forwarded-uri", "/orders"),
    ];
    assert_eq!(
        forward(&t, "?sluice.domain=api&sluice.cost=2", &xff)
            .await
            .status(),
        200
    );
    assert_eq!(forward(&t, q, &xff).await.status(), 429);

    // /auth/<path>, as Envoy's HTTP service calls it, and POST.
    let (_, third) = create_key(&mut t.admin, "starter", &[]).await;
    let r = reqwest::Client::new()
        .post(t.sluice.http("/auth/orders/7?x=1"))
        .header("x-api-key", &third)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let m = t.sluice.metrics().await;
    assert!(
        m.contains("sluice_authz_checks_total{transport=\"http\",code=\"OK\"}"),
        "{m}"
    );
}

fn h_with<'a>(orig: &[(&'a str, &'a str)], secret: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut v = orig.to_vec();
    v.push(("x-api-key", secret));
    v
}
