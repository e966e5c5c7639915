//! Admin authentication: bearer JWTs checked against an HS256 secret and/or
//! public keys (RS256, ES256, EdDSA; a PEM file or a JWKS file), with the
//! [`Scope`] each admin RPC needs; minting HS256 tokens for operators
//! (`sluice token`); server secrets kept in files ([`secrets`]).
//!
//! Owns: the token rules. Only HS256, RS256, ES256 and EdDSA are accepted;
//! each key verifies exactly one algorithm, and a token is only ever
//! checked with a key of the algorithm it names, so `alg: none` and
//! algorithm confusion (an HS256 token "signed" with a public key's bytes)
//! fail. A token naming a `kid` is checked only with the key carrying that
//! kid, never with an unnamed key (the secret, a PEM key). `exp` and `sub`
//! are required; `nbf` is checked when present; `iss` and `aud` are
//! required and checked when configured; with a maximum lifetime, `iat` is
//! required and `exp - iat` bounded.
//!
//! Files:
//! * `scope.rs`: [`Scope`].
//! * `token.rs`: reading the untrusted header value up to the key choice.
//! * `keys.rs`: loading and checking the secret, PEM and JWKS keys.
//! * `verify.rs`: [`AdminAuthConfig`], [`AdminAuth`], [`Claims`].
//! * `mint.rs`: [`mint_hs256`].
//! * `secrets.rs`: secret files.
//!
//! May depend on: jsonwebtoken, base64, serde, serde_json, getrandom, hex,
//! thiserror, arc-swap, parking_lot, sha2; [`crate::secret`] only, in the
//! crate. Pure: no gRPC, no async, no SQL; the only I/O is reading key
//! files when an [`AdminAuth`] is built or [reloaded](AdminAuth::reload)
//! and the secret files of [`secrets`].

mod keys;
mod mint;
mod scope;
pub mod secrets;
mod token;
mod verify;

use std::path::PathBuf;

pub use mint::{MAX_TTL, MintError, mint_hs256};
pub use scope::Scope;
pub use token::MAX_TOKEN_BYTES;
pub use verify::{AdminAuth, AdminAuthConfig, Claims, KeyReload};

/// Shortest HS256 secret accepted, in bytes (RFC 7518 §3.2: at least the
/// hash size).
pub const MIN_SECRET_BYTES: usize = 32;
/// Largest clock skew allowed on `exp`, `nbf` and `iat`.
pub const MAX_LEEWAY_SECS: u64 = 300;
/// Clock skew allowed by default (`--jwt-leeway`).
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// Longest `sub` accepted or minted; it becomes the audit trail's actor.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// The admin-auth configuration is unusable; the server should not start.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error(
        "SLUICE_JWT_SECRET has {len} bytes; at least {MIN_SECRET_BYTES} are required (e.g. `openssl rand -hex 32`)"
    )]
    ShortSecret { len: usize },
    #[error("the JWT leeway of {secs} s is over the maximum of {MAX_LEEWAY_SECS} s")]
    Leeway { secs: u64 },
    #[error("cannot read {file}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but holds no usable key; `problem` says why.
    #[error("{file}: {problem}")]
    BadKey { file: PathBuf, problem: String },
}

/// Why an admin call was not authorized. Every message is safe to send to
/// the client: none echoes any part of the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No secret or public key is configured: the admin API is off.
    #[error(
        "the admin API is disabled: set SLUICE_JWT_SECRET (at least 32 bytes) or --jwt-public-key / --jwt-jwks, then mint a token with `sluice token`"
    )]
    NotConfigured,
    /// No valid token: missing or malformed header, bad signature, expired,
    /// wrong issuer or audience, refused algorithm, unknown kid, ...
    #[error("admin token rejected: {0}")]
    Unauthenticated(String),
    /// A valid token without the scope the call needs.
    #[error("the admin token lacks the scope {needed}")]
    PermissionDenied { needed: Scope },
}

#[cfg(test)]
mod tests;
