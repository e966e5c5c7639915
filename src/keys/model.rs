//! Plans, keys and the records around them, as the rest of sluice sees
//! them; and how a plan's limits become the engine's [`LimitSpec`]s.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::core::limit::{Algorithm, LimitSpec};
use crate::core::unit::Unit;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The window of a plan limit: a unit, or any whole number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    Unit(Unit),
    Seconds(u64),
}

impl Window {
    pub const fn seconds(self) -> u64 {
        match self {
            Window::Unit(u) => u.seconds(),
            Window::Seconds(s) => s,
        }
    }
}

/// One limit of a plan (or of a key overriding its plan).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanLimit {
    pub requests: u32,
    pub window: Window,
    pub algorithm: Algorithm,
    /// Token bucket size; `requests` when absent.
    pub burst: Option<u32>,
}

impl PlanLimit {
    /// "100/minute", "5000/90s", "10/second:token_bucket:burst=20".
    pub fn label(&self) -> String {
        let window = match self.window {
            Window::Unit(u) => u.as_str().to_string(),
            Window::Seconds(s) => format!("{s}s"),
        };
        let mut s = format!("{}/{window}", self.requests);
        if self.algorithm != Algorithm::FixedWindow {
            s.push(':');
            s.push_str(self.algorithm.as_str());
        }
        if let Some(b) = self.burst {
            s.push_str(&format!(":burst={b}"));
        }
        s
    }

    /// The engine's limit at position `index` of the key's list.
    pub fn spec(&self, index: usize) -> LimitSpec {
        match self.window {
            Window::Unit(u) => LimitSpec::new(self.requests, u, self.algorithm, self.burst, index),
            Window::Seconds(s) => LimitSpec::with_window(
                self.requests,
                s.saturating_mul(1_000_000_000),
                0,
                self.algorithm,
                self.burst,
                index,
            ),
        }
    }
}

/// A monthly quota refilling on `refill_day` (1-28) at 00:00 UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub requests: u32,
    pub refill_day: u8,
}

/// A named set of limits keys are issued under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    pub description: String,
    pub limits: Vec<PlanLimit>,
    pub quota: Option<Quota>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Where a key stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Disabled,
    Expired,
    Revoked,
}

impl KeyState {
    /// The number used in list filters and the protocol.
    pub const fn number(self) -> i64 {
        match self {
            KeyState::Active => 1,
            KeyState::Disabled => 2,
            KeyState::Expired => 3,
            KeyState::Revoked => 4,
        }
    }
}

/// An API key's record; never its secret.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub owner_id: String,
    pub plan: String,
    pub scopes: Vec<String>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Limits replacing the plan's; `None`: the plan's apply.
    pub limits: Option<Vec<PlanLimit>>,
    /// Prefix and last four characters of the current secret.
    pub hint: String,
    pub enabled: bool,
    pub expires_at: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub last_used_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
}

impl ApiKey {
    /// The state at `now`: revoked, then disabled, then expired.
    pub fn state(&self, now: Millis) -> KeyState {
        if self.revoked_at.is_some() {
            KeyState::Revoked
        } else if !self.enabled {
            KeyState::Disabled
        } else if self.expires_at.is_some_and(|e| e <= now) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }
}

/// Admitted and limited requests of one key on one UTC day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageDay {
    pub key_id: String,
    /// `YYYY-MM-DD`.
    pub day: String,
    pub admitted: u64,
    pub limited: u64,
}

/// One admin change, as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    pub id: i64,
    pub at: Millis,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub request_id: String,
    pub details: serde_json::Value,
}

/// Who is making an admin change, for the audit trail.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    /// The admin token's subject.
    pub subject: String,
    pub request_id: String,
}

/// A key found by its secret, with everything a decision needs; what the
/// validation cache holds.
#[derive(Debug)]
pub struct ResolvedKey {
    pub key: ApiKey,
    pub plan: Plan,
    /// When the secret used stops working (a rotated-out secret).
    pub secret_expires_at: Option<Millis>,
    /// The limits in force (the key's own or its plan's), compiled.
    pub limits: Vec<PlanLimit>,
    pub specs: Arc<[LimitSpec]>,
    /// The counter key every limit of this key is counted under, in
    /// ShouldRateLimit and ValidateKey alike.
    pub counter_key: Arc<[u8]>,
}

impl ResolvedKey {
    pub fn new(key: ApiKey, plan: Plan, secret_expires_at: Option<Millis>) -> ResolvedKey {
        let limits = key.limits.clone().unwrap_or_else(|| plan.limits.clone());
        let specs: Arc<[LimitSpec]> = limits.iter().enumerate().map(|(i, l)| l.spec(i)).collect();
        let counter_key = counter_key(&key.id).into();
        ResolvedKey {
            key,
            plan,
            secret_expires_at,
            limits,
            specs,
            counter_key,
        }
    }
}

/// The counter key of an API key's limits.
pub fn counter_key(key_id: &str) -> Vec<u8> {
    let mut buf = crate::core::key::KeyBuf::new();
    crate::core::key::push(&mut buf, crate::core::key::Part::ApiKey, key_id.as_bytes());
    buf.to_vec()
}

/// The stored JSON form of a limit.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredLimit {
    pub requests: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u64>,
    pub algorithm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl From<&PlanLimit> for StoredLimit {
    fn from(l: &PlanLimit) -> StoredLimit {
        let (unit, seconds) = match l.window {
            Window::Unit(u) => (Some(u.as_str().to_string()), None),
            Window::Seconds(s) => (None, Some(s)),
        };
        StoredLimit {
            requests: l.requests,
            unit,
            seconds,
            algorithm: l.algorithm.as_str().to_string(),
            burst: l.burst,
        }
    }
}

impl StoredLimit {
    pub(crate) fn into_limit(self) -> Option<PlanLimit> {
        let window = match (self.unit, self.seconds) {
            (Some(u), None) => Window::Unit(Unit::parse(&u)?),
            (None, Some(s)) => Window::Seconds(s),
            _ => return None,
        };
        Some(PlanLimit {
            requests: self.requests,
            window,
            algorithm: Algorithm::parse(&self.algorithm)?,
            burst: self.burst,
        })
    }
}
