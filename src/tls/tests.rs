use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt as _;
use prometheus_client::metrics::counter::Counter;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use super::*;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// (certificate PEM, key PEM) issued by `ca`, valid from `from_days` to
/// `to_days` around now.
fn leaf(ca: &Ca, name: &str, client: bool, from_days: i64, to_days: i64) -> (String, String) {
    let mut p = CertificateParams::new(vec![name.to_string(), "127.0.0.1".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now + time::Duration::days(from_days);
    p.not_after = now + time::Duration::days(to_days);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn files(dir: &Path, cert: &str, key: &str, client_ca: Option<&str>) -> ServerTlsFiles {
    ServerTlsFiles {
        cert: write(dir, "tls.crt", cert),
        key: write(dir, "tls.key", key),
        client_ca: client_ca.map(|c| write(dir, "ca.crt", c)),
    }
}

fn der_fingerprint(pem: &str) -> String {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    hex::encode(Sha256::digest(der.as_ref()))
}

#[test]
fn loads_a_certificate_and_refuses_a_key_that_is_not_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("ca");
    let (cert, key) = leaf(&ca, "localhost", false, -1, 30);
    let (_, other_key) = leaf(&ca, "localhost", false, -1, 30);
    let tls = ReloadingServerConfig::load(files(dir.path(), &cert, &key, None)).unwrap();
    assert_eq!(tls.fingerprint(), der_fingerprint(&cert));
    assert_eq!(tls.current().alpn_protocols, vec![b"h2".to_vec()]);

    let e = ReloadingServerConfig::load(files(dir.path(), &cert, &other_key, None)).unwrap_err();
    assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
    assert!(e.to_string().contains("tls.key"), "{e}");
}

#[test]
fn unusable_files_are_named_in_the_error() {
    let ca = ca("ca");
    let (cert, key) = leaf(&ca, "localhost", false, -1, 30);
    let cases: [(&str, &str, Option<&str>, &str); 4] = [
        ("", &key, None, "tls.crt"),
        (&cert, "not a key", None, "tls.key"),
        (&cert, &key, Some(&key), "ca.crt"),
        (&cert, &key, Some("garbage"), "ca.crt"),
    ];
    for (c, k, ca_pem, name) in cases {
        let dir = tempfile::tempdir().unwrap();
        let e = ReloadingServerConfig::load(files(dir.path(), c, k, ca_pem))
            .unwrap_err()
            .to_string();
        assert!(e.contains(name), "{e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let e = ReloadingServerConfig::load(ServerTlsFiles {
        cert: dir.path().join("missing.crt"),
        key: dir.path().join("tls.key"),
        client_ca: None,
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("missing.crt"), "{e}");
}

#[test]
fn reload_swaps_in_changes_and_reports_a_bad_rotation_once() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("ca");
    let (cert1, key1) = leaf(&ca, "localhost", false, -1, 30);
    let (cert2, key2) = leaf(&ca, "localhost", false, -1, 30);
    let f = files(dir.path(), &cert1, &key1, None);
    let tls = ReloadingServerConfig::load(f.clone()).unwrap();
    assert_eq!(tls.reload().unwrap(), Reload::Unchanged);
    let first = tls.current();

    // Half a rotation: the new certificate, the old key.
    std::fs::write(&f.cert, &cert2).unwrap();
    assert!(matches!(tls.reload(), Err(TlsError::KeyMismatch { .. })));
    assert_eq!(tls.reload().unwrap(), Reload::StillBroken);
    assert!(
        Arc::ptr_eq(&first, &tls.current()),
        "kept serving the old one"
    );

    // The other half.
    std::fs::write(&f.key, &key2).unwrap();
    assert_eq!(
        tls.reload().unwrap(),
        Reload::Reloaded {
            fingerprint: der_fingerprint(&cert2)
        }
    );
    assert!(!Arc::ptr_eq(&first, &tls.current()));
    assert_eq!(tls.reload().unwrap(), Reload::Unchanged);
}

/// A TLS server on loopback that echoes one line per connection.
async fn echo_server(tls: Arc<ReloadingServerConfig>, failures: Counter) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = Incoming::tls(listener, "test", tls, failures);
    tokio::spawn(async move {
        while let Some(conn) = incoming.next().await {
            let Ok(mut conn) = conn else { continue };
            assert!(matches!(conn, Conn::Tls(_)));
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn connect(
    addr: std::net::SocketAddr,
    config: ClientConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut s = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    // TLS 1.3 reports a refused client certificate after the handshake:
    // one round trip settles it.
    s.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    Ok(s)
}

fn peer_fingerprint(s: &tokio_rustls::client::TlsStream<TcpStream>) -> String {
    let certs = s.get_ref().1.peer_certificates().unwrap();
    hex::encode(Sha256::digest(certs[0].as_ref()))
}

#[tokio::test]
async fn new_handshakes_get_the_rotated_certificate_and_open_ones_keep_going() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("ca");
    let ca_file = write(dir.path(), "trust.crt", &ca.pem);
    let (cert1, key1) = leaf(&ca, "localhost", false, -1, 30);
    let (cert2, key2) = leaf(&ca, "localhost", false, -1, 30);
    let f = files(dir.path(), &cert1, &key1, None);
    let tls = Arc::new(ReloadingServerConfig::load(f.clone()).unwrap());
    let addr = echo_server(tls.clone(), Counter::default()).await;
    let client = || client_config(Some(&ca_file), None).unwrap();

    let mut old = connect(addr, client()).await.unwrap();
    assert_eq!(peer_fingerprint(&old), der_fingerprint(&cert1));

    std::fs::write(&f.cert, &cert2).unwrap();
    std::fs::write(&f.key, &key2).unwrap();
    assert!(matches!(tls.reload().unwrap(), Reload::Reloaded { .. }));

    let new = connect(addr, client()).await.unwrap();
    assert_eq!(peer_fingerprint(&new), der_fingerprint(&cert2));
    // The connection made before the rotation still works.
    old.write_all(b"more").await.unwrap();
    let mut buf = [0u8; 4];
    old.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"more");
}

#[tokio::test]
async fn mtls_refuses_missing_foreign_and_expired_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("ca");
    let other = ca_other();
    let ca_file = write(dir.path(), "trust.crt", &ca.pem);
    let (cert, key) = leaf(&ca, "localhost", false, -1, 30);
    let tls = Arc::new(
        ReloadingServerConfig::load(files(dir.path(), &cert, &key, Some(&ca.pem))).unwrap(),
    );
    let failures = Counter::default();
    let addr = echo_server(tls, failures.clone()).await;
    let identity = |name: &str, (c, k): (String, String)| {
        let c_path = write(dir.path(), &format!("{name}.crt"), &c);
        let k_path = write(dir.path(), &format!("{name}.key"), &k);
        client_config(Some(&ca_file), Some((&c_path, &k_path))).unwrap()
    };

    let good = identity("good", leaf(&ca, "envoy", true, -1, 30));
    connect(addr, good).await.unwrap();
    assert_eq!(failures.get(), 0);

    let refused = [
        client_config(Some(&ca_file), None).unwrap(),
        identity("foreign", leaf(&other, "envoy", true, -1, 30)),
        identity("expired", leaf(&ca, "envoy", true, -30, -1)),
        identity("not-yet", leaf(&ca, "envoy", true, 1, 30)),
    ];
    for (i, config) in refused.into_iter().enumerate() {
        assert!(connect(addr, config).await.is_err(), "case {i}");
    }
    // Counted by the server (its side of the handshake may end just after
    // the client's).
    for _ in 0..100 {
        if failures.get() == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(failures.get(), 4);
}

fn ca_other() -> Ca {
    ca("another ca")
}

#[tokio::test]
async fn a_plaintext_client_is_refused_without_ending_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("ca");
    let ca_file = write(dir.path(), "trust.crt", &ca.pem);
    let (cert, key) = leaf(&ca, "localhost", false, -1, 30);
    let tls = Arc::new(ReloadingServerConfig::load(files(dir.path(), &cert, &key, None)).unwrap());
    let failures = Counter::default();
    let addr = echo_server(tls, failures.clone()).await;
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf).await;
    connect(addr, client_config(Some(&ca_file), None).unwrap())
        .await
        .unwrap();
    assert_eq!(failures.get(), 1);
}
