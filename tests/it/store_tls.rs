//! TLS to the stores through the real binary, with certificates made by the
//! tests: a real `redis-server` listening with `--tls-port` (its plaintext
//! port is only for the test's own inspection) and a private CA given with
//! `--redis-tls-ca`: decisions over TLS; a server that requires client
//! certificates refuses sluice without `--redis-tls-cert` and takes it with
//! one; a server certificate from another CA stops the start (whatever the
//! failure mode: nothing is answered from a Redis that was never trusted);
//! unusable files and TLS files with a plaintext URL stop the start with a
//! message naming the flag; a three-master Redis Cluster with
//! `tls-cluster yes` and client certificates required, every master
//! counting. PostgreSQL through the URL: a server of the
//! test's own with `ssl = on` that only takes TLS connections with a client
//! certificate; `sslmode=verify-full&sslrootcert=...` (and `sslcert`,
//! `sslkey`) with the right CA works, a wrong CA, no client certificate or
//! `sslmode=disable` stop the start.

use std::path::Path;
use std::process::Command;

use crate::support::certs::{Ca, Pair, VALID};
use crate::support::pg::PgInstance;
use crate::support::redis::{RedisServer, free_port};
use crate::support::{BIN, OK, OVER, Opts, Sluice, call, desc, req};

const CONFIG: &str = "domain: stls\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 2}\n";

const KEY_SECRET: &str = "store-tls-test-key-secret-0123456789abcdef";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A redis-server with a plaintext port (for the test) and a TLS port
/// serving `server` (issued by `ca`); `auth_clients`: client certificates
/// issued by `ca` are required.
pub(crate) struct TlsRedis {
    pub(crate) server: RedisServer,
    pub(crate) tls_port: u16,
}

impl TlsRedis {
    pub(crate) fn start(dir: &Path, ca: &Ca, server: &Pair, auth_clients: bool) -> TlsRedis {
        let (cert, key) = server.write(dir, "redis");
        let ca_file = ca.write(dir, "redis-ca.crt");
        let tls_port = free_port();
        let port = tls_port.to_string();
        let server = RedisServer::start_with(&[
            "--tls-port",
            &port,
            "--tls-cert-file",
            s(&cert),
            "--tls-key-file",
            s(&key),
            "--tls-ca-cert-file",
            s(&ca_file),
            "--tls-auth-clients",
            if auth_clients { "yes" } else { "no" },
        ]);
        TlsRedis { server, tls_port }
    }

    pub(crate) fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }

    /// Keys sluice wrote, read over the plaintext port.
    pub(crate) fn keys(&self) -> String {
        self.server.cli(&["--scan", "--pattern", "sluice:*"])
    }
}

/// `sluice serve` expected to fail; its stderr.
fn serve_fails(dir: &Path, extra: &[&str]) -> String {
    let config = dir.join("fail.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", s(&config)])
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--admin-grpc-addr", ""])
        .args(if extra.contains(&"--database-url") {
            Vec::new()
        } else {
            vec![
                "--database-url".to_string(),
                format!("sqlite://{}/db/s.db", dir.display()),
            ]
        })
        .args(["--startup-wait", "1", "--log-format", "text"])
        .env("SLUICE_KEY_SECRET", KEY_SECRET)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "started: {stdout}");
    assert!(!stdout.contains("sluice listening"), "{stdout}");
    format!("{}{stdout}", String::from_utf8_lossy(&out.stderr))
}

async fn two_then_over(sluice: &Sluice, value: &str) {
    let mut c = sluice.client().await;
    let r = req("stls", vec![desc(&[("k", value)])]);
    assert_eq!(call(&mut c, r.clone()).await.overall_code, OK);
    assert_eq!(call(&mut c, r.clone()).await.overall_code, OK);
    assert_eq!(call(&mut c, r).await.overall_code, OVER);
}

fn start(args: &[&str]) -> Sluice {
    Sluice::start_with(
        CONFIG,
        Opts {
            args,
            ..Opts::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("redis-ca");
    let redis = TlsRedis::start(dir.path(), &ca, &ca.server(), false);
    let ca_file = ca.write(dir.path(), "ca.crt");
    let url = redis.url();
    let sluice = start(&[
        "--redis-url",
        &url,
        "--redis-tls-ca",
        s(&ca_file),
        "--failure-mode",
        "deny",
    ]);
    assert!(
        !sluice
            .startup
            .iter()
            .any(|l| l.contains("will not be announced")),
        "the key-change bus connects over TLS too: {:?}",
        sluice.startup
    );
    two_then_over(&sluice, "tls").await;
    assert!(
        !redis.keys().trim().is_empty(),
        "counters are in that Redis"
    );
    let ready = reqwest::get(sluice.http("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_requires_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("redis-ca");
    let redis = TlsRedis::start(d, &ca, &ca.server(), true);
    let ca_file = ca.write(d, "ca.crt");
    let url = redis.url();

    // No client certificate: refused, and sluice does not start.
    let err = serve_fails(d, &["--redis-url", &url, "--redis-tls-ca", s(&ca_file)]);
    assert!(
        err.contains("cannot connect to Redis at rediss://127.0.0.1"),
        "{err}"
    );

    // A client certificate from another CA: refused too.
    let other = Ca::new("other");
    let (bad_cert, bad_key) = other.client("sluice", VALID).write(d, "bad");
    let err = serve_fails(
        d,
        &[
            "--redis-url",
            &url,
            "--redis-tls-ca",
            s(&ca_file),
            "--redis-tls-cert",
            s(&bad_cert),
            "--redis-tls-key",
            s(&bad_key),
        ],
    );
    assert!(
        err.contains("cannot connect to Redis at rediss://127.0.0.1"),
        "{err}"
    );

    // Its own CA's client certificate: decisions.
    let (cert, key) = ca.client("sluice", VALID).write(d, "client");
    let sluice = start(&[
        "--redis-url",
        &url,
        "--redis-tls-ca",
        s(&ca_file),
        "--redis-tls-cert",
        s(&cert),
        "--redis-tls-key",
        s(&key),
    ]);
    two_then_over(&sluice, "mtls").await;
    assert!(!redis.keys().trim().is_empty());
}

#[test]
fn a_server_certificate_from_another_ca_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("redis-ca");
    let redis = TlsRedis::start(d, &ca, &ca.server(), false);
    let wrong = Ca::new("wrong").write(d, "wrong.crt");
    let url = redis.url();
    for mode in ["allow", "deny", "local"] {
        let err = serve_fails(
            d,
            &[
                "--redis-url",
                &url,
                "--redis-tls-ca",
                s(&wrong),
                "--failure-mode",
                mode,
            ],
        );
        assert!(
            err.contains("cannot connect to Redis at rediss://127.0.0.1"),
            "{err}"
        );
        assert!(
            err.contains("UnknownIssuer") || err.contains("certificate"),
            "{err}"
        );
    }
    // Without --redis-tls-ca the system's roots do not know the private CA.
    let err = serve_fails(d, &["--redis-url", &url]);
    assert!(
        err.contains("UnknownIssuer") || err.contains("certificate"),
        "{err}"
    );
    assert!(redis.keys().trim().is_empty(), "nothing was written");
}

#[test]
fn unusable_redis_tls_settings_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("ca");
    let ca_file = ca.write(d, "ca.crt");
    let (cert, _) = ca.client("sluice", VALID).write(d, "a");
    let (_, other_key) = ca.client("sluice", VALID).write(d, "b");
    // Nothing listens there: every one of these fails before connecting.
    let url = "rediss://127.0.0.1:1";

    let err = serve_fails(
        d,
        &[
            "--redis-url",
            url,
            "--redis-tls-ca",
            s(&d.join("missing.crt")),
        ],
    );
    assert!(
        err.contains("--redis-tls-ca") && err.contains("missing.crt"),
        "{err}"
    );
    let err = serve_fails(d, &["--redis-url", url, "--redis-tls-ca", s(&other_key)]);
    assert!(
        err.contains("--redis-tls-ca") && err.contains("b.key"),
        "{err}"
    );
    let err = serve_fails(
        d,
        &[
            "--redis-url",
            url,
            "--redis-tls-cert",
            s(&cert),
            "--redis-tls-key",
            s(&other_key),
        ],
    );
    assert!(
        err.contains("--redis-tls-cert") && err.contains("b.key does not hold the private key"),
        "{err}"
    );
    let err = serve_fails(d, &["--redis-url", url, "--redis-tls-cert", s(&cert)]);
    assert!(err.contains("--redis-tls-key"), "{err}");
    let err = serve_fails(
        d,
        &[
            "--redis-url",
            "redis://127.0.0.1:1",
            "--redis-tls-ca",
            s(&ca_file),
        ],
    );
    assert!(
        err.contains("--redis-tls-ca") && err.contains("need a TLS Redis URL"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_through_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("pg-ca");
    let server = ca.server();
    let mut pg = PgInstance::init();
    pg.enable_tls(&server.cert, &server.key, Some(&ca.pem));
    pg.start();
    let ca_file = ca.write(d, "pg-ca.crt");
    let wrong = Ca::new("wrong").write(d, "wrong.crt");
    let (cert, key) = ca.client("postgres", VALID).write(d, "pg-client");
    let url = |mode: &str, root: &Path, identity: bool| {
        let mut u = format!("{}?sslmode={mode}&sslrootcert={}", pg.url(), s(root));
        if identity {
            u.push_str(&format!("&sslcert={}&sslkey={}", s(&cert), s(&key)));
        }
        u
    };

    let good = url("verify-full", &ca_file, true);
    let sluice = Sluice::start_with(
        CONFIG,
        Opts {
            args: &["--database-url", &good],
            env: &[("SLUICE_KEY_SECRET", KEY_SECRET)],
            ..Opts::default()
        },
    );
    assert!(
        sluice.startup.iter().any(|l| l.contains("key store ready")),
        "{:?}",
        sluice.startup
    );
    let ready = reqwest::get(sluice.http("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(
        !sluice.startup.iter().any(|l| l.contains("password")),
        "nothing secret is logged"
    );
    drop(sluice);

    for (bad, expect) in [
        (url("verify-full", &wrong, true), "UnknownIssuer"),
        (url("verify-full", &ca_file, false), "certificate"),
        (url("disable", &ca_file, true), "pg_hba.conf"),
    ] {
        let err = serve_fails(d, &["--database-url", &bad]);
        assert!(err.contains(expect), "{bad}: {err}");
    }

    // Unusable files named in the URL: the parameter and the file, at once.
    let missing = d.join("missing.crt");
    let (_, not_a_cert) = ca.server().write(d, "other");
    for (bad, expect) in [
        (
            url("verify-full", &missing, true),
            "--database-url sslrootcert",
        ),
        (
            url("verify-full", &not_a_cert, true),
            "other.key: no PEM certificate",
        ),
    ] {
        let err = serve_fails(d, &["--database-url", &bad]);
        assert!(err.contains(expect), "{bad}: {err}");
        assert!(!err.contains("not reachable yet"), "not waited for: {err}");
    }
    let err = serve_fails(
        d,
        &["--database-url", &format!("{good}&sslkey={}", s(&ca_file))],
    );
    assert!(
        err.contains("--database-url sslkey") && err.contains("pg-ca.crt"),
        "{err}"
    );
}

/// Three TLS masters (`tls-cluster yes`: the bus and the ports the slot
/// map announces are TLS), each requiring client certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("cluster-ca");
    let (cert, key) = ca.node().write(d, "node");
    let ca_file = ca.write(d, "ca.crt");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let tls_port = free_port();
        let bus = free_port();
        let server = RedisServer::start_with(&[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            "--cluster-port",
            &bus.to_string(),
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cluster",
            "yes",
            "--tls-cert-file",
            s(&cert),
            "--tls-key-file",
            s(&key),
            "--tls-ca-cert-file",
            s(&ca_file),
        ]);
        nodes.push((server, tls_port));
    }
    let mut create = Command::new("redis-cli");
    create.args([
        "--tls",
        "--cacert",
        s(&ca_file),
        "--cert",
        s(&cert),
        "--key",
        s(&key),
    ]);
    create.args(["--cluster", "create"]);
    for (_, p) in &nodes {
        create.arg(format!("127.0.0.1:{p}"));
    }
    create.args(["--cluster-yes"]);
    let out = crate::support::redis::run_bounded(&mut create, std::time::Duration::from_secs(60))
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("[OK] All 16384 slots covered"), "{text}");
    let ok = crate::support::eventually(std::time::Duration::from_secs(30), || async {
        nodes
            .iter()
            .all(|(n, _)| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    })
    .await;
    assert!(ok, "the TLS cluster did not become ok");

    let url = format!(
        "rediss-cluster://127.0.0.1:{}?node=127.0.0.1:{}",
        nodes[0].1, nodes[1].1
    );
    let sluice = start(&[
        "--redis-url",
        &url,
        "--redis-tls-ca",
        s(&ca_file),
        "--redis-tls-cert",
        s(&cert),
        "--redis-tls-key",
        s(&key),
        "--failure-mode",
        "deny",
    ]);
    // Enough descriptors that every master serves some.
    for i in 0..12 {
        two_then_over(&sluice, &format!("cluster-{i}")).await;
    }
    for (n, p) in &nodes {
        let keys = n.cli(&["--scan", "--pattern", "sluice:*"]);
        assert!(
            !keys.trim().is_empty(),
            "nothing on the master at TLS port {p}"
        );
    }
}
