//! Checking admin tokens: [`AdminAuthConfig`] → [`AdminAuth`], whose
//! [`AdminAuth::check`] turns a raw `authorization` header value and the
//! scope a call needs into verified [`Claims`] or an [`AuthError`].
//!
//! May depend on: jsonwebtoken, serde_json; the sibling files of
//! [`super`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};

use jsonwebtoken::Validation;
use jsonwebtoken::errors::ErrorKind;
use serde_json::Value;

use super::keys::{self, Alg, VerifyKey};
use super::token::{self, Unverified};
use crate::secret::Secret;

use super::{AuthConfigError, AuthError, MAX_LEEWAY_SECS, MAX_SUBJECT_BYTES, Scope};

/// How admin tokens are checked. No secret and no public key: the admin
/// API is off. The secret and public keys may be configured together.
#[derive(Clone, Default)]
pub struct AdminAuthConfig {
    /// The HS256 secret (`SLUICE_JWT_SECRET`, raw bytes), at least
    /// [`super::MIN_SECRET_BYTES`].
    pub hs256_secret: Option<Secret>,
    /// A PEM public key (`--jwt-public-key`): RSA, EC P-256 or Ed25519.
    pub public_key_pem: Option<PathBuf>,
    /// A JWKS file (`--jwt-jwks`) of RSA, EC P-256 or Ed25519 keys.
    pub jwks: Option<PathBuf>,
    /// The `iss` every token must carry, when set.
    pub issuer: Option<String>,
    /// A value the `aud` of every token must hold, when set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, at most
    /// [`MAX_LEEWAY_SECS`].
    pub leeway_secs: u64,
    /// Longest lifetime (`exp - iat`) accepted, in seconds; with a bound a
    /// token must carry `iat`, not in the future. `None`: no bound.
    pub max_lifetime_secs: Option<u64>,
}

impl fmt::Debug for AdminAuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminAuthConfig")
            .field("hs256_secret", &self.hs256_secret)
            .field("public_key_pem", &self.public_key_pem)
            .field("jwks", &self.jwks)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .field("max_lifetime_secs", &self.max_lifetime_secs)
            .finish()
    }
}

/// The verified claims of an admin token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// Who is acting: non-empty, at most [`MAX_SUBJECT_BYTES`], no control
    /// characters.
    pub sub: String,
    /// The known scopes of the `scope` claim, in order, without repeats.
    pub scopes: Vec<Scope>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

impl Claims {
    /// Whether the token grants `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Checks admin tokens. Built once at start; cheap to share (`Arc`). The
/// keys of the PEM and JWKS files are swapped whole by
/// [`AdminAuth::reload`] when the files change into usable keys.
pub struct AdminAuth {
    /// The HS256 key, fixed for the life of the process.
    secret: Option<VerifyKey>,
    /// The keys of the PEM and JWKS files.
    file_keys: ArcSwap<Vec<VerifyKey>>,
    pem: Option<PathBuf>,
    jwks: Option<PathBuf>,
    /// SHA-256 of the file texts `file_keys` was built from, and of the
    /// last texts that failed (so a bad rotation is reported once).
    seen: Mutex<Seen>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    max_lifetime: Option<u64>,
}

#[derive(Debug)]
struct Seen {
    loaded: [u8; 32],
    failed: Option<[u8; 32]>,
}

/// What [`AdminAuth::reload`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyReload {
    /// No key file is configured, or the files are as they were.
    Unchanged,
    /// The files changed and tokens are now checked with their `keys`.
    Reloaded { keys: usize },
    /// The files changed into something unusable that was already
    /// reported; the previous keys stay.
    StillBroken,
}

impl fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminAuth")
            .field("secret", &self.secret)
            .field("file_keys", &self.file_keys.load())
            .field("pem", &self.pem)
            .field("jwks", &self.jwks)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("max_lifetime", &self.max_lifetime)
            .finish_non_exhaustive()
    }
}

/// The texts of the configured key files and their digest.
struct Texts {
    pem: Option<String>,
    jwks: Option<String>,
    digest: [u8; 32],
}

impl AdminAuth {
    /// An `AdminAuth` that refuses every call with
    /// [`AuthError::NotConfigured`].
    pub fn disabled() -> AdminAuth {
        AdminAuth {
            secret: None,
            file_keys: ArcSwap::from_pointee(Vec::new()),
            pem: None,
            jwks: None,
            seen: Mutex::new(Seen {
                loaded: [0; 32],
                failed: None,
            }),
            issuer: None,
            audience: None,
            leeway: 0,
            max_lifetime: None,
        }
    }

    /// Loads and checks the configured keys. None at all is not an error:
    /// the result is [disabled](AdminAuth::is_enabled).
    ///
    /// # Errors
    /// [`AuthConfigError`]: a secret under 32 bytes, a leeway over
    /// [`MAX_LEEWAY_SECS`], or a key file that cannot be read or holds no
    /// usable key (the error names the file and the problem).
    pub fn from_config(c: &AdminAuthConfig) -> Result<AdminAuth, AuthConfigError> {
        if c.leeway_secs > MAX_LEEWAY_SECS {
            return Err(AuthConfigError::Leeway {
                secs: c.leeway_secs,
            });
        }
        let secret = c
            .hs256_secret
            .as_ref()
            .map(|s| keys::hs256(s.expose()))
            .transpose()?;
        let mut auth = AdminAuth {
            secret,
            pem: c.public_key_pem.clone(),
            jwks: c.jwks.clone(),
            issuer: c.issuer.clone(),
            audience: c.audience.clone(),
            leeway: c.leeway_secs,
            max_lifetime: c.max_lifetime_secs,
            ..AdminAuth::disabled()
        };
        let texts = auth.read_texts()?;
        auth.file_keys = ArcSwap::from_pointee(auth.parse(&texts)?);
        auth.seen.get_mut().loaded = texts.digest;
        Ok(auth)
    }

    /// The configured key files (`--jwt-public-key`, `--jwt-jwks`), for
    /// watching.
    pub fn key_files(&self) -> Vec<&Path> {
        self.pem
            .iter()
            .chain(&self.jwks)
            .map(PathBuf::as_path)
            .collect()
    }

    /// Reads the key files again and, if they changed into usable keys,
    /// checks tokens with those from now on. A file that cannot be read or
    /// holds no usable key leaves the previous keys in place.
    ///
    /// # Errors
    /// [`AuthConfigError`]: a file cannot be read, or changed into
    /// something unusable (reported once for the same contents).
    pub fn reload(&self) -> Result<KeyReload, AuthConfigError> {
        if self.pem.is_none() && self.jwks.is_none() {
            return Ok(KeyReload::Unchanged);
        }
        let texts = self.read_texts()?;
        let mut seen = self.seen.lock();
        if seen.loaded == texts.digest {
            seen.failed = None;
            return Ok(KeyReload::Unchanged);
        }
        match self.parse(&texts) {
            Ok(keys) => {
                let n = keys.len();
                self.file_keys.store(Arc::new(keys));
                seen.loaded = texts.digest;
                seen.failed = None;
                Ok(KeyReload::Reloaded { keys: n })
            }
            Err(_) if seen.failed == Some(texts.digest) => Ok(KeyReload::StillBroken),
            Err(e) => {
                seen.failed = Some(texts.digest);
                Err(e)
            }
        }
    }

    fn read_texts(&self) -> Result<Texts, AuthConfigError> {
        let pem = self.pem.as_deref().map(keys::read).transpose()?;
        let jwks = self.jwks.as_deref().map(keys::read).transpose()?;
        let mut h = Sha256::new();
        for text in [&pem, &jwks] {
            // Length first, so the two texts cannot run into each other.
            let t = text.as_deref().unwrap_or_default();
            h.update((t.len() as u64).to_le_bytes());
            h.update(t.as_bytes());
        }
        Ok(Texts {
            pem,
            jwks,
            digest: h.finalize().into(),
        })
    }

    fn parse(&self, texts: &Texts) -> Result<Vec<VerifyKey>, AuthConfigError> {
        let mut keys = Vec::new();
        if let (Some(path), Some(text)) = (&self.pem, &texts.pem) {
            keys.push(keys::from_pem_text(path, text)?);
        }
        if let (Some(path), Some(text)) = (&self.jwks, &texts.jwks) {
            keys.extend(keys::from_jwks_text(path, text)?);
        }
        Ok(keys)
    }

    /// Whether any key is configured, i.e. whether the admin API is on.
    pub fn is_enabled(&self) -> bool {
        self.secret.is_some() || !self.file_keys.load().is_empty()
    }

    /// Checks `authorization`, the raw header value (`Bearer <jwt>`), and
    /// that the token grants `needed`.
    ///
    /// # Errors
    /// [`AuthError::NotConfigured`] when disabled,
    /// [`AuthError::Unauthenticated`] for a missing or invalid token,
    /// [`AuthError::PermissionDenied`] for a valid token without `needed`.
    pub fn check(&self, authorization: Option<&str>, needed: Scope) -> Result<Claims, AuthError> {
        let claims = self.authenticate(authorization)?;
        if !claims.has(needed) {
            return Err(AuthError::PermissionDenied { needed });
        }
        Ok(claims)
    }

    /// Checks `authorization` like [`AdminAuth::check`], without asking for
    /// a scope.
    ///
    /// # Errors
    /// [`AuthError::NotConfigured`] or [`AuthError::Unauthenticated`].
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Claims, AuthError> {
        if !self.is_enabled() {
            return Err(AuthError::NotConfigured);
        }
        let reject = |reason: &str| AuthError::Unauthenticated(reason.to_string());
        let token = token::bearer_token(authorization).map_err(reject)?;
        let head = token::inspect(token).map_err(reject)?;
        let files = self.file_keys.load();
        let keys: Vec<&VerifyKey> = self.secret.iter().chain(files.iter()).collect();
        let key = AdminAuth::select(&keys, &head).map_err(reject)?;
        let data = jsonwebtoken::decode::<Value>(token, &key.key, &self.validation(key.alg))
            .map_err(|e| reject(reason(e.kind())))?;
        let claims = claims(&data.claims).map_err(reject)?;
        if let Some(max) = self.max_lifetime {
            self.check_lifetime(&data.claims, claims.exp, max)?;
        }
        Ok(claims)
    }

    /// With `--jwt-max-lifetime`: `iat` present, not in the future, and
    /// `exp - iat` at most `max` seconds.
    fn check_lifetime(&self, payload: &Value, exp: u64, max: u64) -> Result<(), AuthError> {
        let reject = |reason: String| Err(AuthError::Unauthenticated(reason));
        let iat = match payload.get("iat") {
            None | Some(Value::Null) => {
                return reject(format!(
                    "missing iat claim: tokens must say when they were issued, and live at most {max} s (--jwt-max-lifetime)"
                ));
            }
            Some(v) => numeric_date(v),
        };
        let Some(iat) = iat else {
            return reject("malformed iat claim".into());
        };
        let now = jsonwebtoken::get_current_timestamp();
        if iat > now.saturating_add(self.leeway) {
            return reject("token issued in the future (iat is after now)".into());
        }
        let lifetime = exp.saturating_sub(iat);
        if lifetime > max {
            return reject(format!(
                "token lifetime (exp - iat) is {lifetime} s, over the maximum of {max} s (--jwt-max-lifetime)"
            ));
        }
        Ok(())
    }

    /// The key to verify a token with. A token naming a `kid` is checked
    /// only with the key of its algorithm carrying that kid, never with an
    /// unnamed key (the secret, the PEM key): an unknown kid is refused.
    /// A token without a kid is checked with the one key of its algorithm
    /// without a kid, else with the only key of its algorithm.
    fn select<'k>(
        keys: &[&'k VerifyKey],
        head: &Unverified,
    ) -> Result<&'k VerifyKey, &'static str> {
        let family: Vec<&VerifyKey> = keys.iter().copied().filter(|k| k.alg == head.alg).collect();
        if family.is_empty() {
            return Err(match head.alg {
                Alg::Hs256 => "algorithm HS256 is not allowed for the configured keys",
                Alg::Rs256 => "algorithm RS256 is not allowed for the configured keys",
                Alg::Es256 => "algorithm ES256 is not allowed for the configured keys",
                Alg::EdDsa => "algorithm EdDSA is not allowed for the configured keys",
            });
        }
        if let Some(kid) = &head.kid {
            return family
                .into_iter()
                .find(|k| k.kid.as_ref() == Some(kid))
                .ok_or("unknown kid");
        }
        let unnamed: Vec<&VerifyKey> = family.iter().copied().filter(|k| k.kid.is_none()).collect();
        match (unnamed.as_slice(), family.as_slice()) {
            ([k], _) | (_, [k]) => Ok(k),
            _ => Err("the token has no kid and several keys could verify it"),
        }
    }

    fn validation(&self, alg: Alg) -> Validation {
        let mut v = Validation::new(alg.jwt());
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &self.issuer {
            Some(iss) => {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            None => v.iss = None,
        }
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                v.validate_aud = true;
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        v
    }
}

/// A client-safe reason for a failed decode.
fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not valid yet (nbf is in the future)",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidAlgorithm => "algorithm not allowed for this key",
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "exp" => "missing exp claim",
            "sub" => "missing sub claim",
            "iss" => "missing iss claim (an issuer is required)",
            "aud" => "missing aud claim (an audience is required)",
            _ => "missing a required claim",
        },
        ErrorKind::InvalidClaimFormat(c) => match c.as_str() {
            "exp" => "malformed exp claim",
            "nbf" => "malformed nbf claim",
            _ => "malformed claim",
        },
        _ => "malformed token",
    }
}

/// An RFC 7519 NumericDate (an integer or a float, not negative), in
/// whole seconds; a fraction is dropped.
fn numeric_date(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        _ => None,
    }
}

/// The claims sluice uses, from a verified payload.
fn claims(payload: &Value) -> Result<Claims, &'static str> {
    let sub = match payload.get("sub") {
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= MAX_SUBJECT_BYTES && !s.contains(char::is_control) =>
        {
            s.clone()
        }
        _ => return Err("sub must be 1 to 256 bytes of text without control characters"),
    };
    // jsonwebtoken has checked exp (an integer or a float, RFC 7519
    // NumericDate); a fraction is dropped.
    let exp = payload
        .get("exp")
        .and_then(numeric_date)
        .ok_or("malformed exp claim")?;
    let scopes = match payload.get("scope") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(list)) => Scope::parse_list(list),
        // Some issuers write an array of scope words.
        Some(Value::Array(words)) => {
            let mut scopes = Vec::new();
            for word in words {
                let word = word.as_str().ok_or("malformed scope claim")?;
                for s in Scope::parse_list(word) {
                    if !scopes.contains(&s) {
                        scopes.push(s);
                    }
                }
            }
            scopes
        }
        Some(_) => return Err("malformed scope claim"),
    };
    Ok(Claims { sub, scopes, exp })
}
