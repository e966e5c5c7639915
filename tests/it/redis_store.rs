//! The Redis counter store end to end: real sluice processes on real Redis
//! servers (standalone, Sentinel, a 3+3 Cluster) started by the tests.
//! The rest of the suite also runs against the cluster (scripts/test.sh's
//! second pass); these cases are about what only a shared store has:
//! several replicas, failover, outages, clock skew.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::redis::{RedisCluster, RedisSentinel, RedisServer};
use crate::support::{OK, OVER, Opts, Sluice, avoid_minute_boundary, call, desc, req};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_master_failover_and_full_outage() {
    let mut cluster = RedisCluster::start();
    let s = start(&cluster.url(), "failover", &["--failure-mode", "deny"]);
    // Keys on every master: a few hundred distinct values spread over the slots.
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
