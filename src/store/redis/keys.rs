//! Redis key names: the only place they are built.
//!
//! # Scheme
//!
//! ```text
//! {prefix}:{<tag>}:<slot>
//! sluice:{9f86d081884c7d659a2feaa0c55ad015}:5a1c3e0d7f42b6a9
//! ```
//!
//! * `prefix` is `--redis-key-prefix` (default `sluice`), so several
//!   deployments can share one Redis. It may not contain `{`, `}` or
//!   whitespace: a brace would move Redis Cluster's hash tag.
//! * `<tag>` is the lowercase hex of the first 128 bits of SHA-256 over the
//!   check's key bytes ([`crate::core::key`]: the domain and the
//!   descriptor's entries, length-prefixed). It is the Redis Cluster hash
//!   tag: only the text between the braces is hashed to pick the slot.
//!   Hashing (rather than embedding the descriptor) means request values
//!   can contain anything, `{`, `}`, newlines, binary, 10 KB of text, and
//!   never break the tag, never make long keys (every key is the same
//!   short length), and never collide in practice (128 bits). It is a
//!   plain, unkeyed hash, the same in every process and release, so every
//!   replica names the same counter the same way.
//! * `<slot>` is the limit's [`LimitSpec::slot`](crate::core::limit::LimitSpec)
//!   as 16 lowercase hex digits: each limit of a descriptor has its own key,
//!   all under the same tag, so all limits of one check live in one cluster
//!   slot (one node) and one Lua call decides them atomically.
//!
//! Each key is a hash. Fixed window: `s` (window start, µs since the
//! epoch) and `c` (count). Sliding window: `s`, `p` (previous window's
//! count), `c` (current window's count), previous and current together in
//! one hash. Token bucket: `t` (TAT, ns since the epoch). Every key expires
//! (PEXPIRE) when its state no longer matters, plus a small jitter.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// Longest prefix accepted.
pub const MAX_PREFIX_LEN: usize = 128;

/// The hex hash tag of one check key: 32 hex digits (128 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag([u8; 32]);

impl Tag {
    /// The tag of a check's key bytes.
    pub fn of(check_key: &[u8]) -> Tag {
        let digest = Sha256::digest(check_key);
        let mut hex = [0u8; 32];
        for (i, byte) in digest.iter().take(16).enumerate() {
            hex[2 * i] = HEX[usize::from(byte >> 4)];
            hex[2 * i + 1] = HEX[usize::from(byte & 0x0f)];
        }
        Tag(hex)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Builds the keys of one deployment (one prefix).
#[derive(Clone, Debug)]
pub struct KeySpace {
    prefix: Box<str>,
}

impl KeySpace {
    /// A key space under `prefix`; an empty prefix means none.
    ///
    /// # Errors
    /// A message when the prefix contains `{`, `}`, whitespace or control
    /// characters, or is longer than [`MAX_PREFIX_LEN`].
    pub fn new(prefix: &str) -> Result<KeySpace, String> {
        if prefix.len() > MAX_PREFIX_LEN {
            return Err(format!(
                "Redis key prefix is {} bytes, more than {MAX_PREFIX_LEN}",
                prefix.len()
            ));
        }
        if let Some(c) = prefix
            .chars()
            .find(|c| matches!(c, '{' | '}') || c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "Redis key prefix {prefix:?} contains {c:?}; braces would change the cluster hash tag"
            ));
        }
        Ok(KeySpace {
            prefix: prefix.into(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of one limit (`slot`) of the check whose tag is `tag`.
    pub fn limit_key(&self, tag: &Tag, slot: u64) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 1 + 34 + 1 + 16);
        if !self.prefix.is_empty() {
            key.push_str(&self.prefix);
            key.push(':');
        }
        key.push('{');
        key.push_str(tag.as_str());
        key.push_str("}:");
        // Writing to a String cannot fail.
        let _ = write!(key, "{slot:016x}");
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape() {
        let ks = KeySpace::new("sluice").expect("valid prefix");
        let tag = Tag::of(b"abc");
        // SHA-256("abc") starts ba7816bf8f01cfea414140de5dae2223.
        assert_eq!(tag.as_str(), "ba7816bf8f01cfea414140de5dae2223");
        assert_eq!(
            ks.limit_key(&tag, 0x5a1c),
            "sluice:{ba7816bf8f01cfea414140de5dae2223}:0000000000005a1c"
        );
        let bare = KeySpace::new("").expect("empty prefix");
        assert_eq!(
            bare.limit_key(&tag, u64::MAX),
            "{ba7816bf8f01cfea414140de5dae2223}:ffffffffffffffff"
        );
    }

    #[test]
    fn any_descriptor_bytes_give_a_short_tag() {
        let ks = KeySpace::new("p").expect("valid prefix");
        let mut nasty = b"{a}\n}{\r\n\0".to_vec();
        nasty.extend(std::iter::repeat_n(b'x', 10 * 1024));
        let key = ks.limit_key(&Tag::of(&nasty), 7);
        assert_eq!(key.len(), "p:{}:".len() + 32 + 16);
        assert_eq!(key.matches('{').count(), 1);
        assert_eq!(key.matches('}').count(), 1);
        assert_ne!(Tag::of(b"a"), Tag::of(b"b"));
    }

    #[test]
    fn prefixes_that_would_move_the_hash_tag_are_refused() {
        for bad in ["a{b", "a}b", "a b", "a\nb", &"x".repeat(MAX_PREFIX_LEN + 1)] {
            assert!(KeySpace::new(bad).is_err(), "{bad:?}");
        }
        assert!(KeySpace::new("team-a:sluice").is_ok());
    }
}
