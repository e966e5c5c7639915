//! The Redis counter store end to end: real sluice processes on real Redis
//! servers (standalone, Sentinel, a 3+3 Cluster) started by the tests.
//! The rest of the suite also runs against the cluster (scripts/test.sh's
//! second pass); these cases are about what only a shared store has:
//! several replicas, failover, outages, clock skew.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sluice::core::key::{self, KeyBuf, Part};
use sluice::grpc::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use sluice::store::redis::keys::Tag;

use crate::support::redis::{ClusterNode, RedisCluster, RedisSentinel, RedisServer, run_bounded};
use crate::support::{
    OK, OVER, Opts, Sluice, avoid_minute_boundary, call, desc, req, secs_left_in_window,
};

const CONFIG: &str = r#"
domain: shared
descriptors:
  - key: one
    rate_limit: {unit: minute, requests_per_unit: 300}
  - key: a
    rate_limit: {unit: minute, requests_per_unit: 200}
  - key: b
    rate_limit: {unit: minute, requests_per_unit: 150}
  - key: pair
    rate_limits:
      - {unit: second, requests_per_unit: 2}
      - {unit: minute, requests_per_unit: 3}
  - key: zero
    rate_limit: {unit: minute, requests_per_unit: 0}
  - key: big
    rate_limit: {unit: minute, requests_per_unit: 1000000}
  - key: ten
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: three
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: five
    rate_limit: {unit: hour, requests_per_unit: 100}
  - key: bighour
    rate_limit: {unit: hour, requests_per_unit: 1000000}
  - key: two
    rate_limit: {unit: hour, requests_per_unit: 2}
"#;

fn start(url: &str, prefix: &str, extra: &[&str]) -> Sluice {
    let mut args = vec![
        "--redis-url",
        url,
        "--redis-key-prefix",
        prefix,
        "--redis-timeout",
        "250",
    ];
    args.extend_from_slice(extra);
    Sluice::start_with(
        CONFIG,
        Opts {
            args: &args,
            ..Opts::default()
        },
    )
}

/// Spreads `clients` concurrent clients over `replicas`, each sending
/// `per_client` copies of `r`; returns how many statuses of each
/// descriptor were OK.
async fn hammer(
    replicas: &[Sluice],
    r: sluice::grpc::pb::envoy::service::ratelimit::v3::RateLimitRequest,
    clients: usize,
    per_client: usize,
) -> Vec<usize> {
    let ok: Arc<Vec<AtomicUsize>> = Arc::new(
        (0..r.descriptors.len())
            .map(|_| AtomicUsize::new(0))
            .collect(),
    );
    let mut tasks = Vec::new();
    for i in 0..clients {
        let mut c = replicas[i % replicas.len()].client().await;
        let r = r.clone();
        let ok = ok.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_client {
                let resp = c.should_rate_limit(r.clone()).await.unwrap().into_inner();
                for (n, s) in resp.statuses.iter().enumerate() {
                    if s.code == OK {
                        ok[n].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    ok.iter().map(|a| a.load(Ordering::Relaxed)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_a_cluster_admit_exactly_the_limit() {
    avoid_minute_boundary(20).await;
    let cluster = RedisCluster::shared();
    let replicas: Vec<Sluice> = (0..3)
        .map(|_| start(&cluster.url(), "exact", &[]))
        .collect();
    // One key, 64 clients over 3 replicas, 512 requests: exactly 300 pass.
    let one = req("shared", vec![desc(&[("one", "k")])]);
    assert_eq!(hammer(&replicas, one, 64, 8).await, vec![300]);
    // Several descriptors per request, on different slots: each counted exactly.
    let ab = req("shared", vec![desc(&[("a", "x")]), desc(&[("b", "y")])]);
    assert_eq!(hammer(&replicas, ab, 64, 5).await, vec![200, 150]);
}

#[tokio::test]
async fn a_rejected_multi_limit_request_charges_nothing() {
    avoid_minute_boundary(15).await;
    let cluster = RedisCluster::shared();
    let s = start(&cluster.url(), "atomic", &[]);
    let mut c = s.client().await;
    let pair = req("shared", vec![desc(&[("pair", "p")])]);
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(call(&mut c, pair.clone()).await.overall_code);
    }
    // 2 per second: the first two pass, the next three are rejected by the
    // per-second limit and must not count against the 3 per minute.
    assert_eq!(codes, vec![OK, OK, OVER, OVER, OVER]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after: Vec<i32> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(call(&mut c, pair.clone()).await.overall_code);
        }
        v
    };
    assert_eq!(
        after,
        vec![OK, OVER],
        "the minute limit saw only the admitted requests"
    );
}

#[tokio::test]
async fn skewed_service_clocks_share_one_window() {
    avoid_minute_boundary(15).await;
    let redis = RedisServer::start();
    let url = redis.url();
    let early = start(&url, "skew", &[]);
    let late = Sluice::start_with(
        CONFIG,
        Opts {
            args: &[
                "--redis-url",
                &url,
                "--redis-key-prefix",
                "skew",
                "--redis-timeout",
                "250",
            ],
            env: &[("SLUICE_TEST_CLOCK_OFFSET_MS", "45000")],
            ..Opts::default()
        },
    );
    let r = req("shared", vec![desc(&[("three", "k")])]);
    let (mut a, mut b) = (early.client().await, late.client().await);
    let mut codes = Vec::new();
    for i in 0..6 {
        let c = if i % 2 == 0 { &mut a } else { &mut b };
        codes.push(call(c, r.clone()).await.overall_code);
    }
    assert_eq!(codes, vec![OK, OK, OK, OVER, OVER, OVER]);
}

/// Calls until `want` is the answer or `limit` passes; every call is
/// bounded so a hung store fails the test instead of hanging it.
async fn until_code(
    s: &Sluice,
    r: &sluice::grpc::pb::envoy::service::ratelimit::v3::RateLimitRequest,
    want: i32,
    limit: Duration,
) -> bool {
    let mut c = s.client().await;
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let resp = tokio::time::timeout(Duration::from_secs(2), c.should_rate_limit(r.clone()))
            .await
            .expect("a call hung")
            .unwrap()
            .into_inner();
        if resp.overall_code == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn ready(s: &Sluice) -> (u16, String) {
    let r = reqwest::get(s.http("/readyz")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// ext_authz Check while Redis is down: under `--failure-mode deny` a
/// valid key's request is 503 COUNTER_STORE_UNAVAILABLE (not a 429 with a
/// made-up Retry-After), under `allow` it goes through identified; both
/// recover by themselves.
#[tokio::test(flavor = "multi_thread")]
async fn gateway_check_while_redis_is_down() {
    use crate::authz::{CONFIG as AUTHZ, check, flatten};
    use crate::keys::{Admin, create_key, create_plan, limit, start_config};
    use crate::support::db::{Kind, TestDb};
    use sluice::grpc::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use sluice::grpc::pb::sluice::v1 as pb;

    let mut redis = RedisServer::start();
    let url = redis.url();
    let db = TestDb::new(Kind::Sqlite).await;
    let on_redis = |mode: &str| {
        start_config(
            &db,
            AUTHZ,
            &[
                "--redis-url",
                &url,
                "--redis-timeout",
                "250",
                "--failure-mode",
                mode,
            ],
        )
    };
    let (deny, allow) = (on_redis("deny"), on_redis("allow"));
    let mut admin = Admin::new(&deny, "all").await;
    create_plan(&mut admin, "gw", vec![limit(1000, pb::Unit::Hour)]).await;
    let (key, secret) = create_key(&mut admin, "gw", &["orders:read"]).await;
    let req = || {
        check(
            "/orders",
            "203.0.113.50",
            &[("x-api-key", secret.as_str())],
            &[("sluice.domain", "api")],
        )
    };
    let d = AuthorizationClient::new(deny.channel().await);
    let a = AuthorizationClient::new(allow.channel().await);
    let code = |g: &crate::authz::Got| (g.http, g.code());
    let ask = |c: &AuthorizationClient<tonic::transport::Channel>| {
        let mut c = c.clone();
        let r = req();
        async move { flatten(c.check(r).await.unwrap().into_inner()) }
    };
    assert_eq!(code(&ask(&d).await), (200, "OK".to_string()));
    assert_eq!(code(&ask(&a).await), (200, "OK".to_string()));

    redis.stop();
    let mut refused = None;
    for _ in 0..50 {
        let g = ask(&d).await;
        if g.http != 200 {
            refused = Some(g);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let g = refused.expect("deny refused within 5 s");
    assert_eq!(
        code(&g),
        (503, "COUNTER_STORE_UNAVAILABLE".to_string()),
        "{g:?}"
    );
    assert_eq!(g.headers["retry-after"], "1");
    assert_eq!(g.rpc, tonic::Code::Unavailable as i32);
    let g = ask(&a).await;
    assert_eq!(code(&g), (200, "OK".to_string()), "allow: {g:?}");
    assert_eq!(g.headers["x-sluice-key-id"], key.id);

    redis.start_again();
    let mut back = false;
    for _ in 0..150 {
        if ask(&d).await.http == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "deny did not recover within 15 s");
}

#[tokio::test]
async fn failure_modes_while_redis_is_down_and_recovery() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let allow = start(&url, "fm", &["--failure-mode", "allow"]);
    let deny = start(&url, "fm", &["--failure-mode", "deny"]);
    let local = start(
        &url,
        "fm",
        &["--failure-mode", "local", "--local-fallback-divisor", "2"],
    );
    let zero = req("shared", vec![desc(&[("zero", "k")])]);
    let big = req("shared", vec![desc(&[("big", "k")])]);
    let ten = req("shared", vec![desc(&[("ten", "local")])]);
    let mut a = allow.client().await;
    let mut d = deny.client().await;
    assert_eq!(call(&mut a, zero.clone()).await.overall_code, OVER);
    assert_eq!(call(&mut d, big.clone()).await.overall_code, OK);

    redis.stop();
    // allow: OK; deny: OVER_LIMIT; local: the limit divided by 2. (A key
    // already known to be over its limit is still answered from the
    // over-limit cache, so use a fresh one for allow.)
    assert_eq!(
        call(&mut a, zero.clone()).await.overall_code,
        OVER,
        "cached denial"
    );
    let zero = req("shared", vec![desc(&[("zero", "fresh")])]);
    assert!(until_code(&allow, &zero, OK, Duration::from_secs(5)).await);
    assert!(until_code(&deny, &big, OVER, Duration::from_secs(5)).await);
    let mut l = local.client().await;
    let mut local_codes = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        local_codes.push(call(&mut l, ten.clone()).await.overall_code);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "answered within the Redis timeout"
        );
    }
    assert_eq!(
        local_codes,
        vec![OK, OK, OK, OK, OK, OVER, OVER],
        "10 / 2 replicas = 5"
    );
    // Readiness: every mode stays ready (the failure mode answers), and
    // says it is degraded.
    for _ in 0..5 {
        call(&mut a, zero.clone()).await;
        call(&mut d, big.clone()).await;
    }
    for s in [&allow, &deny, &local] {
        assert!(
            crate::support::eventually(Duration::from_secs(3), || async {
                let (code, body) = ready(s).await;
                assert_eq!(code, 200, "{body}");
                body.contains("degraded")
            })
            .await
        );
    }
    let metrics = deny.metrics().await;
    assert!(metrics.contains("sluice_store_degraded 1"), "{metrics}");

    redis.start_again();
    // Each recovers by itself: decisions come from Redis again.
    assert!(
        until_code(&allow, &zero, OVER, Duration::from_secs(15)).await,
        "allow did not recover"
    );
    assert!(
        until_code(&deny, &big, OK, Duration::from_secs(15)).await,
        "deny did not recover"
    );
    assert!(
        crate::support::eventually(Duration::from_secs(5), || async {
            ready(&deny).await == (200, "ready\n".to_string())
        })
        .await
    );
}

/// Per value: requests sent, and answered by Redis (not degraded).
type Tally = Arc<parking_lot::Mutex<std::collections::HashMap<String, (u64, u64)>>>;

/// Load on `s` from `tasks` clients until `stop`: each request carries
/// three `bighour` descriptors from `values`; `tally` counts, per value,
/// the requests sent and those Redis answered.
fn reshard_load(
    s: &Sluice,
    values: &Arc<Vec<String>>,
    tasks: usize,
    stop: &Arc<std::sync::atomic::AtomicBool>,
    tally: &Tally,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..tasks)
        .map(|t| {
            let (values, stop, tally) = (values.clone(), stop.clone(), tally.clone());
            let addr = s.grpc_addr;
            tokio::spawn(async move {
                let mut c = sluice::grpc::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient::connect(format!("http://{addr}")).await.unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 50_000 {
                    let picked: Vec<&String> = (0..3)
                        .map(|k| &values[(t * 7 + n as usize * 3 + k) % values.len()])
                        .collect();
                    let r = req(
                        "shared",
                        picked.iter().map(|v| desc(&[("bighour", v.as_str())])).collect(),
                    );
                    let resp = tokio::time::timeout(Duration::from_secs(5), c.should_rate_limit(r))
                        .await
                        .expect("a call hung")
                        .unwrap()
                        .into_inner();
                    let by_redis = degraded(&resp).is_none();
                    let mut tally = tally.lock();
                    for (v, st) in picked.iter().zip(&resp.statuses) {
                        let e = tally.entry((*v).clone()).or_default();
                        e.0 += 1;
                        if by_redis && st.code == OK {
                            e.1 += 1;
                        }
                    }
                    n += 1;
                }
                n
            })
        })
        .collect()
}

/// Slots `addr` serves in a CLUSTER NODES listing.
fn slots_of(nodes: &[ClusterNode], addr: std::net::SocketAddr) -> usize {
    nodes
        .iter()
        .filter(|n| n.addr == addr)
        .flat_map(|n| n.slots.iter())
        .filter(|r| !r.starts_with('['))
        .map(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            match (a.parse::<usize>(), b.parse::<usize>()) {
                (Ok(a), Ok(b)) => b + 1 - a,
                _ => 0,
            }
        })
        .sum()
}

/// What Redis counted for `bighour=value` (a check-only request).
async fn counted(s: &Sluice, value: &str) -> u64 {
    let mut c = s.client().await;
    let mut d = desc(&[("bighour", value)]);
    d.hits_addend = Some(pbjson_types::UInt64Value { value: 0 });
    let resp = call(&mut c, req("shared", vec![d])).await;
    assert_eq!(degraded(&resp), None, "{resp:?}");
    1_000_000 - u64::from(resp.statuses[0].limit_remaining)
}

/// One private 3+3 cluster, with default flags: (1) `redis-cli --cluster
/// reshard` moves 2 000 slots while 8 clients send three descriptors each;
/// every counter holds exactly the requests Redis answered (nothing lost,
/// nothing counted twice) and none was answered by the failure mode;
/// (2) a master is killed under load and decisions resume through its
/// promoted replica; (3) every node down: deny answers OVER_LIMIT, and
/// sluice recovers when they come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_reshard_failover_and_full_outage_under_load() {
    avoid_hour_boundary(180).await;
    let mut cluster = RedisCluster::start();
    let s = start_default(&cluster.url(), "failover", &["--failure-mode", "deny"]);

    // (1) Resharding under load.
    let nodes = cluster.cluster_nodes();
    let masters = cluster.masters();
    let id_of = |a: std::net::SocketAddr| nodes.iter().find(|n| n.addr == a).unwrap().id.clone();
    let (from, to) = (masters[0], masters[1]);
    // Values on every master, and a good share on the one giving up slots.
    let mut values = spread_values(&cluster, "bighour", "rs", 60);
    values.extend(
        (0..2_000)
            .map(|i| format!("rs-from-{i}"))
            .filter(|v| owner(&nodes, slot_of("bighour", v)) == Some(from))
            .take(40),
    );
    let values = Arc::new(values);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tally: Tally = Arc::default();
    let load = reshard_load(&s, &values, 8, &stop, &tally);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seed = from.to_string();
    let (from_id, to_id) = (id_of(from), id_of(to));
    let out = tokio::task::spawn_blocking(move || {
        run_bounded(
            std::process::Command::new("redis-cli").args([
                "--cluster",
                "reshard",
                &seed,
                "--cluster-from",
                &from_id,
                "--cluster-to",
                &to_id,
                "--cluster-slots",
                "2000",
                "--cluster-yes",
            ]),
            Duration::from_secs(120),
        )
    })
    .await
    .unwrap()
    .expect("redis-cli --cluster reshard ran");
    assert!(
        out.status.success(),
        "reshard failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for l in load {
        sent += l.await.unwrap();
    }
    assert!(sent > 100, "load ran: {sent} requests");
    cluster.wait_ok(Duration::from_secs(30));
    let after = cluster.cluster_nodes();
    assert_eq!(
        slots_of(&after, to),
        slots_of(&nodes, to) + 2000,
        "the reshard moved 2000 slots"
    );
    let moved_values = values
        .iter()
        .filter(|v| owner(&nodes, slot_of("bighour", v)) != owner(&after, slot_of("bighour", v)))
        .count();
    assert!(moved_values > 0, "some counters moved under load");
    let tally = tally.lock().clone();
    for v in values.iter() {
        let (requests, by_redis) = tally.get(v).copied().unwrap_or_default();
        assert_eq!(
            requests, by_redis,
            "{v}: answered by the failure mode during the reshard"
        );
        assert_eq!(counted(&s, v).await, by_redis, "{v}: lost or counted twice");
    }
    assert_eq!(metric(&s, "sluice_store_degraded_checks_total").await, 0);
    assert!(
        metric(&s, "sluice_redis_resent_checks_total").await > 0,
        "no check met a moved slot: the reshard did not overlap the load"
    );

    // (2) Failover. Keys on every master: distinct values spread over the slots.
    let keys: Vec<String> = (0..48).map(|i| format!("k{i}")).collect();
    let all_ok = |s: &Sluice| {
        let keys = keys.clone();
        let addr = s.grpc_addr;
        async move {
            let mut c = sluice::grpc::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient::connect(format!("http://{addr}")).await.unwrap();
            for k in &keys {
                let r = req("shared", vec![desc(&[("big", k)])]);
                match tokio::time::timeout(Duration::from_secs(2), c.should_rate_limit(r)).await {
                    Ok(Ok(resp)) if resp.get_ref().overall_code == OK => {}
                    _ => return false,
                }
            }
            true
        }
    };
    assert!(all_ok(&s).await, "decisions before failover");

    // Kill a master while a client keeps sending.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let mut c = s.client().await;
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && n < 20_000 {
                let r = req("shared", vec![desc(&[("big", &format!("load{}", n % 64))])]);
                let _ = tokio::time::timeout(Duration::from_secs(2), c.should_rate_limit(r)).await;
                n += 1;
            }
            n
        })
    };
    let master = cluster.masters()[0];
    cluster.kill_node(master);
    cluster.wait_ok(Duration::from_secs(30));
    assert!(
        crate::support::eventually(Duration::from_secs(20), || all_ok(&s)).await,
        "decisions did not resume through the promoted replica"
    );
    stop.store(true, Ordering::Relaxed);
    assert!(load.await.unwrap() > 0);

    // Every node down: deny mode answers OVER_LIMIT, promptly.
    cluster.stop_all();
    let big = req("shared", vec![desc(&[("big", "outage")])]);
    assert!(until_code(&s, &big, OVER, Duration::from_secs(5)).await);
    cluster.start_all_again();
    assert!(
        crate::support::eventually(Duration::from_secs(30), || all_ok(&s)).await,
        "sluice did not recover after the cluster came back"
    );
}

#[tokio::test]
async fn sentinel_topology_and_master_failover() {
    let mut sentinel = RedisSentinel::start();
    let s = start(&sentinel.url(), "sentinel", &["--failure-mode", "deny"]);
    let three = req("shared", vec![desc(&[("three", "s")])]);
    let big = req("shared", vec![desc(&[("big", "s")])]);
    let mut c = s.client().await;
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(call(&mut c, three.clone()).await.overall_code);
    }
    assert_eq!(codes, vec![OK, OK, OK, OVER]);
    let old = sentinel.kill_master();
    sentinel.wait_new_master(old, Duration::from_secs(30));
    assert!(
        until_code(&s, &big, OK, Duration::from_secs(30)).await,
        "decisions did not resume on the new master"
    );
}

// ------------------------------------------------------------------------
// Load, outages and resharding with batching on.

/// Waits until at least `need` seconds are left in the current hour.
async fn avoid_hour_boundary(need: u64) {
    let left = secs_left_in_window(3600);
    if left < need {
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
}

/// Starts sluice on `url` with default flags but for `extra`.
fn start_default(url: &str, prefix: &str, extra: &[&str]) -> Sluice {
    let mut args = vec!["--redis-url", url, "--redis-key-prefix", prefix];
    args.extend_from_slice(extra);
    Sluice::start_with(
        CONFIG,
        Opts {
            args: &args,
            ..Opts::default()
        },
    )
}

/// The Redis Cluster slot of the counters of `key=value` in domain `shared`
/// (the engine's counter key, hashed as the Redis store names it).
fn slot_of(key_name: &str, value: &str) -> u16 {
    let mut k = KeyBuf::new();
    key::push(&mut k, Part::Domain, b"shared");
    key::push(&mut k, Part::Key, key_name.as_bytes());
    key::push(&mut k, Part::Value, value.as_bytes());
    Tag::of(&k).cluster_slot()
}

/// The master serving `slot` in a CLUSTER NODES listing.
fn owner(nodes: &[ClusterNode], slot: u16) -> Option<std::net::SocketAddr> {
    nodes
        .iter()
        .filter(|n| n.is_master() && !n.is_failed())
        .find(|n| {
            n.slots.iter().any(|r| {
                if r.starts_with('[') {
                    return false;
                }
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                match (a.parse::<u16>(), b.parse::<u16>()) {
                    (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                    _ => false,
                }
            })
        })
        .map(|n| n.addr)
}

/// `n` values of `key_name` (named after `tag`) whose counters cover every
/// master of the cluster.
fn spread_values(cluster: &RedisCluster, key_name: &str, tag: &str, n: usize) -> Vec<String> {
    let nodes = cluster.cluster_nodes();
    let masters = cluster.masters();
    let mut picked: Vec<String> = Vec::new();
    let mut covered = std::collections::HashSet::new();
    for i in 0..10_000 {
        let v = format!("{tag}-{i}");
        let Some(o) = owner(&nodes, slot_of(key_name, &v)) else {
            continue;
        };
        let new_master = covered.insert(o);
        if new_master || (covered.len() == masters.len() && picked.len() < n) {
            picked.push(v);
        }
        if picked.len() == n && covered.len() == masters.len() {
            return picked;
        }
    }
    panic!("no {n} values of {key_name} over {} masters", masters.len());
}

/// A counter from sluice's `/metrics`.
async fn metric(s: &Sluice, name: &str) -> u64 {
    let text = s.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// The failure mode the response says answered it, if any.
fn degraded(resp: &RateLimitResponse) -> Option<String> {
    let fields = &resp.dynamic_metadata.as_ref()?.fields;
    match fields.get("sluice.degraded")?.kind.as_ref()? {
        pbjson_types::value::Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// The defect found under load: three replicas on the 3+3 cluster, 64
/// concurrent clients, five descriptors per request spread over every
/// master, limit 100 each, default flags (a 10 ms `--redis-timeout`): each
/// descriptor admits exactly 100 of 256, five rounds in a row, and no
/// decision comes from the failure mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_load_three_replicas_admit_exactly_with_default_flags() {
    avoid_hour_boundary(120).await;
    let cluster = RedisCluster::shared();
    let url = cluster.url();
    let replicas: Vec<Sluice> = (0..3)
        .map(|_| start_default(&url, "underload", &[]))
        .collect();
    for round in 0..5 {
        let values = spread_values(cluster, "five", &format!("round{round}"), 5);
        let r = req(
            "shared",
            values
                .iter()
                .map(|v| desc(&[("five", v.as_str())]))
                .collect(),
        );
        assert_eq!(
            hammer(&replicas, r, 64, 4).await,
            vec![100; 5],
            "round {round}: admitted per descriptor"
        );
    }
    for s in &replicas {
        assert_eq!(metric(s, "sluice_store_degraded_checks_total").await, 0);
        assert!(
            metric(s, "sluice_redis_checks_total").await
                > 2 * metric(s, "sluice_redis_commands_total").await,
            "checks shared script calls"
        );
    }
}

/// Redis killed for 10 s under traffic, then started again: within 1 s
/// every decision is made in Redis again (the degraded-answer counter stops
/// rising, and a post-paid limit of 2 answers OK, OK, OVER_LIMIT in both
/// modes), and readiness stays 200 throughout in `allow` and `deny`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_ten_second_outage_decisions_are_back_in_redis_within_a_second() {
    avoid_hour_boundary(60).await;
    let mut redis = RedisServer::start();
    let url = redis.url();
    let modes = [
        start_default(&url, "outage", &["--failure-mode", "allow"]),
        start_default(&url, "outage", &["--failure-mode", "deny"]),
    ];
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Readiness, every 50 ms, both replicas, the whole test long.
    let watch = {
        let stop = stop.clone();
        let urls: Vec<String> = modes.iter().map(|s| s.http("/readyz")).collect();
        tokio::spawn(async move {
            let (mut polls, mut bad) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) && polls < 2_000 {
                for u in &urls {
                    let code =
                        match tokio::time::timeout(Duration::from_secs(2), reqwest::get(u)).await {
                            Ok(Ok(r)) => r.status().as_u16(),
                            _ => 0,
                        };
                    if code != 200 {
                        bad.push((u.clone(), code));
                    }
                }
                polls += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (polls, bad)
        })
    };
    // Traffic on both, fresh keys, bounded.
    let mut traffic = Vec::new();
    for s in &modes {
        let mut c = s.client().await;
        let stop = stop.clone();
        traffic.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                let r = req(
                    "shared",
                    vec![desc(&[("bighour", &format!("t{}", n % 50))])],
                );
                let _ = tokio::time::timeout(Duration::from_secs(2), c.should_rate_limit(r)).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for s in &modes {
        assert_eq!(metric(s, "sluice_store_degraded_checks_total").await, 0);
    }

    tokio::task::block_in_place(|| redis.kill());
    tokio::time::sleep(Duration::from_secs(10)).await;
    for s in &modes {
        assert!(metric(s, "sluice_store_degraded_checks_total").await > 0);
        let text = s.metrics().await;
        assert!(text.contains("sluice_store_degraded 1"), "{text}");
    }
    tokio::task::block_in_place(|| redis.start_again());
    let back = Instant::now();
    tokio::time::sleep_until((back + Duration::from_secs(1)).into()).await;

    // One second after Redis answers: decided in Redis.
    for (i, s) in modes.iter().enumerate() {
        let mut c = s.client().await;
        let r = req("shared", vec![desc(&[("two", &format!("after-{i}"))])]);
        let mut got = Vec::new();
        for _ in 0..3 {
            let resp = call(&mut c, r.clone()).await;
            assert_eq!(degraded(&resp), None, "{resp:?}");
            got.push(resp.overall_code);
        }
        assert_eq!(got, vec![OK, OK, OVER], "replica {i}");
    }
    let before: Vec<u64> = futures_util::future::join_all(
        modes
            .iter()
            .map(|s| metric(s, "sluice_store_degraded_checks_total")),
    )
    .await;
    let decisions: Vec<u64> = futures_util::future::join_all(
        modes
            .iter()
            .map(|s| metric(s, "sluice_redis_batches_total")),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, s) in modes.iter().enumerate() {
        assert_eq!(
            metric(s, "sluice_store_degraded_checks_total").await,
            before[i],
            "replica {i}: still answering by the failure mode"
        );
        assert!(
            metric(s, "sluice_redis_batches_total").await > decisions[i] + 10,
            "replica {i}: traffic kept flowing to Redis"
        );
    }

    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        assert!(t.await.unwrap() > 100);
    }
    let (polls, bad) = watch.await.unwrap();
    assert!(polls > 150, "readiness polled {polls} times");
    assert!(bad.is_empty(), "readiness was not 200: {bad:?}");
}

/// Redis stops answering (SIGSTOP) while requests wait in and behind a
/// batch: every one of them is answered by the failure mode (deny, marked
/// so) within the timeout plus the liveness check, none hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_outage_mid_batch_answers_every_waiting_request_by_the_failure_mode() {
    let redis = RedisServer::start();
    let s = start_default(
        &redis.url(),
        "silent",
        &["--failure-mode", "deny", "--redis-batch-wait-us", "2000"],
    );
    let mut warm = s.client().await;
    assert_eq!(
        call(&mut warm, req("shared", vec![desc(&[("big", "warm")])]))
            .await
            .overall_code,
        OK
    );
    redis.pause();
    let started = Instant::now();
    let mut waiting = Vec::new();
    for i in 0..48 {
        let mut c = s.client().await;
        waiting.push(tokio::spawn(async move {
            let r = req(
                "shared",
                vec![
                    desc(&[("big", &format!("w{i}"))]),
                    desc(&[("big", &format!("x{i}"))]),
                ],
            );
            let resp = tokio::time::timeout(Duration::from_secs(5), c.should_rate_limit(r))
                .await
                .expect("answered, not hung")
                .unwrap()
                .into_inner();
            (resp.overall_code, degraded(&resp), Instant::now())
        }));
    }
    let mut last = started;
    for w in waiting {
        let (code, mark, at) = w.await.unwrap();
        assert_eq!((code, mark.as_deref()), (OVER, Some("deny")));
        last = last.max(at);
    }
    // 10 ms of silence, then a PING gets 250 ms; the rest is a generous
    // allowance for a busy test machine.
    assert!(
        last - started < Duration::from_secs(3),
        "answered after {:?}",
        last - started
    );
    redis.resume();
    assert!(
        until_code(
            &s,
            &req("shared", vec![desc(&[("big", "after")])]),
            OK,
            Duration::from_secs(5)
        )
        .await
    );
}
