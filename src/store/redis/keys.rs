//! Redis key names: the only place they are built.
//!
//! # Scheme (version 2)
//!
//! ```text
//! {prefix}:v2:{<tag>}:<slot>
//! sluice:v2:{6b3a55e0261b0304143f805a24924d0c}:5a1c3e0d7f42b6a9
//! ```
//!
//! * `prefix` is `--redis-key-prefix` (default `sluice`), so several
//!   deployments can share one Redis. It may not contain `{`, `}` or
//!   whitespace: a brace would move Redis Cluster's hash tag.
//! * `v2` is the key-scheme version ([`KEY_SCHEME`]). It changes whenever
//!   the same counter would get a different key, so two schemes never read
//!   each other's counters by accident.
//! * `<tag>` is the lowercase hex of XXH3-128 (xxHash, seed 0) over the
//!   check's key bytes ([`crate::core::key`]: the domain and the
//!   descriptor's entries, length-prefixed), most significant byte first.
//!   It is the Redis Cluster hash tag: only the text between the braces is
//!   hashed to pick the slot. Hashing (rather than embedding the
//!   descriptor) means request values can contain anything, `{`, `}`,
//!   newlines, binary, 10 KB of text, and never break the tag, never make
//!   long keys (every key is the same short length), and never collide in
//!   practice (128 bits). XXH3 is a plain, unkeyed, specified hash whose
//!   output is fixed across processes, platforms and releases, so every
//!   replica names the same counter the same way; it is not a
//!   cryptographic hash, and does not need to be: descriptor values choose
//!   which counter they land on, nothing more, and a caller that could
//!   engineer a collision could as well send the other descriptor.
//! * `<slot>` is the limit's [`LimitSpec::slot`](crate::core::limit::LimitSpec)
//!   as 16 lowercase hex digits: each limit of a descriptor has its own key,
//!   all under the same tag, so all limits of one check live in one cluster
//!   slot (one node) and are decided together, atomically.
//!
//! Each key is a hash. Fixed window: `s` (window start, µs since the
//! epoch) and `c` (count). Sliding window: `s`, `p` (previous window's
//! count), `c` (current window's count), previous and current together in
//! one hash. Token bucket: `t` (TAT, ns since the epoch). Every key expires
//! (PEXPIRE) when its state no longer matters, plus a small jitter.
//!
//! # Version 1 and the migration
//!
//! Version 1 (before batching) was `{prefix}:{<tag>}:<slot>` with the first
//! 128 bits of SHA-256 as the tag, 3 500 instructions a key against about
//! 60 for XXH3. Version 2 replicas neither read nor write version-1 keys:
//! after an upgrade every counter starts from zero in its current window
//! (for a fixed window, at most one extra window's worth of admissions per
//! key; a token bucket starts full), and version-1 keys expire by
//! themselves at the end of their windows. While replicas of both versions
//! run side by side (a rolling upgrade), each version counts only its own
//! requests. To keep limits tight across the upgrade, switch every replica
//! at once (or within one short window), or run the upgrade when traffic is
//! low.

/// Longest prefix accepted.
pub const MAX_PREFIX_LEN: usize = 128;

/// The key-scheme version written into every key (see the module docs).
pub const KEY_SCHEME: &str = "v2";

/// The hex hash tag of one check key: 32 hex digits (128 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag([u8; 32]);

impl Tag {
    /// The tag of a check's key bytes.
    pub fn of(check_key: &[u8]) -> Tag {
        let digest = xxhash_rust::xxh3::xxh3_128(check_key).to_be_bytes();
        let mut hex = [0u8; 32];
        for (i, byte) in digest.iter().enumerate() {
            hex[2 * i] = HEX[usize::from(byte >> 4)];
            hex[2 * i + 1] = HEX[usize::from(byte & 0x0f)];
        }
        Tag(hex)
    }

    /// The Redis Cluster slot every key with this tag hashes to.
    pub fn cluster_slot(&self) -> u16 {
        fred::util::redis_keyslot(&self.0)
    }

    /// The 32 hex digits.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
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

    /// Appends the part every key of the check whose tag is `tag` starts
    /// with, `{prefix}:v2:{<tag>}:`, to `out`.
    pub fn push_base(&self, tag: &Tag, out: &mut Vec<u8>) {
        if !self.prefix.is_empty() {
            out.extend_from_slice(self.prefix.as_bytes());
            out.push(b':');
        }
        out.extend_from_slice(KEY_SCHEME.as_bytes());
        out.extend_from_slice(b":{");
        out.extend_from_slice(&tag.0);
        out.extend_from_slice(b"}:");
    }

    /// Length of what [`push_base`](Self::push_base) appends.
    pub fn base_len(&self) -> usize {
        let prefix = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        prefix + KEY_SCHEME.len() + 2 + 32 + 2
    }

    /// The key of one limit (`slot`) of the check whose tag is `tag`.
    pub fn limit_key(&self, tag: &Tag, slot: u64) -> String {
        let mut key = Vec::with_capacity(self.base_len() + 16);
        self.push_base(tag, &mut key);
        key.extend_from_slice(&slot_hex(slot));
        // Only the prefix (checked UTF-8 text), ASCII and hex digits.
        String::from_utf8(key).unwrap_or_default()
    }
}

/// A limit slot as the 16 lowercase hex digits that end its key.
pub fn slot_hex(slot: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[usize::try_from((slot >> (60 - 4 * i)) & 0xf).unwrap_or(0)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape() {
        let ks = KeySpace::new("sluice").expect("valid prefix");
        let tag = Tag::of(b"abc");
        // XXH3-128("abc"), seed 0: the published test vector.
        assert_eq!(tag.as_str(), "06b05ab6733a618578af5f94892f3950");
        assert_eq!(
            ks.limit_key(&tag, 0x5a1c),
            "sluice:v2:{06b05ab6733a618578af5f94892f3950}:0000000000005a1c"
        );
        let bare = KeySpace::new("").expect("empty prefix");
        assert_eq!(
            bare.limit_key(&tag, u64::MAX),
            "v2:{06b05ab6733a618578af5f94892f3950}:ffffffffffffffff"
        );
        let mut base = Vec::new();
        ks.push_base(&tag, &mut base);
        assert_eq!(base.len(), ks.base_len());
        assert_eq!(bare.base_len(), "v2:{}:".len() + 32);
        // The slot is that of the tag alone (CLUSTER KEYSLOT agrees: the
        // integration tests check it against a real cluster).
        assert_eq!(
            tag.cluster_slot(),
            fred::util::redis_keyslot(ks.limit_key(&tag, 1).as_bytes())
        );
    }

    #[test]
    fn any_descriptor_bytes_give_a_short_tag() {
        let ks = KeySpace::new("p").expect("valid prefix");
        let mut nasty = b"{a}\n}{\r\n\0".to_vec();
        nasty.extend(std::iter::repeat_n(b'x', 10 * 1024));
        let key = ks.limit_key(&Tag::of(&nasty), 7);
        assert_eq!(key.len(), "p:v2:{}:".len() + 32 + 16);
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
