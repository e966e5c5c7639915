//! API keys and plans, behind `ValidateKey`, the admin API and key-aware
//! `ShouldRateLimit`. Three parts share a cache, a usage recorder and a
//! guard ([`KeyParts::new`] builds them together):
//!
//! * [`resolver`]: the request path: secret → key (hasher, cache, key
//!   store on a miss), limits in force, `ValidateKey`'s charge on the
//!   counter store, usage recorded.
//! * [`admin`]: plans and keys created, changed, revoked; usage and
//!   audit reads; change notices. No counter store.
//! * [`usage`]: per-key daily counts and the flusher that writes them.
//!
//! And what they use:
//!
//! * [`model`]: plans, keys, usage and audit records; plan limits → engine
//!   limits.
//! * [`hashing`]: key generation (OS CSPRNG) and HMAC-SHA256 hashing.
//! * [`repo`]: the PostgreSQL / SQLite store (sqlx, migrations/).
//! * [`cache`]: found and missing lookups, dropped on change.
//! * [`notify`]: change notifications between replicas.
//! * [`guard`]: limits on failed validations and admin calls.
//! * [`validate`]: bounds on every input field.
//!
//! May depend on: `core`, the `store` trait and `engine` (to count plan
//! limits on the same counters as every other limit), `telemetry`.
//! Knows nothing of gRPC.

pub mod admin;
pub mod cache;
pub mod guard;
pub mod hashing;
pub mod model;
pub mod notify;
pub mod repo;
pub mod resolver;
pub mod usage;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use crate::core::clock::{Clock, SystemClock};
use crate::engine::Engine;
use crate::store::{CounterStore, StoreError};

pub use admin::KeyAdmin;
pub use resolver::{
    KeyStoreFailureMode, Resolver, ResolverOptions, Source, Standing, quota_period,
};
pub use usage::UsageFlusher;

use cache::{CacheOptions, KeyCache};
use guard::{AbuseGuard, GuardOptions};
use hashing::KeyHasher;
use model::{ApiKey, Millis, PlanLimit, Quota, ResolvedKey};
use repo::{ChangeError, RepoError, Repository};
use usage::UsageRecorder;

/// Why a key-management call failed; the gRPC layer maps each variant to
/// a status code.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("too many failed key validations from this address; try again in a minute")]
    TooManyFailures,
    #[error("key store unavailable: {0}")]
    Unavailable(String),
    #[error("counter store: {0}")]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<RepoError> for KeyError {
    fn from(e: RepoError) -> KeyError {
        match e {
            RepoError::Corrupt { .. } => KeyError::Internal(e.to_string()),
            RepoError::Scheme(_)
            | RepoError::Create { .. }
            | RepoError::Lock { .. }
            | RepoError::ConnectTimeout(_)
            | RepoError::Db(_)
            | RepoError::TlsFile { .. }
            | RepoError::Migrate(_) => KeyError::Unavailable(e.to_string()),
        }
    }
}

impl From<ChangeError> for KeyError {
    fn from(e: ChangeError) -> KeyError {
        match e {
            ChangeError::NotFound(_) => KeyError::NotFound(e.to_string()),
            ChangeError::AlreadyExists(_) => KeyError::AlreadyExists(e.to_string()),
            ChangeError::NoSuchPlan(p) => KeyError::Invalid {
                field: "plan".into(),
                problem: format!("no plan named {p:?}"),
            },
            ChangeError::PlanInUse { .. } | ChangeError::Revoked(_) => {
                KeyError::FailedPrecondition(e.to_string())
            }
            ChangeError::Repo(r) => r.into(),
        }
    }
}

impl From<hashing::RandomError> for KeyError {
    fn from(e: hashing::RandomError) -> KeyError {
        KeyError::Internal(e.to_string())
    }
}

/// The answer about a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    NotFound,
    Disabled,
    Expired,
    Revoked,
    InsufficientScope,
    RateLimited,
    UsageExceeded,
}

/// A key looked up by its secret.
#[derive(Clone, Debug)]
pub struct Resolution {
    pub verdict: Verdict,
    /// `None` only for `NotFound`.
    pub key: Option<Arc<ResolvedKey>>,
}

/// Where one limit stands after a validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitReport {
    pub name: String,
    pub limit: u64,
    pub remaining: u64,
    pub reset_seconds: u64,
    pub exceeded: bool,
}

/// The result of `ValidateKey`.
#[derive(Clone, Debug)]
pub struct Validation {
    pub verdict: Verdict,
    pub key: Option<Arc<ResolvedKey>>,
    pub limits: Vec<LimitReport>,
}

/// A new key and its secret, shown once.
#[derive(Debug)]
pub struct CreatedKey {
    pub key: ApiKey,
    pub secret: String,
}

/// A rotated key, its new secret and when the old one stops.
#[derive(Debug)]
pub struct RotatedKey {
    pub key: ApiKey,
    pub secret: String,
    pub previous_expires_at: Millis,
}

/// What `CreateKey` asks for.
#[derive(Clone, Debug, Default)]
pub struct NewKey {
    pub name: String,
    pub owner_id: String,
    pub plan: String,
    pub scopes: Vec<String>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub expires_at: Option<Millis>,
    pub prefix: String,
    pub limits: Option<Vec<PlanLimit>>,
}

/// What `CreatePlan` / `UpdatePlan` ask for.
#[derive(Clone, Debug, Default)]
pub struct PlanDraft {
    pub name: String,
    pub description: String,
    pub limits: Vec<PlanLimit>,
    pub quota: Option<Quota>,
}

/// Key-manager settings.
#[derive(Clone, Copy, Debug)]
pub struct KeyOptions {
    pub cache: CacheOptions,
    pub guard: GuardOptions,
    pub resolver: ResolverOptions,
    /// How often usage is written.
    pub flush_every: Duration,
}

impl Default for KeyOptions {
    fn default() -> Self {
        KeyOptions {
            cache: CacheOptions::default(),
            guard: GuardOptions::default(),
            resolver: ResolverOptions::default(),
            flush_every: Duration::from_secs(10),
        }
    }
}

/// Carries key and plan changes to other replicas (besides PostgreSQL's
/// NOTIFY, which the repository sends itself).
pub trait ChangeBus: Send + Sync + std::fmt::Debug + 'static {
    /// Announces `payload` (a key id, `plan:<name>` or `*`); never blocks.
    fn publish(&self, payload: String);
}

/// The three parts of key management, sharing one cache, usage recorder
/// and guard.
#[derive(Debug)]
pub struct KeyParts<S> {
    pub resolver: Arc<Resolver<S>>,
    pub admin: Arc<KeyAdmin>,
    pub flusher: UsageFlusher,
    /// What change notices from other replicas are applied to.
    pub cache: Arc<KeyCache>,
}

impl<S: CounterStore> KeyParts<S> {
    pub fn new(
        repo: Repository,
        hasher: KeyHasher,
        engine: Arc<Engine<S>>,
        options: KeyOptions,
        bus: Option<Arc<dyn ChangeBus>>,
    ) -> KeyParts<S> {
        let cache = Arc::new(KeyCache::new(options.cache));
        let usage = Arc::new(UsageRecorder::default());
        let guard = Arc::new(AbuseGuard::new(options.guard));
        KeyParts {
            resolver: Arc::new(Resolver::new(
                repo.lookups(options.resolver.max_connections, options.resolver.timeout),
                hasher.clone(),
                cache.clone(),
                usage.clone(),
                guard.clone(),
                engine,
                options.resolver,
            )),
            admin: Arc::new(KeyAdmin::new(
                repo.clone(),
                hasher,
                cache.clone(),
                guard.clone(),
                bus,
            )),
            flusher: UsageFlusher::new(repo, usage, guard, options.flush_every),
            cache,
        }
    }
}

fn now_ms(clock: &SystemClock) -> Millis {
    i64::try_from(clock.now_ns() / 1_000_000).unwrap_or(i64::MAX)
}
