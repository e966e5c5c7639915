//! The keys admin tokens are verified with: the HS256 secret, a PEM public
//! key (RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA) and the keys of a
//! JWKS file. Each key is checked when loaded (size, curve, a point on the
//! curve), so an unusable key stops the server at start instead of
//! failing, or panicking inside the crypto library, on the first call.
//!
//! May depend on: jsonwebtoken, base64, serde_json; [`super`] for
//! [`AuthConfigError`] and the limits.

use std::collections::HashSet;
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use super::{AuthConfigError, MIN_SECRET_BYTES};

/// Largest key file read (a JWKS of many keys is still far smaller).
const MAX_KEY_FILE_BYTES: u64 = 1024 * 1024;
const MIN_RSA_BITS: usize = 2048;
/// The RSA backend verifies nothing larger.
const MAX_RSA_BITS: usize = 4096;

/// The algorithms accepted at all, one per key family; anything else a
/// token names is refused before a key is looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Alg {
    Hs256,
    Rs256,
    Es256,
    EdDsa,
}

impl Alg {
    /// The JOSE name, as in a token's `alg` header.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// The algorithm named exactly `name`, if it is accepted.
    pub fn from_name(name: &str) -> Option<Alg> {
        [Alg::Hs256, Alg::Rs256, Alg::Es256, Alg::EdDsa]
            .into_iter()
            .find(|a| a.name() == name)
    }

    pub fn jwt(self) -> Algorithm {
        match self {
            Alg::Hs256 => Algorithm::HS256,
            Alg::Rs256 => Algorithm::RS256,
            Alg::Es256 => Algorithm::ES256,
            Alg::EdDsa => Algorithm::EdDSA,
        }
    }
}

/// One key a token may be verified with.
pub(super) struct VerifyKey {
    /// The JWKS `kid`; `None` for the secret, a PEM key or a JWKS key
    /// without one.
    pub kid: Option<String>,
    /// The only algorithm this key verifies.
    pub alg: Alg,
    pub key: DecodingKey,
    /// Where the key came from, for `Debug`.
    pub origin: Origin,
}

/// Where a [`VerifyKey`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Origin {
    Secret,
    Pem(PathBuf),
    Jwks(PathBuf),
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("alg", &self.alg.name())
            .field("kid", &self.kid)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// The HS256 key made from `secret`.
pub(super) fn hs256(secret: &[u8]) -> Result<VerifyKey, AuthConfigError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(AuthConfigError::ShortSecret { len: secret.len() });
    }
    Ok(VerifyKey {
        kid: None,
        alg: Alg::Hs256,
        key: DecodingKey::from_secret(secret),
        origin: Origin::Secret,
    })
}

/// The public key in `text`, read from the PEM file `path`; its type
/// decides its algorithm.
pub(super) fn from_pem_text(path: &Path, text: &str) -> Result<VerifyKey, AuthConfigError> {
    let (alg, key) = pem_key(text).map_err(|problem| bad(path, problem))?;
    Ok(VerifyKey {
        kid: None,
        alg,
        key,
        origin: Origin::Pem(path.to_path_buf()),
    })
}

/// The keys of `text`, read from the JWKS file `path`
/// (`{"keys": [...]}`).
pub(super) fn from_jwks_text(path: &Path, text: &str) -> Result<Vec<VerifyKey>, AuthConfigError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| bad(path, format!("not JSON: {e}")))?;
    let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
        return Err(bad(path, r#"not a JWKS: expected {"keys": [...]}"#.into()));
    };
    if entries.is_empty() {
        return Err(bad(path, "the JWKS holds no keys".into()));
    }
    let mut kids = HashSet::new();
    let mut keys = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let at = match entry.get("kid").and_then(Value::as_str) {
            Some(kid) => format!("keys[{i}] (kid {kid:?})"),
            None => format!("keys[{i}]"),
        };
        let (kid, alg, key) = jwk_key(entry).map_err(|p| bad(path, format!("{at}: {p}")))?;
        if let Some(kid) = &kid
            && !kids.insert(kid.clone())
        {
            return Err(bad(path, format!("{at}: the kid is used twice")));
        }
        keys.push(VerifyKey {
            kid,
            alg,
            key,
            origin: Origin::Jwks(path.to_path_buf()),
        });
    }
    Ok(keys)
}

fn bad(path: &Path, problem: String) -> AuthConfigError {
    AuthConfigError::BadKey {
        file: path.to_path_buf(),
        problem,
    }
}

/// The text of the key file `path`, at most [`MAX_KEY_FILE_BYTES`].
pub(super) fn read(path: &Path) -> Result<String, AuthConfigError> {
    let io = |source| AuthConfigError::Read {
        file: path.to_path_buf(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_KEY_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(bad(path, "too large for a key file".into()));
    }
    Ok(text)
}

// === PEM ===

fn pem_key(text: &str) -> Result<(Alg, DecodingKey), String> {
    let labels: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .collect();
    match labels.as_slice() {
        [] => return Err("not a PEM file (no -----BEGIN line)".into()),
        ["PUBLIC KEY" | "RSA PUBLIC KEY"] => {}
        [l] if l.ends_with("PRIVATE KEY") => {
            return Err(
                "holds a private key; give its public key (`openssl pkey -in KEY -pubout`)".into(),
            );
        }
        ["CERTIFICATE"] => {
            return Err(
                "holds a certificate; give its public key (`openssl x509 -in CERT -pubkey -noout`)"
                    .into(),
            );
        }
        [_] => return Err("not a PEM public key (expected -----BEGIN PUBLIC KEY-----)".into()),
        many => {
            return Err(format!(
                "holds {} PEM blocks; give exactly one public key",
                many.len()
            ));
        }
    }
    let b = text.as_bytes();
    if let Ok(k) = DecodingKey::from_rsa_pem(b) {
        let (n, e) = rsa_components(&k).ok_or("not a readable RSA public key")?;
        return Ok((Alg::Rs256, rsa_key(&n, &e)?));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(b) {
        let point = k
            .try_get_as_bytes()
            .map_err(|_| "not a readable EC public key")?;
        return Ok((Alg::Es256, p256_key(point)?));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(b) {
        let x = k
            .try_get_as_bytes()
            .map_err(|_| "not a readable Ed25519 key")?;
        return Ok((Alg::EdDsa, ed25519_key(x)?));
    }
    Err("not an RSA, EC P-256 or Ed25519 public key".into())
}

/// `(n, e)` of a PEM RSA key, through the crypto backend's own parser.
fn rsa_components(k: &DecodingKey) -> Option<(Vec<u8>, Vec<u8>)> {
    let der = k.try_get_as_bytes().ok()?;
    let utils = &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.key_utils;
    (utils.rsa_pub_components_from_public_key)(der).ok()
}

// === key material ===

fn rsa_key(n: &[u8], e: &[u8]) -> Result<DecodingKey, String> {
    let n = trim_leading_zeros(n);
    let e = trim_leading_zeros(e);
    let bits = n
        .first()
        .map_or(0, |top| n.len() * 8 - top.leading_zeros() as usize);
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
        ));
    }
    if bits > MAX_RSA_BITS {
        return Err(format!(
            "the RSA key has {bits} bits; at most {MAX_RSA_BITS} are supported"
        ));
    }
    if n.last().is_none_or(|low| low & 1 == 0) {
        return Err("the RSA modulus is even".into());
    }
    let exponent = if e.len() > 8 {
        u64::MAX
    } else {
        e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    };
    // The bounds of the RSA backend; an even exponent is never valid.
    if !(3..=(1 << 33) - 1).contains(&exponent) || exponent % 2 == 0 {
        return Err("the RSA public exponent is invalid".into());
    }
    Ok(DecodingKey::from_rsa_raw_components(n, e))
}

fn p256_key(point: &[u8]) -> Result<DecodingKey, String> {
    match point.len() {
        // SEC1 uncompressed / compressed point sizes of each curve.
        65 | 33 => {}
        97 | 49 => return Err("a P-384 key; only P-256 (ES256) is supported".into()),
        133 | 67 => return Err("a P-521 key; only P-256 (ES256) is supported".into()),
        _ => return Err("not a valid P-256 public key".into()),
    }
    // The ECDSA verifier reads the key as a SEC1 point.
    let key = DecodingKey::from_ec_der(point);
    if !builds_verifier(&key, Algorithm::ES256) {
        return Err("not a valid P-256 public key (the point is not on the curve)".into());
    }
    Ok(key)
}

fn ed25519_key(x: &[u8]) -> Result<DecodingKey, String> {
    // Checked first: the EdDSA verifier slices 32 bytes and would panic.
    if x.len() != 32 {
        return Err("not a valid Ed25519 public key (it must be 32 bytes)".into());
    }
    let key = DecodingKey::from_ed_der(x);
    if !builds_verifier(&key, Algorithm::EdDSA) {
        return Err("not a valid Ed25519 public key".into());
    }
    Ok(key)
}

/// Whether the crypto backend accepts `key` for `alg`. The verifier is
/// built (parsing the key) before the signature is looked at, so a usable
/// key answers `Ok(false)` to this dummy signature and a bad one `Err`.
fn builds_verifier(key: &DecodingKey, alg: Algorithm) -> bool {
    jsonwebtoken::crypto::verify("AAAA", b"probe", key, alg).is_ok()
}

fn trim_leading_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[start..]
}

// === JWKS ===

/// Members that only a private or symmetric key has.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

fn jwk_key(entry: &Value) -> Result<(Option<String>, Alg, DecodingKey), String> {
    let Value::Object(jwk) = entry else {
        return Err("not a JSON object".into());
    };
    let kty = string_member(jwk, "kty")?.ok_or("has no kty")?;
    if kty == "oct" {
        return Err(
            "symmetric (oct) keys are not accepted in a JWKS; set SLUICE_JWT_SECRET for HS256"
                .into(),
        );
    }
    if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m)) {
        return Err(format!(
            "holds private key material ({m:?}); the JWKS must hold public keys only"
        ));
    }
    let kid = string_member(jwk, "kid")?;
    if kid.is_some_and(str::is_empty) {
        return Err("kid is empty".into());
    }
    if let Some(used) = string_member(jwk, "use")?
        && used != "sig"
    {
        return Err(format!("use is {used:?}; only \"sig\" keys verify tokens"));
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o.as_str() == Some("verify")));
        if !verifies {
            return Err("key_ops does not include \"verify\"".into());
        }
    }
    let (alg, key) = match kty {
        "RSA" => (
            Alg::Rs256,
            rsa_key(&b64_member(jwk, "n")?, &b64_member(jwk, "e")?)?,
        ),
        "EC" => {
            let crv = string_member(jwk, "crv")?.ok_or("has no crv")?;
            if crv != "P-256" {
                return Err(format!(
                    "curve {crv:?} is not supported; EC keys must be P-256 (ES256)"
                ));
            }
            let (x, y) = (b64_member(jwk, "x")?, b64_member(jwk, "y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err("x and y of a P-256 key must be 32 bytes each".into());
            }
            let point: Vec<u8> = [&[4u8][..], &x, &y].concat();
            (Alg::Es256, p256_key(&point)?)
        }
        "OKP" => {
            let crv = string_member(jwk, "crv")?.ok_or("has no crv")?;
            if crv != "Ed25519" {
                return Err(format!(
                    "curve {crv:?} is not supported; OKP keys must be Ed25519 (EdDSA)"
                ));
            }
            (Alg::EdDsa, ed25519_key(&b64_member(jwk, "x")?)?)
        }
        other => return Err(format!("key type {other:?} is not supported")),
    };
    if let Some(declared) = string_member(jwk, "alg")?
        && declared != alg.name()
    {
        return Err(format!(
            "alg {declared:?} is not supported: a {kty} key verifies {} here",
            alg.name()
        ));
    }
    Ok((kid.map(str::to_string), alg, key))
}

fn string_member<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{name} must be a string")),
    }
}

fn b64_member(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let text = string_member(jwk, name)?.ok_or_else(|| format!("has no {name}"))?;
    // RFC 7518 says unpadded; tolerate padding some tools still write.
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| format!("{name} is not base64url"))
}
