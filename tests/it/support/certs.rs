//! Certificates made by the tests (rcgen): CAs, server and client
//! certificates (valid, expired, from another CA), written as PEM files,
//! optionally in the layout the kubelet gives a mounted Secret (files that
//! are symlinks through `..data`, rotated by swapping that symlink), and a
//! TLS client that reports which certificate a server presented.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sha2::{Digest as _, Sha256};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};

/// The DNS name in every server certificate made here (also valid for
/// 127.0.0.1 and localhost).
pub const SERVER_NAME: &str = "sluice";

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A certificate and its key, as PEM.
#[derive(Clone)]
pub struct Pair {
    pub cert: String,
    pub key: String,
}

impl Pair {
    /// SHA-256 of the leaf certificate's DER, hex.
    pub fn fingerprint(&self) -> String {
        let der = CertificateDer::pem_slice_iter(self.cert.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        hex::encode(Sha256::digest(der.as_ref()))
    }

    /// Writes `<name>.crt` and `<name>.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert).unwrap();
        std::fs::write(&key, &self.key).unwrap();
        (cert, key)
    }
}

/// Validity of a leaf, in days around now.
#[derive(Clone, Copy)]
pub struct Days(pub i64, pub i64);

pub const VALID: Days = Days(-1, 30);
pub const EXPIRED: Days = Days(-30, -1);

impl Ca {
    pub fn new(name: &str) -> Ca {
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

    fn leaf(&self, cn: &str, sans: Vec<String>, eku: ExtendedKeyUsagePurpose, d: Days) -> Pair {
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![eku];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::days(d.0);
        p.not_after = now + time::Duration::days(d.1);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for [`SERVER_NAME`], localhost and 127.0.0.1.
    pub fn server(&self) -> Pair {
        let sans = [SERVER_NAME, "localhost", "127.0.0.1"].map(String::from);
        self.leaf(
            SERVER_NAME,
            sans.to_vec(),
            ExtendedKeyUsagePurpose::ServerAuth,
            VALID,
        )
    }

    /// A client certificate for `name`.
    pub fn client(&self, name: &str, d: Days) -> Pair {
        self.leaf(
            name,
            vec![name.to_string()],
            ExtendedKeyUsagePurpose::ClientAuth,
            d,
        )
    }

    /// A certificate for 127.0.0.1 and localhost valid as server and as
    /// client (Redis Cluster nodes present theirs both ways on the bus).
    pub fn node(&self) -> Pair {
        let mut p =
            CertificateParams::new(["localhost", "127.0.0.1"].map(String::from).to_vec()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "node");
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// Writes the CA certificate as `<name>` in `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, &self.pem).unwrap();
        p
    }
}

/// A directory laid out as the kubelet mounts a `kubernetes.io/tls`
/// Secret: `tls.crt`, `tls.key` and `ca.crt` are symlinks to
/// `..data/<file>`, `..data` is a symlink to a timestamped directory, and
/// an update writes a new directory and swaps `..data` atomically.
pub struct SecretDir {
    pub dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    version: u32,
}

impl SecretDir {
    pub fn new(dir: &Path, pair: &Pair, ca: &Ca) -> SecretDir {
        std::fs::create_dir_all(dir).unwrap();
        let mut s = SecretDir {
            dir: dir.to_path_buf(),
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            ca: dir.join("ca.crt"),
            version: 0,
        };
        s.update(pair, ca);
        for f in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
        }
        s
    }

    pub fn cert(&self) -> &Path {
        &self.cert
    }

    pub fn key(&self) -> &Path {
        &self.key
    }

    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// Writes a new version and swaps `..data` to it, as the kubelet does.
    pub fn update(&mut self, pair: &Pair, ca: &Ca) {
        self.version += 1;
        let old = (self.version > 1).then(|| self.dir.join(format!("..v{}", self.version - 1)));
        let name = format!("..v{}", self.version);
        let new = self.dir.join(&name);
        std::fs::create_dir(&new).unwrap();
        std::fs::write(new.join("tls.crt"), &pair.cert).unwrap();
        std::fs::write(new.join("tls.key"), &pair.key).unwrap();
        std::fs::write(new.join("ca.crt"), &ca.pem).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}

/// Connects with TLS (trusting `ca`, presenting `identity`), completes one
/// HTTP/2 preface exchange so a refused client certificate shows, and
/// returns the server's leaf fingerprint.
pub async fn presented_fingerprint(
    addr: SocketAddr,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let config = sluice::tls::client_config(Some(ca), identity).unwrap();
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
        .await?;
    let fp = {
        let certs = s.get_ref().1.peer_certificates().unwrap();
        hex::encode(Sha256::digest(certs[0].as_ref()))
    };
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await?;
    let mut head = [0u8; 9];
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .map_err(|_| std::io::Error::other("no HTTP/2 settings from the server"))??;
    Ok(fp)
}
