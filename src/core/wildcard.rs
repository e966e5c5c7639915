//! Glob matching for descriptor values: `*` matches any run of characters
//! (including none), anywhere in the pattern, any number of times. Every
//! other character matches itself. Linear time, no allocation.

/// A compiled value pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wildcard {
    pattern: Box<str>,
}

impl Wildcard {
    /// `Some` if `value` contains a `*`.
    pub fn new(value: &str) -> Option<Wildcard> {
        value.contains('*').then(|| Wildcard {
            pattern: value.into(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether `text` matches the pattern.
    pub fn matches(&self, text: &str) -> bool {
        glob_match(self.pattern.as_bytes(), text.as_bytes())
    }
}

/// Greedy glob with single-star backtracking: on a mismatch, retry from the
/// last `*` one character further along. Each star only ever moves forward,
/// which keeps this O(pattern × text) in the worst case and linear usually.
fn glob_match(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, t: &str) -> bool {
        Wildcard::new(p).map_or(p == t, |w| w.matches(t))
    }

    #[test]
    fn stars_anywhere() {
        assert!(m("foo*", "foo"));
        assert!(m("foo*", "foobar"));
        assert!(!m("foo*", "fo"));
        assert!(m("*bar", "foobar"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("*", ""));
        assert!(m("**", "anything"));
        assert!(m("/api/*/users/*", "/api/v1/users/42"));
        assert!(!m("/api/*/users/*", "/api/v1/groups/42"));
    }

    /// A slow, obviously right matcher to compare against.
    fn reference(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
            Some((c, rest)) => t.first() == Some(c) && reference(rest, &t[1..]),
        }
    }

    proptest! {
        #[test]
        fn agrees_with_reference(p in "[ab*]{0,8}", t in "[ab]{0,10}") {
            prop_assert_eq!(glob_match(p.as_bytes(), t.as_bytes()), reference(p.as_bytes(), t.as_bytes()));
        }
    }
}
