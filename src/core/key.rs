//! Counter keys. A key is the domain plus the descriptor's entries, each
//! part written as a tag byte, its length (u32, little endian) and its
//! bytes. Length prefixes make the encoding injective: no two different
//! descriptors share a key, whatever characters their values contain
//! (`key: a_b` and `key: a, value: b` stay apart).

/// What a key part is; part of the encoding so that, say, a request value
/// never collides with a shared wildcard pattern that reads the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Part {
    Domain = b'd',
    Key = b'k',
    /// The request's value of an entry.
    Value = b'v',
    /// The wildcard pattern standing for every value it matches
    /// (`share_threshold`).
    SharedPattern = b'p',
    /// A request-supplied limit override (its unit).
    Override = b'o',
    /// An API key's id: its plan limits, shared by ShouldRateLimit and
    /// ValidateKey.
    ApiKey = b'a',
    /// sluice's own protective limits (failed validations per caller,
    /// admin calls per token subject).
    Internal = b'i',
}

/// Where keys are built: inline up to 256 bytes, so a typical request's
/// keys need no heap allocation.
pub type KeyBuf = smallvec::SmallVec<[u8; 256]>;

/// Appends one part to `buf`.
pub fn push(buf: &mut KeyBuf, part: Part, bytes: &[u8]) {
    // Lengths are bounded by request validation far below u32::MAX; a
    // longer part would still encode injectively as long as the length
    // is written in full, so saturate rather than truncate silently.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    buf.push(part as u8);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(parts: &[(Part, &str)]) -> KeyBuf {
        let mut b = KeyBuf::new();
        for (p, s) in parts {
            push(&mut b, *p, s.as_bytes());
        }
        b
    }

    #[test]
    fn underscore_does_not_collide() {
        let a = key(&[(Part::Domain, "d"), (Part::Key, "a_b")]);
        let b = key(&[(Part::Domain, "d"), (Part::Key, "a"), (Part::Value, "b")]);
        assert_ne!(a, b);
        let c = key(&[(Part::Key, "a"), (Part::Value, "b_c")]);
        let d = key(&[(Part::Key, "a_b"), (Part::Value, "c")]);
        assert_ne!(c, d);
    }

    #[test]
    fn pattern_and_value_differ() {
        assert_ne!(
            key(&[(Part::Key, "p"), (Part::Value, "foo*")]),
            key(&[(Part::Key, "p"), (Part::SharedPattern, "foo*")])
        );
    }
}
