//! The permissions an admin token carries: the words of its `scope` claim.
//!
//! May depend on: std only.

use std::fmt;

/// One permission of an admin token. Each admin RPC needs exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `keys:read`: list and show API keys.
    KeysRead,
    /// `keys:write`: create, update, rotate and revoke API keys.
    KeysWrite,
    /// `plans:read`: list and show plans.
    PlansRead,
    /// `plans:write`: create, update and delete plans.
    PlansWrite,
    /// `usage:read`: per-key usage.
    UsageRead,
    /// `audit:read`: the admin audit trail.
    AuditRead,
}

impl Scope {
    /// Every scope, in the order `sluice token --scope all` grants them.
    pub const ALL: [Scope; 6] = [
        Scope::KeysRead,
        Scope::KeysWrite,
        Scope::PlansRead,
        Scope::PlansWrite,
        Scope::UsageRead,
        Scope::AuditRead,
    ];

    /// The word for this scope in a token's `scope` claim.
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

    /// The scope named by `word` (exact, case-sensitive), if any.
    pub fn parse(word: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == word)
    }

    /// The scopes named in a space-separated list, in order and without
    /// repeats; words that name no scope are ignored, so an issuer may
    /// put other scopes in the same claim.
    pub fn parse_list(list: &str) -> Vec<Scope> {
        let mut scopes = Vec::new();
        for s in list.split_whitespace().filter_map(Scope::parse) {
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        }
        scopes
    }

    /// `scopes` as the value of a `scope` claim: words joined by spaces.
    pub fn join(scopes: &[Scope]) -> String {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
