//! Key secrets: generation and keyed hashing.
//!
//! A key is `<prefix>_<base58 of 24 random bytes>` (192 bits from the OS
//! CSPRNG; base58 has no look-alike characters). Only HMAC-SHA256 of the
//! whole key under a server secret is stored: fast enough to check at
//! request rate (unlike bcrypt, which is for low-entropy passwords), and
//! useless to whoever reads the database without the server secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Random bytes in a key.
const RANDOM_BYTES: usize = 24;

/// Hashes keys under the server secret.
#[derive(Clone)]
pub struct KeyHasher {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher(***)")
    }
}

/// The OS random source failed.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed: {0}")]
pub struct RandomError(String);

/// The key-hashing secret is too short.
#[derive(Debug, thiserror::Error)]
#[error("the key-hashing secret (SLUICE_KEY_SECRET) has {0} bytes; at least 32 are required")]
pub struct ShortSecret(usize);

/// A freshly generated key.
#[derive(Clone)]
pub struct NewSecret {
    /// The full key, shown to the caller once.
    pub secret: String,
    /// Its keyed hash, hex.
    pub hash: String,
    /// `<prefix>_...<last 4>`.
    pub hint: String,
}

impl std::fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSecret")
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

impl KeyHasher {
    /// Shortest server secret accepted.
    pub const MIN_SECRET_BYTES: usize = 32;

    /// A hasher under `server_secret`.
    ///
    /// # Errors
    /// [`ShortSecret`] when the secret is under 32 bytes.
    pub fn new(server_secret: &[u8]) -> Result<KeyHasher, ShortSecret> {
        if server_secret.len() < Self::MIN_SECRET_BYTES {
            return Err(ShortSecret(server_secret.len()));
        }
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(server_secret)
            .map_err(|_| ShortSecret(server_secret.len()))?;
        Ok(KeyHasher { mac })
    }

    /// The stored form of `key`: hex HMAC-SHA256.
    pub fn hash(&self, key: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(key.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// A new key with `prefix`, its hash and hint.
    ///
    /// # Errors
    /// [`RandomError`] when the OS cannot provide randomness.
    pub fn generate(&self, prefix: &str) -> Result<NewSecret, RandomError> {
        let mut bytes = [0u8; RANDOM_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| RandomError(e.to_string()))?;
        let secret = format!("{prefix}_{}", bs58::encode(bytes).into_string());
        let hash = self.hash(&secret);
        let hint = hint(&secret, prefix);
        Ok(NewSecret { secret, hash, hint })
    }
}

/// `sk_live_...x7Qa`.
pub fn hint(secret: &str, prefix: &str) -> String {
    let tail: String = secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{prefix}_...{tail}")
}

/// A 128-bit random id, hex, with a type prefix (`key_...`).
///
/// # Errors
/// [`RandomError`] when the OS cannot provide randomness.
pub fn new_id(kind: &str) -> Result<String, RandomError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| RandomError(e.to_string()))?;
    Ok(format!("{kind}_{}", hex::encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_hashed_under_the_secret() {
        let h = KeyHasher::new(&[7u8; 32]).unwrap();
        let a = h.generate("sk_live").unwrap();
        let b = h.generate("sk_live").unwrap();
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with("sk_live_"));
        // 24 bytes in base58 is at least 32 characters.
        assert!(a.secret.len() >= "sk_live_".len() + 32, "{}", a.secret);
        assert_eq!(a.hash, h.hash(&a.secret));
        assert_eq!(a.hash.len(), 64);
        assert!(a.hint.starts_with("sk_live_..."));
        assert!(a.secret.ends_with(&a.hint["sk_live_...".len()..]));
        let other = KeyHasher::new(&[8u8; 32]).unwrap();
        assert_ne!(other.hash(&a.secret), a.hash);
        assert!(!format!("{a:?}").contains(&a.secret));
    }

    #[test]
    fn short_secret_is_refused() {
        let e = KeyHasher::new(&[1u8; 31]).unwrap_err().to_string();
        assert!(e.contains("31 bytes") && e.contains("32"), "{e}");
    }

    #[test]
    fn ids_are_distinct() {
        let a = new_id("key").unwrap();
        assert!(a.starts_with("key_") && a.len() == 4 + 32);
        assert_ne!(a, new_id("key").unwrap());
    }
}
