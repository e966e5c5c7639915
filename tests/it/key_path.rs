//! The key-aware request path never fails open by accident, through the
//! real binary: malformed keys are invalid keys; a key store that is slow
//! (a lock held by the test on PostgreSQL), hung or down (a proxy the
//! test controls) or broken (SQLite) is answered by
//! `--key-store-failure-mode`, visible in metrics and readiness, with the
//! request's other descriptors still decided; a request's lookups run
//! together and concurrent misses share one; a flood of random keys costs
//! bounded lookups; the failed-validation guard tells callers behind one
//! proxy apart; `POST /json` is keyed like gRPC.

use std::time::Duration;

use sluice::grpc::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use sluice::grpc::pb::sluice::v1 as pb;
use sluice::grpc::pb::sluice::v1::key_service_client::KeyServiceClient;
use sqlx::Connection as _;

use crate::keys::{Admin, create_key, create_plan, limit, start_config};
use crate::support::db::{Kind, TestDb};
use crate::support::proxy::{Mode, Proxy};
use crate::support::{OK, OVER, Sluice, call, desc, eventually, metric, req, sample};

/// Key descriptors in `gw`; `remote_address` is an ordinary rule beside
/// them, and names the caller for the failed-validation guard.
fn config(on_invalid: &str) -> String {
    format!(
        "domain: gw\n\
         api_key: {{descriptor_key: x-api-key, on_invalid: {on_invalid}, caller_entry: remote_address}}\n\
         descriptors:\n  \
           - key: remote_address\n    \
             rate_limit: {{unit: hour, requests_per_unit: 1000}}\n"
    )
}

async fn readyz(s: &Sluice) -> (u16, String) {
    let r = reqwest::get(s.http("/readyz")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A request: the key descriptor, then a per-IP one.
fn keyed(key: &str, ip: &str) -> RateLimitRequest {
    req(
        "gw",
        vec![desc(&[("x-api-key", key)]), desc(&[("remote_address", ip)])],
    )
}

fn problem_code(r: &RateLimitResponse) -> String {
    let body: serde_json::Value = serde_json::from_slice(&r.raw_body).unwrap();
    body["code"].as_str().unwrap().to_string()
}

/// Starts sluice on `config` with the key store `db` reached through
/// `proxy`, each lookup bounded at 300 ms, and `extra` arguments.
pub(crate) fn start_behind(db: &TestDb, proxy: &Proxy, config: &str, extra: &[&str]) -> Sluice {
    let url = proxy.url_for(&db.url);
    let mut args = vec!["--database-url", url.as_str(), "--key-store-timeout", "300"];
    args.extend_from_slice(extra);
    start_config(db, config, &args)
}

/// Plan `p` (100 per hour) and `n` keys on it.
async fn keys_on_a_plan(s: &Sluice, n: usize) -> Vec<String> {
    let mut a = Admin::new(s, "all").await;
    create_plan(&mut a, "p", vec![limit(100, pb::Unit::Hour)]).await;
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(create_key(&mut a, "p", &[]).await.1);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_keys_are_invalid_keys_and_the_rest_is_decided() {
    let db = TestDb::new(Kind::Sqlite).await;
    let s = start_config(&db, &config("deny"), &[]);
    let mut rls = s.client().await;
    let too_long = format!("sk_live_{}", "a".repeat(300));
    for bad in [
        too_long.as_str(),
        "sk_live_abc def",
        "sk_live_é",
        "../../etc",
        "",
    ] {
        let r = call(&mut rls, keyed(bad, "10.1.0.1")).await;
        assert_eq!(r.overall_code, OVER, "{bad:?}");
        assert_eq!(r.statuses[0].code, OVER);
        assert_eq!(problem_code(&r), "NOT_FOUND");
        let body = String::from_utf8_lossy(&r.raw_body).into_owned();
        assert!(bad.is_empty() || !body.contains(bad), "echoed: {body}");
        // The per-IP descriptor was still decided.
        assert!(r.statuses[1].current_limit.is_some(), "{r:?}");
    }
    assert_eq!(metric(&s, "sluice_key_store_lookups_total").await, 0);

    // ValidateKey: an unknown key, not a bad argument.
    let mut kc = KeyServiceClient::new(s.channel().await);
    let v = kc
        .validate_key(pb::ValidateKeyRequest {
            key: too_long.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.code, pb::ValidationCode::NotFound as i32);

    let db2 = TestDb::new(Kind::Sqlite).await;
    let s2 = start_config(&db2, &config("allow"), &[]);
    let mut rls2 = s2.client().await;
    let r = call(&mut rls2, keyed(&too_long, "10.1.0.1")).await;
    assert_eq!(r.overall_code, OK);
    assert!(r.statuses[0].current_limit.is_none());
}

/// Holds `LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE` until dropped
/// (rolled back): every key lookup waits on it.
struct TableLock(sqlx::PgConnection);

impl TableLock {
    async fn take(url: &str) -> TableLock {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut c).await.unwrap();
        sqlx::query("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
            .execute(&mut c)
            .await
            .unwrap();
        TableLock(c)
    }

    async fn release(mut self) {
        sqlx::query("ROLLBACK").execute(&mut self.0).await.unwrap();
        self.0.close().await.unwrap();
    }
}

/// Key lookups of `db` waiting on a lock.
async fn waiting_on_locks(url: &str) -> i64 {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock' \
         AND query LIKE '%FROM key_secrets%' AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_postgres_is_answered_from_the_cache_or_denied() {
    let db = TestDb::new(Kind::Postgres).await;
    let s = start_config(
        &db,
        &config("deny"),
        &["--key-store-timeout", "300", "--key-cache-ttl", "1"],
    );
    let keys = keys_on_a_plan(&s, 2).await;
    let (cached, uncached) = (&keys[0], &keys[1]);
    let mut rls = s.client().await;
    let r = call(&mut rls, keyed(cached, "10.2.0.1")).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 99));
    // Past its TTL: only the failure mode may use it now.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let lock = TableLock::take(&db.url).await;
    let r = call(&mut rls, keyed(uncached, "10.2.0.1")).await;
    assert_eq!(r.overall_code, OVER, "{r:?}");
    assert_eq!(r.statuses[0].code, OVER);
    assert_eq!(problem_code(&r), "KEY_STORE_UNAVAILABLE");
    assert!(
        r.statuses[1].current_limit.is_some(),
        "per-IP decided: {r:?}"
    );
    let r = call(&mut rls, keyed(cached, "10.2.0.1")).await;
    assert_eq!(r.overall_code, OK, "{r:?}");
    assert_eq!(
        r.statuses[0].limit_remaining, 98,
        "decided on the key's plan"
    );

    let (code, text) = readyz(&s).await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("key store unreachable"), "{text}");
    let m = s.metrics().await;
    assert!(sample(&m, "sluice_key_store_failures_total") >= 1, "{m}");
    assert!(
        sample(
            &m,
            "sluice_key_store_degraded_answers_total{answer=\"deny\"}"
        ) >= 1
    );
    assert!(
        sample(
            &m,
            "sluice_key_store_degraded_answers_total{answer=\"cached\"}"
        ) >= 1
    );
    assert_eq!(sample(&m, "sluice_key_store_degraded"), 1);
    // statement_timeout: PostgreSQL gave up the waiting lookups itself.
    assert!(
        eventually(Duration::from_secs(5), || async {
            waiting_on_locks(&db.url).await == 0
        })
        .await,
        "lookups still waiting on the lock"
    );

    lock.release().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            readyz(&s).await == (200, "ready\n".to_string())
        })
        .await,
        "{:?}",
        readyz(&s).await
    );
    let r = call(&mut rls, keyed(uncached, "10.2.0.1")).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 99));
}

#[tokio::test(flavor = "multi_thread")]
async fn deny_and_allow_failure_modes_and_readiness() {
    let db = TestDb::new(Kind::Postgres).await;
    let deny = start_config(
        &db,
        &config("deny"),
        &[
            "--key-store-timeout",
            "300",
            "--key-cache-ttl",
            "1",
            "--key-store-failure-mode",
            "deny",
        ],
    );
    let allow = start_config(
        &db,
        &config("deny"),
        &[
            "--key-store-timeout",
            "300",
            "--key-store-failure-mode",
            "allow",
        ],
    );
    let keys = keys_on_a_plan(&deny, 1).await;
    let mut d = deny.client().await;
    let mut a = allow.client().await;
    assert_eq!(
        call(&mut d, keyed(&keys[0], "10.3.0.1")).await.overall_code,
        OK
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let lock = TableLock::take(&db.url).await;
    // deny: even a key cached a moment ago.
    let r = call(&mut d, keyed(&keys[0], "10.3.0.1")).await;
    assert_eq!(r.overall_code, OVER, "{r:?}");
    assert_eq!(problem_code(&r), "KEY_STORE_UNAVAILABLE");
    // allow: no limit for the key, the rest decided.
    let r = call(&mut a, keyed(&keys[0], "10.3.0.1")).await;
    assert_eq!(r.overall_code, OK, "{r:?}");
    assert!(r.statuses[0].current_limit.is_none());
    assert!(r.statuses[1].current_limit.is_some());
    assert!(
        sample(
            &allow.metrics().await,
            "sluice_key_store_degraded_answers_total{answer=\"allow\"}"
        ) >= 1
    );
    // Ready, degraded, in every mode: taking every replica out of
    // rotation would let a proxy that fails open skip every limit.
    for s in [&deny, &allow] {
        let (code, text) = readyz(s).await;
        assert_eq!(code, 200, "{text}");
        assert!(text.contains("key store unreachable"), "{text}");
    }
    lock.release().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            readyz(&deny).await == (200, "ready\n".to_string())
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_or_stopped_postgres_is_answered_within_the_bound() {
    let db = TestDb::new(Kind::Postgres).await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let s = start_behind(&db, &proxy, &config("deny"), &["--key-cache-ttl", "1"]);
    s.wait_key_listener();
    let keys = keys_on_a_plan(&s, 3).await;
    let mut rls = s.client().await;
    assert_eq!(
        call(&mut rls, keyed(&keys[0], "10.4.0.1"))
            .await
            .overall_code,
        OK
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;

    for (mode, uncached) in [(Mode::Hang, &keys[1]), (Mode::Refuse, &keys[2])] {
        proxy.set(mode);
        let r = call(&mut rls, keyed(uncached, "10.4.0.1")).await;
        assert_eq!(r.overall_code, OVER, "{mode:?}: {r:?}");
        assert_eq!(problem_code(&r), "KEY_STORE_UNAVAILABLE");
        assert!(r.statuses[1].current_limit.is_some());
        let r = call(&mut rls, keyed(&keys[0], "10.4.0.1")).await;
        assert_eq!(r.overall_code, OK, "{mode:?}: the cached key: {r:?}");
        assert!(r.statuses[0].current_limit.is_some());
    }
    proxy.set(Mode::Forward);
    assert!(
        eventually(Duration::from_secs(10), || async {
            readyz(&s).await == (200, "ready\n".to_string())
        })
        .await,
        "{:?}",
        readyz(&s).await
    );
    let r = call(&mut rls, keyed(&keys[2], "10.4.0.1")).await;
    assert_eq!(r.overall_code, OK, "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_sqlite_key_store_is_answered_by_the_failure_mode() {
    let db = TestDb::new(Kind::Sqlite).await;
    let s = start_config(&db, &config("deny"), &["--key-store-timeout", "300"]);
    let keys = keys_on_a_plan(&s, 1).await;
    let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("ALTER TABLE key_secrets RENAME TO key_secrets_away")
        .execute(&mut c)
        .await
        .unwrap();
    let mut rls = s.client().await;
    let r = call(&mut rls, keyed(&keys[0], "10.5.0.1")).await;
    assert_eq!(r.overall_code, OVER, "{r:?}");
    assert_eq!(problem_code(&r), "KEY_STORE_UNAVAILABLE");
    assert!(r.statuses[1].current_limit.is_some());
    assert!(metric(&s, "sluice_key_store_failures_total").await >= 1);
    sqlx::query("ALTER TABLE key_secrets_away RENAME TO key_secrets")
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            call(&mut s.client().await, keyed(&keys[0], "10.5.0.1"))
                .await
                .overall_code
                == OK
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lookups_run_together_and_concurrent_misses_share_one() {
    let db = TestDb::new(Kind::Postgres).await;
    let s = start_config(&db, &config("deny"), &["--key-store-timeout", "20000"]);
    let keys = keys_on_a_plan(&s, 4).await;
    let before = metric(&s, "sluice_key_store_lookups_total").await;

    // One request, three keys not cached: three lookups at once.
    let lock = TableLock::take(&db.url).await;
    let three = req(
        "gw",
        keys[..3]
            .iter()
            .map(|k| desc(&[("x-api-key", k.as_str())]))
            .collect(),
    );
    let mut rls = s.client().await;
    let pending = tokio::spawn(async move { call(&mut rls, three).await });
    assert!(
        eventually(Duration::from_secs(5), || async {
            waiting_on_locks(&db.url).await == 3
        })
        .await,
        "the three lookups are not in flight together: {}",
        waiting_on_locks(&db.url).await
    );
    lock.release().await;
    let r = pending.await.unwrap();
    assert_eq!(r.overall_code, OK, "{r:?}");
    assert!(
        r.statuses.iter().all(|st| st.limit_remaining == 99),
        "{r:?}"
    );

    // Twenty requests for one key not cached: one lookup.
    let lock = TableLock::take(&db.url).await;
    let mut calls = Vec::new();
    for _ in 0..20 {
        let mut c = s.client().await;
        let r = keyed(&keys[3], "10.6.0.1");
        calls.push(tokio::spawn(async move { call(&mut c, r).await }));
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&s, "sluice_key_store_shared_lookups_total").await >= 19
        })
        .await
    );
    assert_eq!(waiting_on_locks(&db.url).await, 1);
    lock.release().await;
    let mut left = Vec::new();
    for c in calls {
        let r = c.await.unwrap();
        assert_eq!(r.overall_code, OK, "{r:?}");
        left.push(r.statuses[0].limit_remaining);
    }
    left.sort_unstable();
    assert_eq!(left, (80..100).collect::<Vec<u32>>(), "each counted once");
    assert_eq!(
        metric(&s, "sluice_key_store_lookups_total").await - before,
        4,
        "three keys, then one"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_random_keys_costs_bounded_lookups() {
    let db = TestDb::new(Kind::Sqlite).await;
    let s = start_config(
        &db,
        &config("allow"),
        &["--failed-validations-per-minute", "20"],
    );
    let keys = keys_on_a_plan(&s, 2).await;
    let mut rls = s.client().await;
    // A valid key, cached before the flood.
    let r = call(&mut rls, keyed(&keys[0], "10.7.0.1")).await;
    assert_eq!(r.statuses[0].limit_remaining, 99);
    let before = metric(&s, "sluice_key_store_lookups_total").await;
    for i in 0..200 {
        let r = call(
            &mut rls,
            keyed(&format!("sk_live_random{i:04}"), "10.7.0.1"),
        )
        .await;
        assert_eq!(r.overall_code, OK, "on_invalid: allow");
    }
    let lookups = metric(&s, "sluice_key_store_lookups_total").await - before;
    assert!(lookups <= 20, "{lookups} lookups for 200 random keys");
    assert!(metric(&s, "sluice_key_lookups_refused_total").await >= 180);
    // The flooder's cached key is still decided on its plan; an uncached
    // one is not looked up for it any more.
    let r = call(&mut rls, keyed(&keys[0], "10.7.0.1")).await;
    assert_eq!(r.statuses[0].limit_remaining, 98);
    let r = call(&mut rls, keyed(&keys[1], "10.7.0.1")).await;
    assert!(r.statuses[0].current_limit.is_none(), "{r:?}");
    // Another caller is not affected.
    let r = call(&mut rls, keyed(&keys[1], "10.7.0.2")).await;
    assert_eq!(r.statuses[0].limit_remaining, 99, "{r:?}");

    // One wrong key over and over: one lookup (the negative cache).
    let db2 = TestDb::new(Kind::Sqlite).await;
    let s2 = start_config(
        &db2,
        &config("allow"),
        &["--failed-validations-per-minute", "0"],
    );
    let mut rls2 = s2.client().await;
    for _ in 0..50 {
        call(&mut rls2, keyed("sk_live_wrong", "10.7.0.3")).await;
    }
    assert_eq!(metric(&s2, "sluice_key_store_lookups_total").await, 1);
}

async fn validate_as(s: &Sluice, key: &str, forwarded_for: &str) -> Result<i32, tonic::Code> {
    let mut c = KeyServiceClient::new(s.channel().await);
    let mut r = tonic::Request::new(pb::ValidateKeyRequest {
        key: key.into(),
        ..Default::default()
    });
    r.metadata_mut()
        .insert("x-forwarded-for", forwarded_for.parse().unwrap());
    c.validate_key(r)
        .await
        .map(|v| v.into_inner().code)
        .map_err(|e| e.code())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_abuser_does_not_lock_out_another_caller_behind_the_same_proxy() {
    let db = TestDb::new(Kind::Sqlite).await;
    let s = start_config(
        &db,
        &config("deny"),
        &[
            "--failed-validations-per-minute",
            "5",
            "--caller-id-header",
            "x-forwarded-for",
        ],
    );
    let keys = keys_on_a_plan(&s, 3).await;
    // ValidateKey: both come from the same peer (this test, the "proxy");
    // the proxy's hop of x-forwarded-for tells them apart.
    let abuser = "203.0.113.50, 198.51.100.66";
    let victim = "203.0.113.50, 198.51.100.77";
    for i in 0..5 {
        let got = validate_as(&s, &format!("sk_live_guess{i}"), abuser).await;
        assert_eq!(got, Ok(pb::ValidationCode::NotFound as i32));
    }
    assert_eq!(
        validate_as(&s, &keys[0], abuser).await,
        Err(tonic::Code::ResourceExhausted)
    );
    assert_eq!(
        validate_as(&s, &keys[0], victim).await,
        Ok(pb::ValidationCode::Valid as i32)
    );

    // ShouldRateLimit: the domain's caller_entry (Envoy's remote_address)
    // names the caller.
    let mut rls = s.client().await;
    for i in 0..5 {
        let r = call(&mut rls, keyed(&format!("sk_live_guess{i}"), "192.0.2.66")).await;
        assert_eq!(problem_code(&r), "NOT_FOUND");
    }
    let r = call(&mut rls, keyed(&keys[1], "192.0.2.66")).await;
    assert_eq!(
        r.overall_code, OVER,
        "the abuser's misses are not looked up"
    );
    let r = call(&mut rls, keyed(&keys[2], "192.0.2.77")).await;
    assert_eq!(r.overall_code, OK, "{r:?}");
    assert_eq!(r.statuses[0].limit_remaining, 99);
}

async fn post_json(s: &Sluice, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(s.http("/json"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn json_is_decided_on_the_key_like_grpc() {
    let db = TestDb::new(Kind::Sqlite).await;
    let s = start_config(&db, &config("deny"), &[]);
    let mut a = Admin::new(&s, "all").await;
    create_plan(&mut a, "two", vec![limit(2, pb::Unit::Hour)]).await;
    let (_, secret) = create_key(&mut a, "two", &[]).await;
    let body = |key: &str| {
        serde_json::json!({
            "domain": "gw",
            "descriptors": [
                {"entries": [{"key": "x-api-key", "value": key}]},
                {"entries": [{"key": "remote_address", "value": "10.8.0.1"}]}
            ]
        })
    };
    for left in [1, 0] {
        let (code, r) = post_json(&s, body(&secret)).await;
        assert_eq!(code, 200, "{r}");
        // protojson leaves out zero values.
        let got = r["statuses"][0]["limitRemaining"].as_u64().unwrap_or(0);
        assert_eq!(got, left, "{r}");
    }
    let (code, r) = post_json(&s, body(&secret)).await;
    assert_eq!(code, 429, "{r}");
    let (code, r) = post_json(&s, body("sk_live_forged")).await;
    assert_eq!(code, 429, "{r}");
    assert_eq!(r["statuses"][0]["code"], "OVER_LIMIT", "{r}");
    assert!(
        r["rawBody"].is_string(),
        "the problem body travels too: {r}"
    );
    // ValidateKey shares the budget the /json calls used.
    let mut kc = KeyServiceClient::new(s.channel().await);
    let v = kc
        .validate_key(pb::ValidateKeyRequest {
            key: secret.clone(),
            cost: Some(1),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.code, pb::ValidationCode::RateLimited as i32);
}

/// A key store whose connections take longer to open than a lookup may
/// wait (a remote PostgreSQL: TCP, TLS, authentication): the lookup pool
/// opens its connection at start-up, so the first lookups find it open
/// and are answered, not left to the failure mode.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_lookups_find_a_connection_open() {
    let db = TestDb::new(Kind::Postgres).await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    proxy.set_connect_delay(Duration::from_millis(1000));
    let s = start_behind(
        &db,
        &proxy,
        &config("deny"),
        &["--key-store-failure-mode", "deny"],
    );
    let keys = keys_on_a_plan(&s, 1).await;
    let mut rls = s.client().await;
    let r = call(&mut rls, keyed(&keys[0], "10.7.0.1")).await;
    assert_eq!(r.overall_code, OK, "{r:?}");
}

/// The gateway (`/auth`) resolves keys through the same path: a malformed
/// key is an unknown key without a lookup, and a key the hung key store
/// cannot check is 503 even in `allow` mode (no identity to let through),
/// within the key-store bound.
#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_resolves_keys_through_the_same_bounded_path() {
    let db = TestDb::new(Kind::Postgres).await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let s = start_behind(
        &db,
        &proxy,
        &config("deny"),
        &["--key-store-failure-mode", "allow"],
    );
    let keys = keys_on_a_plan(&s, 2).await;
    let http = reqwest::Client::new();
    let auth = |key: String| http.get(s.http("/auth")).header("x-api-key", key).send();
    assert_eq!(auth(keys[0].clone()).await.unwrap().status(), 200);

    let before = metric(&s, "sluice_key_store_lookups_total").await;
    let r = auth(format!("sk_live_{}", "a".repeat(300))).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("NOT_FOUND"));
    assert_eq!(metric(&s, "sluice_key_store_lookups_total").await, before);

    proxy.set(Mode::Hang);
    let r = auth(keys[1].clone()).await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("KEY_STORE_UNAVAILABLE"));
    assert!(
        metric(
            &s,
            "sluice_key_store_degraded_answers_total{answer=\"allow\"}"
        )
        .await
            >= 1
    );
    // The cached key is still answered.
    assert_eq!(auth(keys[0].clone()).await.unwrap().status(), 200);

    proxy.set(Mode::Forward);
    assert!(
        eventually(Duration::from_secs(10), || async {
            readyz(&s).await == (200, "ready\n".to_string())
        })
        .await
    );
    assert_eq!(auth(keys[1].clone()).await.unwrap().status(), 200);
}

/// `sluice_usage_flush_lag_seconds`, exactly.
fn lag(text: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix("sluice_usage_flush_lag_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sluice_usage_flush_lag_seconds in\n{text}"))
}

/// The key store's query latency and errors, by operation and kind, and
/// the usage flush's outcomes and lag, seen in `/metrics` as they happen:
/// lookups and flushes that work, then fail (tables renamed away under
/// sluice: the database answers with an error), then work again.
#[tokio::test(flavor = "multi_thread")]
async fn key_store_queries_and_usage_flushes_are_metered() {
    let db = TestDb::new(Kind::Sqlite).await;
    let s = start_config(&db, &config("deny"), &["--key-store-timeout", "1000"]);
    let keys = keys_on_a_plan(&s, 2).await;
    let mut rls = s.client().await;
    let r = call(&mut rls, keyed(&keys[0], "10.7.0.1")).await;
    assert_eq!(r.overall_code, OK, "{r:?}");
    let lookups = "sluice_key_store_query_duration_seconds_count{operation=\"lookup\"}";
    let flush_queries = "sluice_key_store_query_duration_seconds_count{operation=\"usage_flush\"}";
    let flushed = "sluice_usage_flushes_total{outcome=\"ok\"}";
    let failed = "sluice_usage_flushes_total{outcome=\"error\"}";
    assert!(
        eventually(Duration::from_secs(10), || async {
            let m = s.metrics().await;
            sample(&m, lookups) >= 1 && sample(&m, flushed) >= 1 && sample(&m, flush_queries) >= 1
        })
        .await,
        "{}",
        s.metrics().await
    );
    let m = s.metrics().await;
    assert_eq!(lag(&m), 0.0, "{m}");
    for op in ["lookup", "usage_flush"] {
        for kind in ["timeout", "unavailable", "database", "corrupt", "other"] {
            let series =
                format!("sluice_key_store_errors_total{{operation=\"{op}\",kind=\"{kind}\"}}");
            assert!(m.contains(&format!("{series} 0")), "{series} in\n{m}");
        }
    }

    // The tables go away: a lookup and the flushes fail with the
    // database's error; usage waits, and its lag grows.
    let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    for q in [
        "ALTER TABLE key_secrets RENAME TO key_secrets_away",
        "ALTER TABLE usage_daily RENAME TO usage_daily_away",
    ] {
        sqlx::query(q).execute(&mut c).await.unwrap();
    }
    let r = call(&mut rls, keyed(&keys[1], "10.7.0.1")).await;
    assert_eq!(problem_code(&r), "KEY_STORE_UNAVAILABLE");
    // The cached key still counts usage, which cannot be written now.
    let r = call(&mut rls, keyed(&keys[0], "10.7.0.1")).await;
    assert_eq!(r.overall_code, OK, "{r:?}");
    let lookup_errors = "sluice_key_store_errors_total{operation=\"lookup\",kind=\"database\"}";
    let flush_errors = "sluice_key_store_errors_total{operation=\"usage_flush\",kind=\"database\"}";
    assert!(
        eventually(Duration::from_secs(10), || async {
            let m = s.metrics().await;
            sample(&m, lookup_errors) >= 1
                && sample(&m, flush_errors) >= 1
                && sample(&m, failed) >= 1
                && lag(&m) > 0.0
        })
        .await,
        "{}",
        s.metrics().await
    );

    // Back: the pending usage is written, the lag is 0 again.
    for q in [
        "ALTER TABLE key_secrets_away RENAME TO key_secrets",
        "ALTER TABLE usage_daily_away RENAME TO usage_daily",
    ] {
        sqlx::query(q).execute(&mut c).await.unwrap();
    }
    let ok_before = metric(&s, flushed).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            let m = s.metrics().await;
            sample(&m, flushed) > ok_before && lag(&m) == 0.0
        })
        .await,
        "{}",
        s.metrics().await
    );
    c.close().await.unwrap();
}
