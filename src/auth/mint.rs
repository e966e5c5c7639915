//! Minting HS256 admin tokens for operators (`sluice token`).
//!
//! May depend on: jsonwebtoken, serde; [`super`] for [`Scope`] and limits.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::{MAX_SUBJECT_BYTES, MIN_SECRET_BYTES, Scope};

/// Longest lifetime of a minted token.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 86_400);

/// A token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("the HS256 secret has {len} bytes; at least {MIN_SECRET_BYTES} are required")]
    ShortSecret { len: usize },
    #[error("the token lifetime must be from 1 second to 366 days")]
    Ttl,
    #[error("the subject must be 1 to {MAX_SUBJECT_BYTES} bytes without control characters")]
    Subject,
    #[error("a token needs at least one scope")]
    NoScopes,
    #[error("signing the token failed")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

#[derive(Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    scope: String,
}

/// Mints an HS256 admin token for `sub` granting `scopes`, valid from now
/// (`iat` = `nbf`) for `ttl`. Pass the server's `issuer` and `audience`
/// when it requires them, or it will refuse the token.
///
/// # Errors
/// [`MintError`]: a secret under 32 bytes, a `ttl` under 1 s or over
/// [`MAX_TTL`], an empty or overlong subject, no scope.
pub fn mint_hs256(
    secret: &[u8],
    sub: &str,
    scopes: &[Scope],
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, MintError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(MintError::ShortSecret { len: secret.len() });
    }
    if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
        return Err(MintError::Ttl);
    }
    if sub.is_empty() || sub.len() > MAX_SUBJECT_BYTES || sub.contains(char::is_control) {
        return Err(MintError::Subject);
    }
    if scopes.is_empty() {
        return Err(MintError::NoScopes);
    }
    let mut granted: Vec<Scope> = Vec::with_capacity(scopes.len());
    for s in scopes {
        if !granted.contains(s) {
            granted.push(*s);
        }
    }
    let now = jsonwebtoken::get_current_timestamp();
    let claims = MintedClaims {
        sub,
        iat: now,
        nbf: now,
        exp: now.saturating_add(ttl.as_secs()),
        iss: issuer,
        aud: audience,
        scope: Scope::join(&granted),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(MintError::Sign)
}
