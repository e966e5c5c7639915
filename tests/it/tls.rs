//! TLS and mTLS on the gRPC listeners through the real binary, with
//! certificates made by the tests: grpcurl over TLS and mTLS; refused
//! clients (no certificate, another CA, expired, plaintext); the admin
//! listener's own TLS and the CLI's `--cacert/--cert/--key`; certificates
//! rotated by a kubelet-style symlink swap reach new handshakes while an
//! open connection keeps working, and a broken rotation keeps the previous
//! certificate; unusable files stop the start with a clear message.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice::grpc::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::support::certs::{
    Ca, EXPIRED, Pair, SERVER_NAME, SecretDir, VALID, presented_fingerprint,
};
use crate::support::{BIN, OK, OVER, Sluice, call, desc, eventually, req, sample, tool};

const CONFIG: &str =
    "domain: tls\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 2}\n";

fn grpcurl(args: &[&str]) -> (bool, String) {
    let out = Command::new(tool("grpcurl"))
        .args(["-max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

async fn tls_channel(addr: std::net::SocketAddr, ca: &str, identity: Option<&Pair>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(SERVER_NAME);
    if let Some(p) = identity {
        tls = tls.identity(Identity::from_pem(&p.cert, &p.key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_over_tls_and_mtls_refuses_what_it_must() {
    let ca = Ca::new("sluice test CA");
    let other = Ca::new("another CA");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let secret = SecretDir::new(&d.join("server"), &ca.server(), &ca);
    let ca_file = ca.write(d, "ca.pem");
    let (good_c, good_k) = ca.client("envoy", VALID).write(d, "good");
    let (foreign_c, foreign_k) = other.client("envoy", VALID).write(d, "foreign");
    let (expired_c, expired_k) = ca.client("envoy", EXPIRED).write(d, "expired");

    // TLS only: any client that trusts the CA.
    let tls_only = Sluice::start(
        CONFIG,
        &["--tls-cert", s(secret.cert()), "--tls-key", s(secret.key())],
    );
    let addr = tls_only.grpc_addr.to_string();
    let (ok, out) = grpcurl(&["-cacert", s(&ca_file), &addr, "list"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("envoy.service.ratelimit.v3.RateLimitService"),
        "{out}"
    );
    let (ok, out) = grpcurl(&["-plaintext", &addr, "list"]);
    assert!(!ok, "plaintext to a TLS port: {out}");
    drop(tls_only);

    // mTLS.
    let sluice = Sluice::start(
        CONFIG,
        &[
            "--tls-cert",
            s(secret.cert()),
            "--tls-key",
            s(secret.key()),
            "--tls-client-ca",
            s(secret.ca()),
        ],
    );
    assert!(
        sluice
            .startup
            .iter()
            .any(|l| l.contains("TLS on") && l.contains("client_certificates=required")),
        "{:#?}",
        sluice.startup
    );
    let addr = sluice.grpc_addr.to_string();
    let body = r#"{"domain":"tls","descriptors":[{"entries":[{"key":"k","value":"grpcurl"}]}]}"#;
    let rls = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
    let with_cert = |c: &Path, k: &Path| {
        grpcurl(&[
            "-cacert",
            s(&ca_file),
            "-cert",
            s(c),
            "-key",
            s(k),
            "-d",
            body,
            &addr,
            rls,
        ])
    };
    for expect in ["\"OK\"", "\"OK\"", "OVER_LIMIT"] {
        let (ok, out) = with_cert(&good_c, &good_k);
        assert!(ok && out.contains(expect), "{out}");
    }
    let (ok, out) = grpcurl(&[
        "-cacert",
        s(&ca_file),
        "-cert",
        s(&good_c),
        "-key",
        s(&good_k),
        &addr,
        "list",
    ]);
    assert!(ok && out.contains("grpc.health.v1.Health"), "{out}");

    let before = sample(
        &sluice.metrics().await,
        "sluice_tls_handshake_failures_total{listener=\"grpc\"}",
    );
    let (ok, out) = grpcurl(&["-cacert", s(&ca_file), "-d", body, &addr, rls]);
    assert!(!ok, "no client certificate: {out}");
    let (ok, out) = with_cert(&foreign_c, &foreign_k);
    assert!(!ok, "a certificate from another CA: {out}");
    let (ok, out) = with_cert(&expired_c, &expired_k);
    assert!(!ok, "an expired certificate: {out}");
    let (ok, out) = grpcurl(&["-plaintext", "-d", body, &addr, rls]);
    assert!(!ok, "plaintext: {out}");
    // Each refusal is counted (grpcurl may retry a handshake: at least one each).
    let counted = eventually(Duration::from_secs(5), || async {
        sample(
            &sluice.metrics().await,
            "sluice_tls_handshake_failures_total{listener=\"grpc\"}",
        ) >= before + 4
    })
    .await;
    assert!(counted, "{}", sluice.metrics().await);

    // A Rust client over mTLS, too.
    let mut c = RateLimitServiceClient::new(
        tls_channel(sluice.grpc_addr, &ca.pem, Some(&ca.client("svc", VALID))).await,
    );
    let r = call(&mut c, req("tls", vec![desc(&[("k", "rust")])])).await;
    assert_eq!(r.overall_code, OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_symlink_swap_reaches_new_handshakes_and_spares_open_ones() {
    let ca = Ca::new("sluice test CA");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first = ca.server();
    let mut secret = SecretDir::new(&d.join("server"), &first, &ca);
    let ca_file = ca.write(d, "ca.pem");
    let client = ca.client("svc", VALID);
    let (client_c, client_k) = client.write(d, "client");
    let id = Some((client_c.as_path(), client_k.as_path()));
    let sluice = Sluice::start(
        CONFIG,
        &[
            "--tls-cert",
            s(secret.cert()),
            "--tls-key",
            s(secret.key()),
            "--tls-client-ca",
            s(secret.ca()),
        ],
    );
    let addr = sluice.grpc_addr;
    assert_eq!(
        presented_fingerprint(addr, &ca_file, id).await.unwrap(),
        first.fingerprint()
    );
    // A connection opened before the rotation.
    let mut open = RateLimitServiceClient::new(tls_channel(addr, &ca.pem, Some(&client)).await);
    assert_eq!(
        call(&mut open, req("tls", vec![desc(&[("k", "a")])]))
            .await
            .overall_code,
        OK
    );

    let second = ca.server();
    secret.update(&second, &ca);
    sluice.wait_log("TLS certificate reloaded", Duration::from_secs(10));
    assert_eq!(
        presented_fingerprint(addr, &ca_file, id).await.unwrap(),
        second.fingerprint()
    );
    // The open connection still answers, on the same counters.
    assert_eq!(
        call(&mut open, req("tls", vec![desc(&[("k", "a")])]))
            .await
            .overall_code,
        OK
    );
    assert_eq!(
        call(&mut open, req("tls", vec![desc(&[("k", "a")])]))
            .await
            .overall_code,
        OVER
    );

    // A broken rotation (a key that is not the certificate's): reported,
    // and the second certificate keeps serving.
    let third = ca.server();
    let broken = Pair {
        cert: third.cert.clone(),
        key: second.key.clone(),
    };
    secret.update(&broken, &ca);
    let line = sluice.wait_log("cannot be used", Duration::from_secs(10));
    assert!(line.contains("does not hold the private key"), "{line}");
    assert_eq!(
        presented_fingerprint(addr, &ca_file, id).await.unwrap(),
        second.fingerprint()
    );
    let m = sluice.metrics().await;
    assert_eq!(
        sample(
            &m,
            "sluice_tls_reloads_total{listener=\"grpc\",result=\"ok\"}"
        ),
        1,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "sluice_tls_reloads_total{listener=\"grpc\",result=\"error\"}"
        ),
        1,
        "{m}"
    );
    // Repaired: served.
    secret.update(&third, &ca);
    sluice.wait_log("TLS certificate reloaded", Duration::from_secs(10));
    assert_eq!(
        presented_fingerprint(addr, &ca_file, id).await.unwrap(),
        third.fingerprint()
    );
}

#[test]
fn the_admin_listener_has_its_own_tls_and_the_cli_speaks_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let data_ca = Ca::new("data-plane CA");
    let admin_ca = Ca::new("admin CA");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = SecretDir::new(&d.join("data"), &data_ca.server(), &data_ca);
    let admin = SecretDir::new(&d.join("admin"), &admin_ca.server(), &admin_ca);
    let admin_ca_file = admin_ca.write(d, "admin-ca.pem");
    let data_ca_file = data_ca.write(d, "data-ca.pem");
    let (op_c, op_k) = admin_ca.client("operator", VALID).write(d, "operator");
    let (svc_c, svc_k) = data_ca.client("svc", VALID).write(d, "svc");
    let db = rt.block_on(crate::support::db::TestDb::new(
        crate::support::db::Kind::Sqlite,
    ));
    let args = [
        "--tls-cert",
        s(data.cert()),
        "--tls-key",
        s(data.key()),
        "--admin-tls-cert",
        s(admin.cert()),
        "--admin-tls-key",
        s(admin.key()),
        "--admin-tls-client-ca",
        s(admin.ca()),
        // Beyond loopback, but with TLS: no warning.
        "--admin-grpc-addr",
        "0.0.0.0:0",
    ];
    let sluice = crate::keys::start_config(&db, CONFIG, &args);
    assert!(
        !sluice
            .startup
            .iter()
            .any(|l| l.contains("beyond loopback without TLS")),
        "{:#?}",
        sluice.startup
    );
    let port = sluice.admin_addr.unwrap().port();
    let tok = crate::keys::token("all");
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["plans", "list", "--json"])
            .args(args)
            .env("SLUICE_TOKEN", &tok)
            .env_remove("SLUICE_ADDR")
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let https = format!("https://127.0.0.1:{port}");
    let bare = format!("127.0.0.1:{port}");
    let mtls = [
        "--cacert",
        s(&admin_ca_file),
        "--cert",
        s(&op_c),
        "--key",
        s(&op_k),
    ];
    let (ok, out) = cli(&[&["--addr", &https][..], &mtls].concat());
    assert!(ok, "{out}");
    // A bare host:port with TLS flags means https.
    let (ok, out) = cli(&[&["--addr", &bare][..], &mtls].concat());
    assert!(ok, "{out}");
    // No client certificate; the data plane's CA; plaintext.
    let (ok, out) = cli(&["--addr", &https, "--cacert", s(&admin_ca_file)]);
    assert!(!ok, "{out}");
    let (ok, out) = cli(&[
        "--addr",
        &https,
        "--cacert",
        s(&data_ca_file),
        "--cert",
        s(&op_c),
        "--key",
        s(&op_k),
    ]);
    assert!(!ok, "{out}");
    let (ok, out) = cli(&[
        "--addr",
        &https,
        "--cacert",
        s(&admin_ca_file),
        "--cert",
        s(&svc_c),
        "--key",
        s(&svc_k),
    ]);
    assert!(!ok, "a client certificate of the data plane's CA: {out}");
    let (ok, out) = cli(&["--addr", &format!("http://127.0.0.1:{port}")]);
    assert!(!ok, "{out}");
    // TLS flags with an http:// address are a mistake, said so.
    let (ok, out) = cli(&[&["--addr", &format!("http://127.0.0.1:{port}")][..], &mtls].concat());
    assert!(!ok && out.contains("https://"), "{out}");

    // The data plane serves its own certificate, without mTLS.
    let (ok, out) = grpcurl(&[
        "-cacert",
        s(&data_ca_file),
        &sluice.grpc_addr.to_string(),
        "list",
    ]);
    assert!(ok && !out.contains("AdminService"), "{out}");
}

#[test]
fn unusable_tls_files_stop_the_start_with_a_clear_message() {
    let ca = Ca::new("ca");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("c.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let (cert, _) = ca.server().write(d, "a");
    let (_, other_key) = ca.server().write(d, "b");
    let serve = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["serve", "--config", s(&config)])
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(["--admin-grpc-addr", ""])
            .arg("--database-url")
            .arg(format!("sqlite://{}/db/s.db", d.display()))
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = serve(&["--tls-cert", s(&cert), "--tls-key", s(&other_key)]);
    assert!(err.contains("b.key does not hold the private key"), "{err}");
    assert!(err.contains("--tls-cert"), "{err}");
    let err = serve(&["--tls-cert", s(&cert)]);
    assert!(err.contains("--tls-key"), "{err}");
    let err = serve(&["--tls-client-ca", s(&cert)]);
    assert!(err.contains("--tls-cert"), "{err}");
    let err = serve(&[
        "--tls-cert",
        s(&cert),
        "--tls-key",
        s(&d.join("missing.key")),
    ]);
    assert!(err.contains("missing.key"), "{err}");
}
