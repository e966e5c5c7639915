//! TLS for sluice's gRPC listeners and for its own clients (Redis, the
//! admin CLI), on rustls with the ring provider.
//!
//! A listener's server configuration is read from PEM files (certificate
//! chain, private key, optionally the CA that client certificates must
//! chain to: mTLS) and read again whenever they change, so certificates
//! rotated in place (cert-manager, the kubelet's `..data` symlink swap)
//! are served to new handshakes without restarting the listener; open
//! connections keep the session they have. A rotation that leaves the
//! files unusable (a key that does not match the certificate, a
//! half-written file) keeps the previous configuration serving.
//! [`incoming`] turns a bound listener into the stream of connections tonic
//! serves, doing handshakes off the accept loop and bounded in time.
//!
//! May depend on: rustls/tokio-rustls, tonic's transport traits, tokio.
//! Knows nothing else of sluice; `app` wires it and drives reloads.

pub mod incoming;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};
use tokio_rustls::rustls::{
    self, ClientConfig, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
    sign::CertifiedKey,
};

pub use incoming::{Conn, Incoming};

/// A TLS file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: not a PEM certificate file: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{path}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("{key} does not hold the private key of the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{path}: no usable CA certificate in it")]
    NoCa { path: PathBuf },
    #[error("{0}: {1}")]
    Config(String, String),
}

/// The files of one listener's TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// PEM CA certificates client certificates must chain to; set, every
    /// client must present a valid certificate (mTLS).
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsFiles {
    /// Every file, for watching.
    pub fn paths(&self) -> Vec<&Path> {
        let mut v = vec![self.cert.as_path(), self.key.as_path()];
        v.extend(self.client_ca.as_deref());
        v
    }
}

/// The TLS configuration a listener hands to new handshakes, swapped
/// whole when its files change.
#[derive(Debug)]
pub struct ReloadingServerConfig {
    files: ServerTlsFiles,
    current: ArcSwap<ServerConfig>,
    /// SHA-256 of the file contents `current` was built from, and of the
    /// last contents that failed (so a bad rotation is reported once).
    seen: Mutex<Seen>,
}

#[derive(Debug)]
struct Seen {
    loaded: [u8; 32],
    failed: Option<[u8; 32]>,
}

/// What [`ReloadingServerConfig::reload`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The files are as they were.
    Unchanged,
    /// The files changed and new handshakes get them; the leaf
    /// certificate's SHA-256 fingerprint (hex).
    Reloaded { fingerprint: String },
    /// The files changed into something unusable that was already
    /// reported; the previous configuration keeps serving.
    StillBroken,
}

/// The ring provider, named explicitly so that no other crate's choice of
/// default provider can change what sluice uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ReloadingServerConfig {
    /// Reads the files and builds the first configuration.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, a key that does not match
    /// the certificate, a CA file without certificates.
    pub fn load(files: ServerTlsFiles) -> Result<ReloadingServerConfig, TlsError> {
        let (contents, digest) = read_all(&files)?;
        let config = build_server_config(&files, &contents)?;
        Ok(ReloadingServerConfig {
            files,
            current: ArcSwap::from_pointee(config),
            seen: Mutex::new(Seen {
                loaded: digest,
                failed: None,
            }),
        })
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }

    /// SHA-256 fingerprint (hex) of the leaf certificate now served.
    pub fn fingerprint(&self) -> String {
        match read_all(&self.files) {
            Ok((c, _)) => leaf_fingerprint(&c.cert),
            Err(_) => String::new(),
        }
    }

    /// Reads the files again and, if they changed and are usable, swaps
    /// the new configuration in for new handshakes.
    ///
    /// # Errors
    /// The files changed into something unusable (first time for these
    /// contents); the previous configuration keeps serving.
    pub fn reload(&self) -> Result<Reload, TlsError> {
        let (contents, digest) = read_all(&self.files)?;
        let mut seen = self.seen.lock();
        if seen.loaded == digest {
            seen.failed = None;
            return Ok(Reload::Unchanged);
        }
        match build_server_config(&self.files, &contents) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                seen.loaded = digest;
                seen.failed = None;
                Ok(Reload::Reloaded {
                    fingerprint: leaf_fingerprint(&contents.cert),
                })
            }
            Err(_) if seen.failed == Some(digest) => Ok(Reload::StillBroken),
            Err(e) => {
                seen.failed = Some(digest);
                Err(e)
            }
        }
    }
}

/// The raw bytes of a listener's files.
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_all(files: &ServerTlsFiles) -> Result<(Contents, [u8; 32]), TlsError> {
    let contents = Contents {
        cert: read(&files.cert)?,
        key: read(&files.key)?,
        client_ca: files.client_ca.as_deref().map(read).transpose()?,
    };
    let mut h = Sha256::new();
    for part in [
        Some(&contents.cert),
        Some(&contents.key),
        contents.client_ca.as_ref(),
    ] {
        let part = part.map_or(&[][..], Vec::as_slice);
        h.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_le_bytes());
        h.update(part);
    }
    Ok((contents, h.finalize().into()))
}

fn leaf_fingerprint(cert_pem: &[u8]) -> String {
    CertificateDer::pem_slice_iter(cert_pem)
        .next()
        .and_then(Result::ok)
        .map(|c| hex::encode(Sha256::digest(c.as_ref())))
        .unwrap_or_default()
}

/// PEM certificates of `bytes` (read from `path`), at least one.
///
/// # Errors
/// Not PEM, or no certificate in it.
pub fn parse_certs(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The private key in `bytes` (read from `path`).
///
/// # Errors
/// No PEM private key in it.
pub fn parse_key(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| TlsError::BadKey {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A root store of the CA certificates in `bytes`.
///
/// # Errors
/// Not PEM, or no certificate usable as a trust anchor.
pub fn parse_roots(path: &Path, bytes: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(parse_certs(path, bytes)?);
    if added == 0 {
        return Err(TlsError::NoCa {
            path: path.to_path_buf(),
        });
    }
    Ok(roots)
}

/// A certificate chain and its key, checked to belong together.
fn certified_key(
    cert_path: &Path,
    cert: &[u8],
    key_path: &Path,
    key: &[u8],
    provider: &CryptoProvider,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = parse_certs(cert_path, cert)?;
    let der = parse_key(key_path, key)?;
    let signing = provider
        .key_provider
        .load_private_key(der.clone_key())
        .map_err(|e| TlsError::BadKey {
            path: key_path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let mismatch = || TlsError::KeyMismatch {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
    };
    match CertifiedKey::new(chain.clone(), signing).keys_match() {
        Ok(()) => Ok((chain, der)),
        // A key whose public half rustls cannot compute cannot be checked
        // here; the handshake itself would fail, so refuse it too.
        Err(_) => Err(mismatch()),
    }
}

fn build_server_config(files: &ServerTlsFiles, c: &Contents) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let (chain, key) = certified_key(&files.cert, &c.cert, &files.key, &c.key, &provider)?;
    let cfg_err = |e: &dyn std::fmt::Display| {
        TlsError::Config(files.cert.display().to_string(), e.to_string())
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| cfg_err(&e))?;
    let builder = match (&files.client_ca, &c.client_ca) {
        (Some(path), Some(bytes)) => {
            let roots = parse_roots(path, bytes)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(path.display().to_string(), e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| cfg_err(&e))?;
    // gRPC is HTTP/2 only; clients that offer ALPN must be offered h2.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A client configuration (Redis, the CLI) trusting the CAs in `ca` (or
/// the system's roots when `None`), presenting `identity` (certificate
/// and key files) when given.
///
/// # Errors
/// Unreadable or unusable files, or no system roots.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    client_config_from(client_roots(ca)?, identity)
}

/// The roots a client trusts: only the CA certificates in `ca` when
/// given, otherwise the system's.
///
/// # Errors
/// `ca` cannot be read or holds no usable CA certificate.
pub fn client_roots(ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    match ca {
        Some(path) => parse_roots(path, &read(path)?),
        None => {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            Ok(roots)
        }
    }
}

/// A client configuration trusting `roots`, presenting `identity`
/// (certificate and key files) when given.
///
/// # Errors
/// Unreadable or unusable identity files, or a key that does not match
/// its certificate.
pub fn client_config_from(
    roots: RootCertStore,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config("client".into(), e.to_string()))?
        .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let (chain, der) = certified_key(cert, &read(cert)?, key, &read(key)?, &provider)?;
            builder
                .with_client_auth_cert(chain, der)
                .map_err(|e| TlsError::Config(cert.display().to_string(), e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests;
