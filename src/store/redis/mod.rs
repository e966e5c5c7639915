//! The Redis counter store: counters shared by every sluice replica, in a
//! standalone Redis, a Redis Cluster or behind Sentinel.
//!
//! # Semantics
//!
//! Exactly those of the memory store and [`crate::core::algorithm`]: fixed
//! window, sliding window and GCRA token bucket; [`ChargePolicy::Always`]
//! adds hits even when over the limit, [`ChargePolicy::AllOrNothing`]
//! charges nothing unless every limit admits; `hits == 0` only reads.
//!
//! Checks go to Redis in batches ([`batch`]): every check bound for one
//! node, from one request and from concurrent requests, is one call of
//! `lua/batch.lua`, which reads the Redis server's `TIME` once and decides
//! the checks one after the other, each reading every limit's state,
//! deciding, and writing the new states, atomically (Redis runs one script
//! at a time). The script replies with the time it used and, per check,
//! the states it read; Rust rebuilds the states and runs the very same
//! [`algorithm::decide`] at that time, so every verdict number
//! (`used_before`, `remaining`, `reset_ns`) comes from the Rust
//! algorithms. The script's own admit/charge decision is compared with
//! Rust's, and any difference is counted ([`RedisStats::mismatches`]) and
//! logged. One check's failure in the script is that check's error only.
//!
//! # Redis versions
//!
//! The batch script needs Redis 7.0 or later (it declares the
//! `allow-cross-slot-keys` flag, so one call may touch the keys of several
//! slots served by one cluster node). On an older server the script does
//! not load, and the store falls back to one `EVALSHA` per check
//! (`lua/fixed_window.lua` and the other single-check scripts, with the
//! check's keys declared), as before batching; a warning says so at start.
//!
//! # Time
//!
//! Only the Redis server's clock is used, never the local one, so replicas
//! whose clocks are skewed still share the same windows. Nothing on the
//! Redis path reads [`crate::core::clock`].
//!
//! # Keys
//!
//! See [`keys`]: `{prefix}:v2:{<128-bit hash of the descriptor>}:<slot>`.
//! All limits of one check share the hash tag, so a multi-limit check is
//! decided on one cluster node.
//!
//! # Redis Cluster
//!
//! A request's checks are grouped by the master that serves their slot
//! (from the client's slot map), one batch call per master, in parallel.
//! The call declares no keys and is sent to that master; a check whose
//! slot the master no longer serves (resharding, failover) is refused by
//! the script before it writes anything, and a call the node refuses
//! (`READONLY` after a failover) runs nothing: the slot map is refreshed
//! and those checks are sent again, to their new owner, until
//! [`batch::MIN_CONFIRM_TIMEOUT`] has passed. Nothing else is ever sent
//! twice: a call lost with its connection, or one that timed out, may have
//! run, so its checks are answered by the failure mode instead.
//!
//! # Failures and bounds
//!
//! See [`batch`] for how long a call may take: time spent queueing in
//! sluice never counts, a written call is waited for while its node shows
//! it is alive, and a node silent for `--redis-timeout` that then fails a
//! `PING` is down (its checks fail at once until it answers again; a
//! background prober looks every 100 ms). A refused or closed connection
//! is [`StoreError::Unavailable`], a node found silent
//! [`StoreError::Timeout`]. fred reconnects in the background (at most
//! 200 ms apart); scripts flushed from the server's cache (`SCRIPT FLUSH`,
//! restart, failover) are reloaded on the first `NOSCRIPT` and the call
//! sent again (it did not run).
//!
//! # What is measured
//!
//! [`RedisStore::redis_stats`]: decisions sent (`batches`), checks sent,
//! script calls (`commands`, retries included), script loads after
//! `NOSCRIPT`, refusals followed, failed calls by kind, parity
//! mismatches, and fred's own queue and redelivery counts;
//! [`CounterStore::store_histograms`]: checks per script call, script
//! calls per decision (one per node its checks went to, plus resends),
//! and the time checks waited in sluice before their call went out.

pub mod batch;
pub mod keys;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use fred::prelude::{
    Builder, Client, ClientLike, ClusterInterface, Config, Error as FredError, ErrorKind,
    LuaInterface, MetricsInterface, ReconnectPolicy,
};
use fred::types::scripts::Script;
use fred::types::{ConnectHandle, Value};
use smallvec::SmallVec;

use super::{
    Check, CheckResult, CheckResults, CounterStore, HistogramSnapshot, Outcomes, StoreError,
    StoreHealth, StoreStats,
};
use crate::core::algorithm::{self, FixedWindow, LimitState, Outcome, SlidingWindow, TokenBucket};
use crate::core::limit::{Algorithm, ChargePolicy, LimitSpec};
use crate::secret::{Secret, redact_url};
use crate::telemetry::throttle::LogThrottle;
use batch::{BatchError, Dispatcher, Node, Raw, Topology};

pub use keys::KeySpace;
use keys::Tag;

/// Default key prefix (`--redis-key-prefix`).
pub const DEFAULT_KEY_PREFIX: &str = "sluice";
/// Default silence on the wire before a node's liveness is checked.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(10);
/// Default bound on connecting (and loading the scripts).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of pooled clients (each one connection per node).
pub const DEFAULT_POOL_SIZE: usize = 2;
/// Default upper bound of the random delay added to every key's expiry.
pub const DEFAULT_EXPIRY_JITTER: Duration = Duration::from_millis(500);
/// Default most checks in one batch call (`--redis-batch-max`).
pub const DEFAULT_BATCH_MAX: usize = 128;
/// Default wait for more checks before a batch goes out
/// (`--redis-batch-wait-us`): none.
pub const DEFAULT_BATCH_WAIT: Duration = Duration::ZERO;
/// Longest `--redis-batch-wait-us`.
pub const MAX_BATCH_WAIT: Duration = Duration::from_millis(10);
/// Largest `--redis-batch-max`.
pub const MAX_BATCH_MAX: usize = 4096;

const FIXED_WINDOW: &str = concat!(
    include_str!("lua/lib.lua"),
    include_str!("lua/fixed_window.lua")
);
const SLIDING_WINDOW: &str = concat!(
    include_str!("lua/lib.lua"),
    include_str!("lua/sliding_window.lua")
);
const TOKEN_BUCKET: &str = concat!(
    include_str!("lua/lib.lua"),
    include_str!("lua/token_bucket.lua")
);
const MULTI_LIMIT: &str = concat!(
    include_str!("lua/lib.lua"),
    include_str!("lua/multi_limit.lua")
);
/// The shebang must be the script's first line.
const BATCH: &str = concat!(
    "#!lua flags=allow-cross-slot-keys\n",
    include_str!("lua/lib.lua"),
    include_str!("lua/batch.lua")
);

/// How to reach Redis and how to use it.
#[derive(Clone)]
pub struct RedisOptions {
    /// In fred's syntax: `redis://[[user]:password@]host[:port][/db]`,
    /// `rediss://…` (TLS, rustls with the system's roots),
    /// `redis-cluster://[[user]:password@]host:port?node=host:port&node=…`
    /// (`rediss-cluster://` for TLS), or
    /// `redis-sentinel://[[user]:password@]host[:port][/db]?sentinelServiceName=NAME&node=host:port`
    /// (sentinel nodes; `sentinelUsername` / `sentinelPassword` for
    /// sentinels that have their own credentials).
    pub url: String,
    /// Overrides the URL's password (e.g. from a secret file or env var).
    pub password: Option<Secret>,
    /// Prefix of every key (`--redis-key-prefix`); see [`keys`].
    pub key_prefix: String,
    /// Silence on the wire before a node's liveness is checked (see
    /// [`batch`]); default 10 ms; must be above 0.
    pub command_timeout: Duration,
    /// Bound on connecting and loading scripts; default 5 s; above 0.
    pub connect_timeout: Duration,
    /// Pooled clients; each is one connection per node and carries one
    /// batch call at a time. Default 2.
    pub pool_size: usize,
    /// Most random delay added to each key's expiry (spreads the expiry of
    /// keys whose windows end together). Default 500 ms.
    pub expiry_jitter: Duration,
    /// Most checks in one batch call (`--redis-batch-max`); default 128.
    pub batch_max: usize,
    /// How long a batch waits for more checks before it goes out
    /// (`--redis-batch-wait-us`); default 0: at once.
    pub batch_wait: Duration,
    /// A private CA and a client certificate for a TLS URL; see
    /// [`RedisTlsFiles`].
    pub tls: RedisTlsFiles,
}

/// TLS files for a `rediss://`, `rediss-cluster://` or `rediss-sentinel://`
/// URL, read once when a client is built (a restart picks up rotated
/// files). Without any, the system's roots verify the server and no
/// client certificate is sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisTlsFiles {
    /// PEM CA certificates (`--redis-tls-ca`): the only roots the Redis
    /// servers' certificates are verified against (the system's are not
    /// used then).
    pub ca: Option<PathBuf>,
    /// PEM certificate chain presented to Redis (`--redis-tls-cert`), for
    /// servers with `tls-auth-clients yes`; needs [`key`](Self::key).
    pub cert: Option<PathBuf>,
    /// PEM private key of [`cert`](Self::cert) (`--redis-tls-key`).
    pub key: Option<PathBuf>,
}

impl RedisTlsFiles {
    fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

impl RedisOptions {
    /// Options with every default, for `url`.
    pub fn new(url: impl Into<String>) -> RedisOptions {
        RedisOptions {
            url: url.into(),
            password: None,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool_size: DEFAULT_POOL_SIZE,
            expiry_jitter: DEFAULT_EXPIRY_JITTER,
            batch_max: DEFAULT_BATCH_MAX,
            batch_wait: DEFAULT_BATCH_WAIT,
            tls: RedisTlsFiles::default(),
        }
    }
}

/// fred's configuration for `options`: the URL, the password override,
/// and for a TLS URL a rustls client (ring) trusting `--redis-tls-ca` (or
/// the system's roots) and presenting `--redis-tls-cert` when given.
/// Shared by the counter store and the key-change bus.
///
/// # Errors
/// [`ConnectError::Config`]: a bad URL, a password that is not text, TLS
/// files given with a plaintext URL, or TLS files that cannot be read or
/// used (the message names the flag).
pub fn fred_config(options: &RedisOptions) -> Result<Config, ConnectError> {
    let url = redact_url(&options.url);
    let mut config = Config::from_url(&options.url)
        .map_err(|e| ConnectError::Config(format!("Redis URL {url}: {}", e.details())))?;
    if let Some(password) = &options.password {
        let text = password.expose_str().ok_or_else(|| {
            ConnectError::Config("the Redis password is not UTF-8 text".to_owned())
        })?;
        config.password = Some(text.to_owned());
    }
    if config.tls.is_none() {
        if !options.tls.is_empty() {
            return Err(ConnectError::Config(format!(
                "--redis-tls-ca, --redis-tls-cert and --redis-tls-key need a TLS Redis URL \
                 (rediss://, rediss-cluster:// or rediss-sentinel://), not {url}"
            )));
        }
        return Ok(config);
    }
    let files = &options.tls;
    let roots = crate::tls::client_roots(files.ca.as_deref())
        .map_err(|e| ConnectError::Config(format!("--redis-tls-ca: {e}")))?;
    let identity = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        (None, None) => None,
        _ => {
            return Err(ConnectError::Config(
                "--redis-tls-cert and --redis-tls-key go together".to_owned(),
            ));
        }
    };
    let client = crate::tls::client_config_from(roots, identity)
        .map_err(|e| ConnectError::Config(format!("--redis-tls-cert/--redis-tls-key: {e}")))?;
    config.tls = Some(fred::types::config::TlsConnector::from(client).into());
    Ok(config)
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password)
            .field("key_prefix", &self.key_prefix)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_size", &self.pool_size)
            .field("expiry_jitter", &self.expiry_jitter)
            .field("batch_max", &self.batch_max)
            .field("batch_wait", &self.batch_wait)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Why [`RedisStore::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The options are wrong (URL, prefix); retrying will not help.
    #[error("invalid Redis settings: {0}")]
    Config(String),
    /// Redis could not be reached, or failed to load scripts.
    #[error("cannot use Redis at {url}: {reason}")]
    Unavailable { url: String, reason: String },
    /// Redis refused our credentials; retrying will not help.
    #[error("Redis at {url} refused the credentials: {reason}")]
    Refused { url: String, reason: String },
    #[error("connecting to Redis at {url} timed out after {timeout:?}")]
    Timeout { url: String, timeout: Duration },
}

impl ConnectError {
    /// Whether the failure may pass by itself (Redis not up yet, loading
    /// its data, or slow): start-up retries these, and only these.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Unavailable { .. } | ConnectError::Timeout { .. } => true,
            ConnectError::Config(_) | ConnectError::Refused { .. } => false,
        }
    }
}

/// Counters about the Redis store; see the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedisStats {
    /// Decisions whose checks went to Redis.
    pub batches: u64,
    /// Checks sent to Redis (resends after a refusal included).
    pub checks: u64,
    /// Script calls sent: batch calls, or single-check `EVALSHA`s in the
    /// per-check mode; retries after `NOSCRIPT` included.
    pub commands: u64,
    /// `SCRIPT LOAD`s after a `NOSCRIPT` reply.
    pub script_loads: u64,
    /// Checks sent again because their node did not serve their slot (or,
    /// per-check mode, commands sent again after `MOVED`/`ASK`).
    pub redirects: u64,
    /// Calls answered [`StoreError::Timeout`] (their node went silent).
    pub timeouts: u64,
    /// Calls answered [`StoreError::Unavailable`].
    pub unavailable: u64,
    /// Checks where the script's admit/charge decision differed from the
    /// Rust algorithms' at the same time and state (should stay 0).
    pub mismatches: u64,
    /// fred: commands queued in the pool's clients, not yet written (gauge).
    pub queued: u64,
    /// fred: commands written again after a connection closed.
    pub redeliveries: u64,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    checks: AtomicU64,
    commands: AtomicU64,
    script_loads: AtomicU64,
    redirects: AtomicU64,
    timeouts: AtomicU64,
    unavailable: AtomicU64,
    mismatches: AtomicU64,
}

#[derive(Debug)]
struct Scripts {
    fixed: Script,
    sliding: Script,
    bucket: Script,
    multi: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            fixed: Script::from_lua(FIXED_WINDOW),
            sliding: Script::from_lua(SLIDING_WINDOW),
            bucket: Script::from_lua(TOKEN_BUCKET),
            multi: Script::from_lua(MULTI_LIMIT),
        }
    }

    fn all(&self) -> [&Script; 4] {
        [&self.fixed, &self.sliding, &self.bucket, &self.multi]
    }
}

/// Script calls per decision: 1 up to 64.
const CALL_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0, 32.0, 64.0];

/// Counters in Redis; see the module docs.
pub struct RedisStore {
    inner: Arc<Inner>,
    connection: Option<ConnectHandle>,
    prober: Option<tokio::task::JoinHandle<()>>,
}

/// What the store's calls and its prober share.
pub struct Inner {
    dispatcher: Arc<Dispatcher>,
    topology: ArcSwap<Topology>,
    /// Bumped by every slot-map refresh.
    topology_version: AtomicU64,
    /// One refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
    /// One batch call per node (Redis 7+), or one `EVALSHA` per check.
    batched: AtomicBool,
    /// Liveness of the per-check mode's calls (any node).
    single: Node,
    keys: KeySpace,
    url: String,
    /// `host:port` of the URL, for spans (no credentials).
    server: String,
    command_timeout: Duration,
    jitter_ms: u64,
    scripts: Scripts,
    counters: Counters,
    calls_per_decision: super::Histogram,
    jitter_seq: AtomicU64,
    jitter_hasher: ahash::RandomState,
    /// Tests: send every single check through the general script.
    general_only: AtomicBool,
}

impl std::ops::Deref for RedisStore {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("key_prefix", &self.keys.prefix())
            .field("pool_size", &self.dispatcher.pool.size())
            .field("command_timeout", &self.command_timeout)
            .field("batched", &self.is_batched())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        if let Some(p) = self.prober.take() {
            p.abort();
        }
        // Stops fred's connection tasks (and their reconnect loops).
        if let Some(handle) = self.connection.take() {
            handle.abort();
        }
    }
}

impl RedisStore {
    /// Connects every pooled client and loads the scripts, within
    /// `options.connect_timeout`.
    ///
    /// # Errors
    /// [`ConnectError`]: bad URL or prefix, Redis unreachable or refusing
    /// (authentication), or too slow.
    pub async fn connect(options: RedisOptions) -> Result<RedisStore, ConnectError> {
        let url = redact_url(&options.url);
        let keys = KeySpace::new(&options.key_prefix).map_err(ConnectError::Config)?;
        if options.command_timeout.is_zero() || options.connect_timeout.is_zero() {
            // fred reads 0 as "no timeout"; every call here is bounded.
            return Err(ConnectError::Config(
                "Redis command and connect timeouts must be above 0".to_owned(),
            ));
        }
        if options.batch_max == 0 || options.batch_max > MAX_BATCH_MAX {
            return Err(ConnectError::Config(format!(
                "Redis batch size must be 1 to {MAX_BATCH_MAX} checks"
            )));
        }
        if options.batch_wait > MAX_BATCH_WAIT {
            return Err(ConnectError::Config(format!(
                "Redis batch wait must be at most {} µs",
                MAX_BATCH_WAIT.as_micros()
            )));
        }
        let mut config = fred_config(&options)?;
        // The first connection's errors are returned, not retried.
        config.fail_fast = true;
        let command_timeout = options.command_timeout;
        let connect_timeout = options.connect_timeout;
        // fred's own per-command timeout is only a backstop: the batch
        // calls are bounded on the wire (see `batch`), not from the moment
        // they were queued.
        let backstop = (command_timeout * 100).max(Duration::from_secs(1));
        let pool = Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = backstop)
            .with_connection_config(|c| {
                c.connection_timeout = connect_timeout;
                c.internal_command_timeout = connect_timeout;
                // Never write a script twice on fred's own: a replay after
                // a dropped connection could charge the same hits again.
                // (Refused calls, where the script did not run, are sent
                // again by the store.)
                c.max_command_attempts = 1;
                c.tcp.nodelay = Some(true);
            })
            // Reconnect at most 200 ms apart, so decisions come from Redis
            // again soon after it answers.
            .set_policy(ReconnectPolicy::new_exponential(0, 20, 200, 2))
            .build_pool(options.pool_size.max(1))
            .map_err(|e| ConnectError::Config(format!("Redis client: {}", e.details())))?;

        let unavailable = |e: FredError| match e.kind() {
            ErrorKind::Auth => ConnectError::Refused {
                url: url.clone(),
                reason: e.to_string(),
            },
            _ => ConnectError::Unavailable {
                url: url.clone(),
                reason: e.to_string(),
            },
        };
        let timed_out = || ConnectError::Timeout {
            url: url.clone(),
            timeout: connect_timeout,
        };
        let connection = tokio::time::timeout(connect_timeout, pool.init())
            .await
            .map_err(|_| timed_out())?
            .map_err(unavailable)?;
        let scripts = Scripts::new();
        let client = pool.next();
        for script in scripts.all() {
            tokio::time::timeout(connect_timeout, script.load(client))
                .await
                .map_err(|_| timed_out())?
                .map_err(unavailable)?;
        }
        let batch_script = Script::from_lua(BATCH);
        let batched = match tokio::time::timeout(connect_timeout, batch_script.load(client))
            .await
            .map_err(|_| timed_out())?
        {
            Ok(()) => true,
            Err(e) if batch::answered(&e) => {
                tracing::warn!(
                    redis = %url,
                    error = %e,
                    "Redis refused the batch script (it needs Redis 7 or later); sending one call per check"
                );
                false
            }
            Err(e) => return Err(unavailable(e)),
        };
        let clustered = client.is_clustered();
        let dispatcher = Arc::new(Dispatcher::new(
            pool,
            batch_script,
            url.clone(),
            options.batch_max,
            options.batch_wait,
            command_timeout,
        ));
        let topology = if clustered {
            let t = dispatcher
                .pool
                .next()
                .cached_cluster_state()
                .map(|state| Topology::cluster(state.slots(), &Topology::single()));
            t.filter(|t| !t.nodes.is_empty())
                .ok_or_else(|| ConnectError::Unavailable {
                    url: url.clone(),
                    reason: "no cluster slot map".to_owned(),
                })?
        } else {
            Topology::single()
        };
        let inner = Arc::new(Inner {
            dispatcher,
            topology: ArcSwap::from_pointee(topology),
            topology_version: AtomicU64::new(0),
            refreshing: tokio::sync::Mutex::new(()),
            batched: AtomicBool::new(batched),
            single: Node::detached(),
            keys,
            url: url.clone(),
            server: authority_of(&url),
            command_timeout,
            jitter_ms: u64::try_from(options.expiry_jitter.as_millis()).unwrap_or(u64::MAX),
            scripts,
            counters: Counters::default(),
            calls_per_decision: super::Histogram::new(CALL_BUCKETS),
            jitter_seq: AtomicU64::new(0),
            jitter_hasher: ahash::RandomState::new(),
            general_only: AtomicBool::new(false),
        });
        let prober = tokio::spawn(probe_forever(Arc::downgrade(&inner)));
        tracing::info!(
            redis = %url,
            pool = inner.dispatcher.pool.size(),
            prefix = inner.keys.prefix(),
            batched,
            nodes = inner.topology.load().nodes.len(),
            "connected to Redis"
        );
        Ok(RedisStore {
            inner,
            connection: Some(connection),
            prober: Some(prober),
        })
    }

    /// Closes the connections (best effort, bounded by the connect
    /// timeout's default).
    pub async fn shutdown(&self) {
        let _ = tokio::time::timeout(DEFAULT_CONNECT_TIMEOUT, self.dispatcher.pool.quit()).await;
    }
}

/// Looks at the nodes that are down every [`batch::PROBE_INTERVAL`] until
/// the store is dropped.
async fn probe_forever(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(batch::PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.probe_round().await;
    }
}

impl Inner {
    /// Counters; see the module docs.
    pub fn redis_stats(&self) -> RedisStats {
        let c = &self.counters;
        let b = &self.dispatcher.stats;
        let clients = self.dispatcher.pool.clients();
        RedisStats {
            batches: c.batches.load(Relaxed),
            checks: c.checks.load(Relaxed),
            commands: c.commands.load(Relaxed) + b.calls.load(Relaxed),
            script_loads: c.script_loads.load(Relaxed) + b.script_loads.load(Relaxed),
            redirects: c.redirects.load(Relaxed),
            timeouts: c.timeouts.load(Relaxed) + b.timeouts.load(Relaxed),
            unavailable: c.unavailable.load(Relaxed) + b.unavailable.load(Relaxed),
            mismatches: c.mismatches.load(Relaxed),
            queued: clients.iter().map(|c| c.command_queue_len() as u64).sum(),
            redeliveries: clients
                .iter()
                .map(|c| c.read_redelivery_count() as u64)
                .sum(),
        }
    }

    /// The key space (for tools and tests that inspect Redis).
    pub fn key_space(&self) -> &KeySpace {
        &self.keys
    }

    /// Whether checks go out as batch calls (Redis 7+) rather than one
    /// call each.
    pub fn is_batched(&self) -> bool {
        self.batched.load(Relaxed)
    }

    /// Tests: one call per check, as with Redis before 7.
    #[cfg(test)]
    fn set_batched(&self, on: bool) {
        self.batched.store(on, Relaxed);
    }

    /// The keys of a check's limits, in order.
    pub fn keys_of(&self, check: &Check<'_>) -> Vec<String> {
        let tag = Tag::of(check.key);
        check
            .limits
            .iter()
            .map(|l| self.keys.limit_key(&tag, l.slot))
            .collect()
    }

    /// Tests: send every single check through the general script.
    #[cfg(test)]
    fn set_general_only(&self, on: bool) {
        self.general_only.store(on, Relaxed);
    }

    fn script_for(&self, limits: &[LimitSpec]) -> &Script {
        match limits {
            [one] if !self.general_only.load(Relaxed) => match one.algorithm {
                Algorithm::FixedWindow => &self.scripts.fixed,
                Algorithm::SlidingWindow => &self.scripts.sliding,
                Algorithm::TokenBucket => &self.scripts.bucket,
            },
            _ => &self.scripts.multi,
        }
    }

    fn jitter(&self) -> u64 {
        if self.jitter_ms == 0 {
            return 0;
        }
        let n = self.jitter_seq.fetch_add(1, Relaxed);
        self.jitter_hasher.hash_one(n) % (self.jitter_ms + 1)
    }

    // === batched mode ===

    /// Every check with limits through the batch calls; see the module
    /// docs for resends.
    async fn check_batched(
        &self,
        checks: &[Check<'_>],
        results: &mut [Option<CheckResult>],
        mut trace: Option<&mut CallTrace>,
    ) {
        let tags: SmallVec<[Tag; 4]> = checks.iter().map(|c| Tag::of(c.key)).collect();
        let mut todo: SmallVec<[usize; 8]> = (0..checks.len())
            .filter(|&i| results[i].is_none())
            .collect();
        let deadline = Instant::now() + self.dispatcher.confirm_timeout;
        let mut backoff = Duration::from_millis(1);
        let mut calls = 0u64;
        let mut buf: Vec<u8> = Vec::new();
        let mut refusal = String::new();
        loop {
            let version = self.topology_version.load(Relaxed);
            let topology = self.topology.load();
            // Group by node, in order; split into segments of at most
            // `batch_max` checks.
            let mut groups: SmallVec<[(usize, SmallVec<[usize; 4]>); 3]> = SmallVec::new();
            for &i in &todo {
                match topology.node_for(&tags[i]) {
                    Some(n) => match groups.iter_mut().find(|(node, _)| *node == n) {
                        Some((_, g)) => g.push(i),
                        None => groups.push((n, smallvec::smallvec![i])),
                    },
                    None => {
                        results[i] = Some(Err(StoreError::Unavailable(format!(
                            "no Redis Cluster master at {} serves this check's slot",
                            self.url
                        ))));
                    }
                }
            }
            let mut waits: SmallVec<[(SmallVec<[usize; 4]>, batch::SegmentRx); 3]> =
                SmallVec::new();
            for (n, group) in &groups {
                let Some(node) = topology.nodes.get(*n) else {
                    continue;
                };
                if let Some(t) = trace.as_deref_mut() {
                    t.node(|| match &node.server {
                        Some(s) => format!("{}:{}", s.host, s.port),
                        None => self.server.clone(),
                    });
                    t.checks += group.len() as u64;
                }
                for chunk in group.chunks(self.dispatcher.max_checks) {
                    buf.clear();
                    for &i in chunk {
                        self.encode(&mut buf, &checks[i], &tags[i]);
                    }
                    self.counters.checks.fetch_add(chunk.len() as u64, Relaxed);
                    let rx = self.dispatcher.submit(node, &buf, chunk.len());
                    waits.push((chunk.iter().copied().collect(), rx));
                }
            }
            calls += waits.len() as u64;
            if let Some(t) = trace.as_deref_mut() {
                t.calls += waits.len() as u64;
            }
            todo.clear();
            let replies: SmallVec<[_; 3]> = if let [(_, rx)] = &mut waits[..] {
                smallvec::smallvec![rx.await]
            } else {
                futures_util::future::join_all(waits.iter_mut().map(|(_, rx)| rx))
                    .await
                    .into_iter()
                    .collect()
            };
            for ((idx, _), reply) in waits.iter().zip(replies) {
                match reply {
                    Err(_) => {
                        for &i in idx {
                            results[i] = Some(Err(StoreError::Unavailable(
                                "a Redis batch call was dropped".into(),
                            )));
                        }
                    }
                    Ok(Err(BatchError::Refused(why))) => {
                        refusal = why;
                        todo.extend(idx.iter().copied());
                    }
                    Ok(Err(BatchError::Store(e))) => {
                        for &i in idx {
                            results[i] = Some(Err(e.clone()));
                        }
                    }
                    Ok(Ok(seg)) => {
                        if let Some(t) = trace.as_deref_mut() {
                            t.batch_checks += seg.batch_checks as u64;
                            t.batch_segments += seg.batch_segments as u64;
                        }
                        for (&i, raw) in idx.iter().zip(seg.results) {
                            results[i] = Some(match raw {
                                Raw::Done {
                                    charged,
                                    admitted,
                                    states,
                                } => self
                                    .outcome_of(&checks[i], seg.now_ns, charged, admitted, &states),
                                Raw::Refused(why) => {
                                    refusal = why;
                                    todo.push(i);
                                    continue;
                                }
                                Raw::Failed(msg) => Err(StoreError::Unavailable(format!(
                                    "Redis script failed on a check: {msg}"
                                ))),
                            });
                        }
                    }
                }
            }
            if todo.is_empty() {
                break;
            }
            self.counters
                .redirects
                .fetch_add(todo.len() as u64, Relaxed);
            if Instant::now() + backoff > deadline {
                for &i in &todo {
                    results[i] = Some(Err(StoreError::Unavailable(format!(
                        "Redis at {} kept refusing a check (its slot is moving?): {refusal}",
                        self.url
                    ))));
                }
                break;
            }
            self.refresh_topology(version).await;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(25));
        }
        #[allow(clippy::cast_precision_loss)]
        self.calls_per_decision.observe(calls as f64);
    }

    fn encode(&self, out: &mut Vec<u8>, check: &Check<'_>, tag: &Tag) {
        batch::encode_check(out, &self.keys, tag, check, self.jitter());
    }

    /// Rebuilds the states a batch call read and decides with the Rust
    /// algorithms at the script's time.
    fn outcome_of(
        &self,
        check: &Check<'_>,
        now: u64,
        charged: bool,
        admitted: bool,
        raw: &[[Option<u64>; 3]],
    ) -> CheckResult {
        let mut states = states_of(check, raw)?;
        Ok(self.compare(check, &mut states, now, charged, admitted))
    }

    /// Decides at `now` on `states` and counts (and logs) a disagreement
    /// with what the script decided.
    fn compare(
        &self,
        check: &Check<'_>,
        states: &mut [LimitState],
        now: u64,
        charged: bool,
        admitted: bool,
    ) -> Outcome {
        let (outcome, wrote) = decide_at(check, states, now);
        if wrote != charged || outcome.admitted != admitted {
            self.counters.mismatches.fetch_add(1, Relaxed);
            static DISAGREE: LogThrottle = LogThrottle::new();
            let Some(r) = DISAGREE.admit() else {
                return outcome;
            };
            tracing::error!(
                occurrences = r.count,
                repeated = %r,
                redis = %self.url,
                script_charged = charged,
                script_admitted = admitted,
                rust_charged = wrote,
                rust_admitted = outcome.admitted,
                limits = ?check.limits,
                hits = check.hits,
                "Redis script and Rust algorithms disagree"
            );
        }
        outcome
    }

    /// Re-reads the cluster's slot map unless it changed since `seen`.
    async fn refresh_topology(&self, seen: u64) {
        let _one = self.refreshing.lock().await;
        if self.topology_version.load(Relaxed) != seen {
            return;
        }
        self.dispatcher.sync_cluster().await;
        let old = self.topology.load_full();
        if !old.is_cluster() {
            self.topology_version.fetch_add(1, Relaxed);
            return;
        }
        if let Some(state) = self.dispatcher.pool.next().cached_cluster_state() {
            let fresh = Topology::cluster(state.slots(), &old);
            if !fresh.nodes.is_empty() {
                self.topology.store(Arc::new(fresh));
            }
        }
        self.topology_version.fetch_add(1, Relaxed);
    }

    /// One prober round: refresh a cluster's slot map while a node is
    /// down, and `PING` the nodes that are down.
    async fn probe_round(&self) {
        let topology = self.topology.load_full();
        if topology.is_cluster() && topology.nodes.iter().any(|n| n.is_down()) {
            self.refresh_topology(self.topology_version.load(Relaxed))
                .await;
        }
        let topology = self.topology.load_full();
        for node in topology.nodes.iter().filter(|n| n.is_down()) {
            if self.dispatcher.ping(node).await {
                self.dispatcher.mark_up(node);
            }
        }
        if self.single.is_down() && self.dispatcher.ping(&self.single).await {
            self.dispatcher.mark_up(&self.single);
        }
    }

    /// Whether any node is down.
    fn any_down(&self) -> bool {
        self.single.is_down() || self.topology.load().nodes.iter().any(|n| n.is_down())
    }

    // === per-check mode (Redis before 7) ===

    /// ARGV for a single-check script (layout in `lua/lib.lua`): per
    /// limit, the window and the offset go in µs, exact for every window
    /// [`LimitSpec::with_window`] makes (whole ms).
    fn args(&self, check: &Check<'_>) -> Vec<Value> {
        let mut args = Vec::with_capacity(3 + 6 * check.limits.len());
        args.push(Value::from(match check.policy {
            ChargePolicy::Always => "always",
            ChargePolicy::AllOrNothing => "all",
        }));
        args.push(Value::from(check.hits.to_string()));
        args.push(Value::from(self.jitter().to_string()));
        for l in check.limits {
            args.push(Value::from(match l.algorithm {
                Algorithm::FixedWindow => "fixed",
                Algorithm::SlidingWindow => "sliding",
                Algorithm::TokenBucket => "bucket",
            }));
            args.push(Value::from((l.window_ns / 1_000).to_string()));
            args.push(Value::from(l.requests_per_unit.to_string()));
            args.push(Value::from(l.burst.to_string()));
            let interval = if l.requests_per_unit == 0 {
                0
            } else {
                (l.window_ns() / u64::from(l.requests_per_unit)).max(1)
            };
            args.push(Value::from(interval.to_string()));
            // Reduced like `LimitSpec::window_start` does, so a spec built
            // by hand with an offset past the window still agrees.
            args.push(Value::from(
                ((l.offset_ns % l.window_ns.max(1)) / 1_000).to_string(),
            ));
        }
        args
    }

    /// One `EVALSHA`, retried (at most twice in all) when the script
    /// certainly did not run: after `NOSCRIPT` (the script is loaded first)
    /// and after a cluster redirection (`MOVED`/`ASK`; fred has refreshed
    /// its slot map by then).
    async fn eval(
        &self,
        client: &Client,
        script: &Script,
        check: &Check<'_>,
    ) -> Result<Vec<Value>, FredError> {
        let mut retries = 0;
        loop {
            self.counters.commands.fetch_add(1, Relaxed);
            let result = client
                .evalsha(script.sha1().clone(), self.keys_of(check), self.args(check))
                .await;
            let Err(e) = &result else { return result };
            if retries == 2 {
                return result;
            }
            retries += 1;
            if e.details().starts_with("NOSCRIPT") {
                tracing::debug!(redis = %self.url, sha = %script.sha1(), "script not cached; loading it");
                script.load(client).await?;
                self.counters.script_loads.fetch_add(1, Relaxed);
            } else if is_redirected(e) {
                tracing::debug!(redis = %self.url, "command redirected; retrying on the new owner");
                self.counters.redirects.fetch_add(1, Relaxed);
            } else {
                return result;
            }
        }
    }

    async fn check_one(&self, client: &Client, check: &Check<'_>) -> CheckResult {
        let reply = self
            .eval(client, self.script_for(check.limits), check)
            .await
            .map_err(|e| self.store_error(&e))?;
        if let Ok(v) = reply.first().map(parse_u64).transpose()
            && v.is_some()
        {
            self.single.hear(self.dispatcher.now_ns());
        }
        self.outcome(check, &reply)
    }

    /// Rebuilds the states a single-check script read and decides with the
    /// Rust algorithms at the script's time.
    fn outcome(&self, check: &Check<'_>, reply: &[Value]) -> CheckResult {
        let mut r = parse_reply(check, reply)?;
        Ok(self.compare(check, &mut r.states, r.now, r.charged, r.admitted))
    }

    fn store_error(&self, e: &FredError) -> StoreError {
        match e.kind() {
            ErrorKind::Timeout => StoreError::Timeout(self.command_timeout),
            _ => StoreError::Unavailable(format!("Redis at {}: {e}", self.url)),
        }
    }

    /// A connected client, or `Unavailable` when none is.
    fn client(&self) -> Result<&Client, StoreError> {
        let client = self.dispatcher.pool.next_connected();
        if client.is_connected() {
            Ok(client)
        } else {
            Err(StoreError::Unavailable(format!(
                "not connected to Redis at {}",
                self.url
            )))
        }
    }

    /// Every check with limits as its own `EVALSHA`, pipelined, waited for
    /// on the wire like a batch call.
    async fn check_per_check(
        &self,
        checks: &[Check<'_>],
        results: &mut [Option<CheckResult>],
        trace: Option<&mut CallTrace>,
    ) {
        if self.single.is_down() {
            let e = StoreError::Unavailable(format!("Redis at {} is down", self.url));
            for r in results.iter_mut().filter(|r| r.is_none()) {
                *r = Some(Err(e.clone()));
            }
            return;
        }
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => {
                for r in results.iter_mut().filter(|r| r.is_none()) {
                    *r = Some(Err(e.clone()));
                }
                return;
            }
        };
        let todo: SmallVec<[usize; 8]> = (0..checks.len())
            .filter(|&i| results[i].is_none())
            .collect();
        self.counters.checks.fetch_add(todo.len() as u64, Relaxed);
        #[allow(clippy::cast_precision_loss)]
        self.calls_per_decision.observe(todo.len() as f64);
        if let Some(t) = trace {
            t.node(|| self.server.clone());
            t.checks += todo.len() as u64;
            t.calls += todo.len() as u64;
            t.batch_checks += todo.len() as u64;
            t.batch_segments += 1;
        }
        let all = futures_util::future::join_all(
            todo.iter().map(|&i| self.check_one(client, &checks[i])),
        );
        match self.dispatcher.on_the_wire(&self.single, all).await {
            Ok(done) => {
                for (&i, r) in todo.iter().zip(done) {
                    results[i] = Some(r);
                }
            }
            Err(_) => {
                self.dispatcher
                    .mark_down(&self.single, "no answer, not even to PING");
                for &i in &todo {
                    results[i] = Some(Err(StoreError::Timeout(self.command_timeout)));
                }
            }
        }
    }

    /// Decides every check (see [`CounterStore::check_each`]).
    pub async fn check_each(&self, checks: &[Check<'_>]) -> CheckResults {
        let mut results: SmallVec<[Option<CheckResult>; 4]> = checks
            .iter()
            .map(|c| c.limits.is_empty().then(|| Ok(decide_at(c, &mut [], 0).0)))
            .collect();
        if results.iter().any(Option::is_none) {
            self.counters.batches.fetch_add(1, Relaxed);
            let span = crate::telemetry::otel::parent_span().map(|p| self.store_span(&p));
            let mut trace = span.as_ref().map(|_| CallTrace::default());
            if self.is_batched() {
                self.check_batched(checks, &mut results, trace.as_mut())
                    .await;
            } else {
                self.check_per_check(checks, &mut results, trace.as_mut())
                    .await;
            }
            if let (Some(span), Some(trace)) = (span, trace) {
                trace.finish(&span, &results);
            }
        }
        let mut out = CheckResults::with_capacity(results.len());
        for r in results {
            let r = r.unwrap_or_else(|| {
                Err(StoreError::Unavailable(
                    "Redis store left a check unanswered".into(),
                ))
            });
            out.push(r);
        }
        out
    }
}

impl Inner {
    /// The span of one request's wait on Redis, a child of `parent` (its
    /// RPC's SERVER span); see [`CallTrace`].
    fn store_span(&self, parent: &tracing::Span) -> tracing::Span {
        let batched = self.is_batched();
        tracing::info_span!(
            target: "sluice::store",
            parent: parent,
            "redis",
            otel.name = if batched { "EVALSHA batch" } else { "EVALSHA" },
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            error.type = tracing::field::Empty,
            db.system.name = "redis",
            db.operation.name = "EVALSHA",
            server.address = tracing::field::Empty,
            sluice.redis.nodes = tracing::field::Empty,
            sluice.redis.batched = batched,
            sluice.redis.checks = tracing::field::Empty,
            sluice.redis.calls = tracing::field::Empty,
            sluice.redis.batch_checks = tracing::field::Empty,
            sluice.redis.batch_requests = tracing::field::Empty,
        )
    }
}

/// What one request's store call did, for its span (only while tracing is
/// on and the request is traced).
///
/// Batch calls coalesce the checks of concurrent requests, so a call has
/// no one parent request. The span is therefore the *request's*: it
/// starts when the request hands its checks to the node queues and ends
/// when its last reply is in, a child of that request's SERVER span. It
/// names the nodes the request's checks went to, how many checks it sent
/// and how many script calls it waited on (one per node, plus resends),
/// and how many checks and requests those calls carried in all (its own
/// included: `batch_checks` above `checks` means it shared a call). The
/// call itself gets no span: one span per batch call would start a trace
/// of its own (no request owns it) for every round trip.
#[derive(Debug, Default)]
struct CallTrace {
    /// `host:port` of the nodes the request's checks went to.
    nodes: SmallVec<[String; 2]>,
    checks: u64,
    calls: u64,
    batch_checks: u64,
    batch_segments: u64,
}

/// Most node names a span lists.
const MAX_SPAN_NODES: usize = 8;

impl CallTrace {
    fn node(&mut self, name: impl FnOnce() -> String) {
        if self.nodes.len() < MAX_SPAN_NODES {
            let name = name();
            if !self.nodes.contains(&name) {
                self.nodes.push(name);
            }
        }
    }

    /// Records the counts, and the first failed check's error.
    fn finish(self, span: &tracing::Span, results: &[Option<CheckResult>]) {
        let nodes = self.nodes.join(",");
        if let [one] = self.nodes.as_slice() {
            span.record("server.address", one.as_str());
        }
        span.record("sluice.redis.nodes", nodes.as_str());
        span.record("sluice.redis.checks", self.checks);
        span.record("sluice.redis.calls", self.calls);
        // Known only from answered calls.
        if self.batch_segments > 0 {
            span.record("sluice.redis.batch_checks", self.batch_checks);
            span.record("sluice.redis.batch_requests", self.batch_segments);
        }
        let failed = results.iter().flatten().find_map(|r| r.as_ref().err());
        if let Some(e) = failed {
            let kind = match e {
                StoreError::Unavailable(_) => "unavailable",
                StoreError::Timeout(_) => "timeout",
            };
            crate::telemetry::otel::record_error(span, kind, &e.to_string());
        }
    }
}

/// `host:port` of a (redacted) URL: what follows the credentials, up to
/// the path or query.
fn authority_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, a)| a)
        .to_string()
}

/// What a single-check script replied, with the states it read rebuilt.
#[derive(Debug)]
struct Reply {
    /// The Redis server's time, ns since the epoch.
    now: u64,
    charged: bool,
    admitted: bool,
    /// Each limit's state before the call.
    states: SmallVec<[LimitState; 2]>,
}

fn bad_reply(what: &str) -> StoreError {
    StoreError::Unavailable(format!("unexpected reply from Redis script: {what}"))
}

fn parse_reply(check: &Check<'_>, reply: &[Value]) -> Result<Reply, StoreError> {
    if reply.len() != 4 + 3 * check.limits.len() {
        return Err(bad_reply(&format!("{} values", reply.len())));
    }
    let num = |i: usize| -> Result<Option<u64>, StoreError> {
        parse_u64(&reply[i]).map_err(|()| bad_reply(&format!("value {i} is not a number")))
    };
    let (Some(secs), Some(micros)) = (num(0)?, num(1)?) else {
        return Err(bad_reply("no time"));
    };
    let now = secs
        .checked_mul(1_000_000_000)
        .and_then(|ns| ns.checked_add(micros.checked_mul(1_000)?))
        .ok_or_else(|| bad_reply("time out of range"))?;
    let charged = num(2)? == Some(1);
    let admitted = num(3)? == Some(1);
    let mut raw: SmallVec<[[Option<u64>; 3]; 2]> = SmallVec::with_capacity(check.limits.len());
    for i in 0..check.limits.len() {
        let at = 4 + 3 * i;
        raw.push([num(at)?, num(at + 1)?, num(at + 2)?]);
    }
    Ok(Reply {
        now,
        charged,
        admitted,
        states: states_of(check, &raw)?,
    })
}

/// Each limit's state from the three values a script read for it.
fn states_of(
    check: &Check<'_>,
    raw: &[[Option<u64>; 3]],
) -> Result<SmallVec<[LimitState; 2]>, StoreError> {
    if raw.len() != check.limits.len() {
        return Err(bad_reply(&format!(
            "{} limit states for {} limits",
            raw.len(),
            check.limits.len()
        )));
    }
    let start = |us: u64| {
        us.checked_mul(1_000)
            .ok_or_else(|| bad_reply("window start"))
    };
    let mut states = SmallVec::with_capacity(check.limits.len());
    for (limit, &[a, b, c]) in check.limits.iter().zip(raw) {
        states.push(match limit.algorithm {
            Algorithm::FixedWindow => LimitState::Fixed(match a {
                Some(us) => FixedWindow {
                    window_start: start(us)?,
                    count: b.unwrap_or(0),
                },
                None => FixedWindow::default(),
            }),
            Algorithm::SlidingWindow => LimitState::Sliding(match a {
                Some(us) => SlidingWindow {
                    window_start: start(us)?,
                    previous: b.unwrap_or(0),
                    current: c.unwrap_or(0),
                },
                None => SlidingWindow::default(),
            }),
            Algorithm::TokenBucket => LimitState::Bucket(TokenBucket {
                tat: a.unwrap_or(0),
            }),
        });
    }
    Ok(states)
}

/// [`algorithm::decide`] for one check at `now`.
fn decide_at(check: &Check<'_>, states: &mut [LimitState], now: u64) -> (Outcome, bool) {
    algorithm::decide(check.policy, check.limits, states, now, check.hits)
}

/// fred's answer when a command it had written must be written again: with
/// one write attempt per command (see `connect`), that only happens when
/// the server redirected it (`MOVED`/`ASK`) instead of running it, so the
/// script did not run and may be sent again. (A command lost with a dropped
/// connection fails with the connection's error instead.)
fn is_redirected(e: &FredError) -> bool {
    matches!(e.kind(), ErrorKind::Unknown) && e.details() == "Too many failed write attempts."
}

/// A decimal reply value; `Ok(None)` for an empty string or nil.
fn parse_u64(v: &Value) -> Result<Option<u64>, ()> {
    let bytes: &[u8] = match v {
        Value::String(s) => s.as_bytes(),
        Value::Bytes(b) => b,
        Value::Integer(i) => return u64::try_from(*i).map(Some).map_err(|_| ()),
        Value::Null => return Ok(None),
        _ => return Err(()),
    };
    if bytes.is_empty() {
        return Ok(None);
    }
    std::str::from_utf8(bytes)
        .map_err(|_| ())?
        .parse::<u64>()
        .map(Some)
        .map_err(|_| ())
}

impl CounterStore for RedisStore {
    async fn check(&self, checks: &[Check<'_>]) -> Result<Outcomes, StoreError> {
        self.check_each(checks).await.into_iter().collect()
    }

    async fn check_each(&self, checks: &[Check<'_>]) -> CheckResults {
        self.inner.check_each(checks).await
    }

    /// `PING` to every node; `Ok` when any answers (nodes that are down
    /// are looked at by the prober too).
    async fn probe(&self) -> Result<(), StoreError> {
        let topology = self.topology.load_full();
        let mut any = false;
        for node in &topology.nodes {
            if self.dispatcher.ping(node).await {
                self.dispatcher.mark_up(node);
                any = true;
            }
        }
        if any {
            if self.single.is_down() {
                self.dispatcher.mark_up(&self.single);
            }
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!(
                "Redis at {} does not answer PING",
                self.url
            )))
        }
    }

    /// Commands, decisions and checks sent, and failed calls; counters
    /// live (and expire) in Redis, so the memory store's gauges stay 0.
    /// More in [`Inner::redis_stats`].
    fn store_stats(&self) -> StoreStats {
        let s = self.redis_stats();
        StoreStats {
            commands: s.commands,
            batches: s.batches,
            checks: s.checks,
            resent: s.redirects,
            failures: s.timeouts + s.unavailable,
            ..StoreStats::default()
        }
    }

    fn store_histograms(&self) -> Vec<HistogramSnapshot> {
        let b = &self.dispatcher.stats;
        vec![
            b.checks_per_call.snapshot(
                "sluice_redis_checks_per_call",
                "Checks carried by one Redis batch script call",
            ),
            self.calls_per_decision.snapshot(
                "sluice_redis_calls_per_round_trip",
                "Redis script calls one decision waited for together (one per node its checks went to, plus resends)",
            ),
            b.batch_wait.snapshot(
                "sluice_redis_batch_wait_seconds",
                "Time a check waited in sluice before its Redis call went out",
            ),
        ]
    }

    /// Always ready (the failure mode answers for a node that is down);
    /// degraded while any node is down or no connection is up.
    fn health(&self) -> StoreHealth {
        let connected = self
            .dispatcher
            .pool
            .clients()
            .iter()
            .any(|c| c.is_connected());
        StoreHealth {
            ready: true,
            degraded: !connected || self.any_down(),
        }
    }
}

#[cfg(test)]
mod tests;
