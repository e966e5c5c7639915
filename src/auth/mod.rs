//! Admin authentication: bearer JWTs checked against an HS256 secret
//! and/or public keys (RS256, ES256, EdDSA; PEM or JWKS), with the scopes
//! each admin RPC needs; minting tokens for operators; server secrets kept
//! in files.
//!
//! Only HS256, RS256, ES256 and EdDSA are accepted; a token's algorithm
//! must be that of the key it is checked with, so `alg: none` and
//! algorithm confusion (an HS256 token "signed" with a public key) fail.
//!
//! May depend on: jsonwebtoken, getrandom. Pure: no gRPC, no I/O but
//! reading key files at start.

pub mod secrets;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Shortest HS256 secret accepted.
pub const MIN_SECRET_BYTES: usize = 32;
/// Longest token lifetime `sluice token` mints.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 86_400);

/// What an admin token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    KeysRead,
    KeysWrite,
    PlansRead,
    PlansWrite,
    UsageRead,
    AuditRead,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::KeysRead,
        Scope::KeysWrite,
        Scope::PlansRead,
        Scope::PlansWrite,
        Scope::UsageRead,
        Scope::AuditRead,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::KeysRead => "keys:read",
            Scope::KeysWrite => "keys:write",
            Scope::PlansRead => "plans:read",
            Scope::PlansWrite => "plans:write",
            Scope::UsageRead => "usage:read",
            Scope::AuditRead => "audit:read",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How admin tokens are checked.
#[derive(Clone, Default)]
pub struct AdminAuthConfig {
    pub hs256_secret: Option<Vec<u8>>,
    pub public_key_pem: Option<PathBuf>,
    pub jwks: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Clock skew allowed on exp and nbf.
    pub leeway_secs: u64,
}

impl std::fmt::Debug for AdminAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuthConfig")
            .field("hs256_secret", &self.hs256_secret.as_ref().map(|_| "***"))
            .field("public_key_pem", &self.public_key_pem)
            .field("jwks", &self.jwks)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// The admin-auth configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error(
        "SLUICE_JWT_SECRET has {0} bytes; at least {MIN_SECRET_BYTES} are required (e.g. `openssl rand -hex 32`)"
    )]
    ShortSecret(usize),
    #[error("reading {file}: {error}")]
    Read {
        file: PathBuf,
        error: std::io::Error,
    },
    #[error("{file}: {problem}")]
    BadKey { file: PathBuf, problem: String },
}

/// Why a call was not authorized. Messages are safe to send to clients.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "the admin API is disabled: set SLUICE_JWT_SECRET (at least 32 bytes) or --jwt-public-key / --jwt-jwks, then mint a token with `sluice token`"
    )]
    NotConfigured,
    #[error("admin token rejected: {0}")]
    Unauthenticated(String),
    #[error("the admin token lacks the scope {needed}")]
    PermissionDenied { needed: Scope },
}

/// A token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("--ttl must be 1 s to 366 days")]
    Ttl,
    #[error("the HS256 secret has {0} bytes; at least {MIN_SECRET_BYTES} are required")]
    ShortSecret(usize),
    #[error("signing the token: {0}")]
    Sign(String),
}

/// The verified claims of an admin token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub scopes: Vec<Scope>,
    pub exp: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct RawClaims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
    #[serde(default)]
    scope: String,
}

struct VerifyKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Checks admin tokens.
pub struct AdminAuth {
    keys: Vec<VerifyKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl AdminAuth {
    /// Reads the configured keys. No key at all: the admin API is off.
    ///
    /// # Errors
    /// [`AuthConfigError`] naming the secret or file that is unusable.
    pub fn from_config(c: &AdminAuthConfig) -> Result<AdminAuth, AuthConfigError> {
        let mut keys = Vec::new();
        if let Some(secret) = &c.hs256_secret {
            if secret.len() < MIN_SECRET_BYTES {
                return Err(AuthConfigError::ShortSecret(secret.len()));
            }
            keys.push(VerifyKey {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(secret),
            });
        }
        if let Some(path) = &c.public_key_pem {
            let pem = read(path)?;
            keys.push(pem_key(path, &pem)?);
        }
        if let Some(path) = &c.jwks {
            let text = read(path)?;
            keys.extend(jwks_keys(path, &text)?);
        }
        Ok(AdminAuth {
            keys,
            issuer: c.issuer.clone(),
            audience: c.audience.clone(),
            leeway: c.leeway_secs,
        })
    }

    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Checks `authorization` (the raw header value) for `needed`.
    ///
    /// # Errors
    /// [`AuthError`]: not configured, bad token, or missing scope.
    pub fn check(&self, authorization: Option<&str>, needed: Scope) -> Result<Claims, AuthError> {
        if !self.is_enabled() {
            return Err(AuthError::NotConfigured);
        }
        let bad = |m: &str| AuthError::Unauthenticated(m.to_string());
        let header = authorization.ok_or_else(|| bad("missing authorization: Bearer <token>"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("authorization must be `Bearer <token>`"))?;
        let head = jsonwebtoken::decode_header(token)
            .map_err(|_| bad("malformed token or unsupported algorithm"))?;
        let key = self
            .keys
            .iter()
            .find(|k| {
                k.alg == head.alg && (head.kid.is_none() || k.kid.is_none() || k.kid == head.kid)
            })
            .ok_or_else(|| {
                bad(&format!(
                    "no configured key for algorithm {:?}{}",
                    head.alg,
                    head.kid
                        .as_deref()
                        .map(|k| format!(" and kid {k:?}"))
                        .unwrap_or_default()
                ))
            })?;
        let mut v = Validation::new(key.alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "sub"]);
        match &self.issuer {
            Some(iss) => v.set_issuer(&[iss]),
            None => v.iss = None,
        }
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            bad(match e.kind() {
                K::ExpiredSignature => "expired",
                K::ImmatureSignature => "not valid yet (nbf)",
                K::InvalidIssuer => "wrong issuer",
                K::InvalidAudience => "wrong audience",
                K::InvalidSignature => "bad signature",
                K::InvalidAlgorithm => "algorithm not allowed for this key",
                K::MissingRequiredClaim(c) if c == "exp" => "missing exp",
                K::MissingRequiredClaim(c) if c == "sub" => "missing sub",
                _ => "malformed token",
            })
        })?;
        let claims = data.claims;
        let sub = claims
            .get("sub")
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("missing sub"))?
            .to_string();
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| bad("missing exp"))?;
        let scopes: Vec<Scope> = claims
            .get("scope")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .split_whitespace()
            .filter_map(Scope::parse)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !scopes.contains(&needed) {
            return Err(AuthError::PermissionDenied { needed });
        }
        Ok(Claims { sub, scopes, exp })
    }
}

fn read(path: &Path) -> Result<String, AuthConfigError> {
    std::fs::read_to_string(path).map_err(|error| AuthConfigError::Read {
        file: path.to_path_buf(),
        error,
    })
}

fn pem_key(path: &Path, pem: &str) -> Result<VerifyKey, AuthConfigError> {
    let b = pem.as_bytes();
    let (alg, key) = if let Ok(k) = DecodingKey::from_rsa_pem(b) {
        (Algorithm::RS256, k)
    } else if let Ok(k) = DecodingKey::from_ec_pem(b) {
        (Algorithm::ES256, k)
    } else if let Ok(k) = DecodingKey::from_ed_pem(b) {
        (Algorithm::EdDSA, k)
    } else {
        return Err(AuthConfigError::BadKey {
            file: path.to_path_buf(),
            problem: "not an RSA, EC P-256 or Ed25519 public key in PEM".into(),
        });
    };
    Ok(VerifyKey {
        kid: None,
        alg,
        key,
    })
}

fn jwks_keys(path: &Path, text: &str) -> Result<Vec<VerifyKey>, AuthConfigError> {
    let bad = |problem: String| AuthConfigError::BadKey {
        file: path.to_path_buf(),
        problem,
    };
    let set: JwkSet = serde_json::from_str(text).map_err(|e| bad(format!("not a JWKS: {e}")))?;
    if set.keys.is_empty() {
        return Err(bad("holds no keys".into()));
    }
    set.keys
        .iter()
        .enumerate()
        .map(|(i, jwk)| {
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                    Algorithm::EdDSA
                }
                _ => {
                    return Err(bad(format!(
                        "keys[{i}]: only RSA, EC P-256 and Ed25519 keys are supported"
                    )));
                }
            };
            if let Some(declared) = jwk.common.key_algorithm {
                use jsonwebtoken::jwk::KeyAlgorithm as K;
                let matches = matches!(
                    (declared, alg),
                    (K::RS256, Algorithm::RS256)
                        | (K::ES256, Algorithm::ES256)
                        | (K::EdDSA, Algorithm::EdDSA)
                );
                if !matches {
                    return Err(bad(format!(
                        "keys[{i}]: alg {declared:?} does not match the key type ({alg:?})"
                    )));
                }
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("keys[{i}]: {e}")))?;
            Ok(VerifyKey {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            })
        })
        .collect()
}

/// Mints an HS256 admin token.
///
/// # Errors
/// [`MintError`] for a short secret, a TTL of 0 or over 366 days.
pub fn mint_hs256(
    secret: &[u8],
    sub: &str,
    scopes: &[Scope],
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, MintError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(MintError::ShortSecret(secret.len()));
    }
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(MintError::Ttl);
    }
    let now = jsonwebtoken::get_current_timestamp();
    let claims = RawClaims {
        sub: sub.to_string(),
        exp: now + ttl.as_secs().max(1),
        iat: Some(now),
        nbf: Some(now),
        iss: issuer.map(str::to_string),
        aud: audience.map(str::to_string),
        scope: scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| MintError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests;
