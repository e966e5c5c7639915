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
//! Each [`Check`] is one `EVALSHA` of a Lua script (`lua/`, documented
//! there) that reads the Redis server's `TIME`, reads every limit's state,
//! decides, and writes the new states, atomically (Redis runs one script at
//! a time). The script replies with the time it used and the states it
//! read; Rust rebuilds the states and runs the very same
//! [`algorithm::decide`] at that time, so every verdict number
//! (`used_before`, `remaining`, `reset_ns`) comes from the Rust algorithms.
//! The script's own admit/charge decision is compared with Rust's, and any
//! difference is counted ([`RedisStats::mismatches`]) and logged.
//!
//! # Time
//!
//! Only the Redis server's clock is used, never the local one, so replicas
//! whose clocks are skewed still share the same windows. Nothing on the
//! Redis path reads [`crate::core::clock`].
//!
//! # Keys
//!
//! See [`keys`]: `{prefix}:{<128-bit hash of the descriptor>}:<slot>`. All
//! limits of one check share the hash tag, so a multi-limit check is one
//! script on one cluster node.
//!
//! # Round trips
//!
//! [`RedisStore::check`] takes one pooled client (one connection per node)
//! and starts every check's `EVALSHA` at once, joining the futures. fred
//! pipelines: it writes each queued command without waiting for earlier
//! replies, so all the checks of a batch are in flight together and the
//! batch costs one round trip of latency per node it touches. (fred 10
//! flushes the socket after every `EVAL`/`EVALSHA`, so a batch of N checks
//! is N small writes rather than one; the server picks them up in as few
//! reads as have arrived. The test suite checks the pipelining with the
//! server's `total_reads_processed`: 32 checks written while the server is
//! stopped are read in one go when it resumes.)
//!
//! # Failures and bounds
//!
//! Every call is bounded by [`RedisOptions::command_timeout`] (fred's
//! per-command timeout and an outer timeout over the whole batch, including
//! a `NOSCRIPT` reload): past it the answer is [`StoreError::Timeout`]. A
//! disconnected client, a refused connection, or an error reply is
//! [`StoreError::Unavailable`]. A command is written at most once (no
//! automatic retry after a connection drop, which could charge twice); a
//! timed-out script may still have run on the server. fred reconnects in
//! the background with exponential backoff; scripts flushed from the
//! server's cache (`SCRIPT FLUSH`, restart, failover) are reloaded on the
//! first `NOSCRIPT` and the call retried once; a call that a cluster node
//! redirected (`MOVED`/`ASK`, resharding or failover) is sent again to the
//! new owner once. Both retries happen only when the script did not run.
//!
//! # What is measured
//!
//! [`RedisStore::redis_stats`]: batches (calls of `check` that went to
//! Redis), commands (`EVALSHA`s written, retries included), script loads
//! after `NOSCRIPT`, cluster redirections followed, failed batches by kind,
//! parity mismatches, and what
//! fred itself reports: commands queued but not yet written (a gauge) and
//! commands written again after a connection closed (0 here: commands are
//! never retried). fred counts neither socket writes nor round trips;
//! `commands / batches` is the number of checks that shared one round trip
//! (per node). [`CounterStore::store_stats`] carries `commands`, `batches`
//! and `failures` (timed-out plus unavailable batches).

pub mod keys;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use fred::prelude::{
    Builder, Client, ClientLike, Config, Error as FredError, ErrorKind, LuaInterface,
    MetricsInterface, Pool, ReconnectPolicy,
};
use fred::types::scripts::Script;
use fred::types::{ConnectHandle, Value};
use smallvec::SmallVec;

use super::{Check, CounterStore, Outcomes, StoreError, StoreHealth, StoreStats};
use crate::core::algorithm::{self, FixedWindow, LimitState, Outcome, SlidingWindow, TokenBucket};
use crate::core::limit::{Algorithm, ChargePolicy, LimitSpec};
use crate::secret::{Secret, redact_url};

pub use keys::KeySpace;
use keys::Tag;

/// Default key prefix (`--redis-key-prefix`).
pub const DEFAULT_KEY_PREFIX: &str = "sluice";
/// Default bound on every Redis call.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(10);
/// Default bound on connecting (and loading the scripts).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of pooled clients (each one connection per node).
pub const DEFAULT_POOL_SIZE: usize = 2;
/// Default upper bound of the random delay added to every key's expiry.
pub const DEFAULT_EXPIRY_JITTER: Duration = Duration::from_millis(500);

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
    /// Bound on every call; default 10 ms; must be above 0.
    pub command_timeout: Duration,
    /// Bound on connecting and loading scripts; default 5 s; above 0.
    pub connect_timeout: Duration,
    /// Pooled clients; each is one connection per node. Default 2.
    pub pool_size: usize,
    /// Most random delay added to each key's expiry (spreads the expiry of
    /// keys whose windows end together). Default 500 ms.
    pub expiry_jitter: Duration,
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
        }
    }
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
    /// Calls of `check` that sent commands.
    pub batches: u64,
    /// `EVALSHA` commands sent, retries after `NOSCRIPT` included.
    pub commands: u64,
    /// `SCRIPT LOAD`s after a `NOSCRIPT` reply.
    pub script_loads: u64,
    /// Commands sent again after a cluster redirection (`MOVED`/`ASK`).
    pub redirects: u64,
    /// Batches answered [`StoreError::Timeout`].
    pub timeouts: u64,
    /// Batches answered [`StoreError::Unavailable`].
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

/// Counters in Redis; see the module docs.
pub struct RedisStore {
    pool: Pool,
    connection: Option<ConnectHandle>,
    keys: KeySpace,
    url: String,
    command_timeout: Duration,
    jitter_ms: u64,
    scripts: Scripts,
    counters: Counters,
    jitter_seq: AtomicU64,
    jitter_hasher: ahash::RandomState,
    /// Tests: send every check through the general script.
    general_only: bool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("key_prefix", &self.keys.prefix())
            .field("pool_size", &self.pool.size())
            .field("command_timeout", &self.command_timeout)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
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
        let mut config = Config::from_url(&options.url)
            .map_err(|e| ConnectError::Config(format!("Redis URL {url}: {}", e.details())))?;
        if let Some(password) = &options.password {
            let text = password.expose_str().ok_or_else(|| {
                ConnectError::Config("the Redis password is not UTF-8 text".to_owned())
            })?;
            config.password = Some(text.to_owned());
        }
        // The first connection's errors are returned, not retried.
        config.fail_fast = true;
        let command_timeout = options.command_timeout;
        let connect_timeout = options.connect_timeout;
        let pool = Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = command_timeout)
            .with_connection_config(|c| {
                c.connection_timeout = connect_timeout;
                c.internal_command_timeout = connect_timeout;
                // Never write a script twice on fred's own: a replay after
                // a dropped connection could charge the same hits again.
                // (Cluster redirections, where the script did not run, are
                // retried by `eval`.)
                c.max_command_attempts = 1;
                c.tcp.nodelay = Some(true);
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
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
        let store = RedisStore {
            pool,
            connection: Some(connection),
            keys,
            url: url.clone(),
            command_timeout,
            jitter_ms: u64::try_from(options.expiry_jitter.as_millis()).unwrap_or(u64::MAX),
            scripts: Scripts::new(),
            counters: Counters::default(),
            jitter_seq: AtomicU64::new(0),
            jitter_hasher: ahash::RandomState::new(),
            general_only: false,
        };
        let client = store.pool.next();
        for script in store.scripts.all() {
            tokio::time::timeout(connect_timeout, script.load(client))
                .await
                .map_err(|_| timed_out())?
                .map_err(unavailable)?;
        }
        tracing::info!(
            redis = %url,
            pool = store.pool.size(),
            prefix = store.keys.prefix(),
            "connected to Redis"
        );
        Ok(store)
    }

    /// Closes the connections (best effort, bounded by the connect
    /// timeout's default).
    pub async fn shutdown(&self) {
        let _ = tokio::time::timeout(DEFAULT_CONNECT_TIMEOUT, self.pool.quit()).await;
    }

    /// Counters; see the module docs.
    pub fn redis_stats(&self) -> RedisStats {
        let c = &self.counters;
        let clients = self.pool.clients();
        RedisStats {
            batches: c.batches.load(Relaxed),
            commands: c.commands.load(Relaxed),
            script_loads: c.script_loads.load(Relaxed),
            redirects: c.redirects.load(Relaxed),
            timeouts: c.timeouts.load(Relaxed),
            unavailable: c.unavailable.load(Relaxed),
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

    /// The keys of a check's limits, in order.
    pub fn keys_of(&self, check: &Check<'_>) -> Vec<String> {
        let tag = Tag::of(check.key);
        check
            .limits
            .iter()
            .map(|l| self.keys.limit_key(&tag, l.slot))
            .collect()
    }

    #[cfg(test)]
    fn set_general_only(&mut self, on: bool) {
        self.general_only = on;
    }

    fn script_for(&self, limits: &[LimitSpec]) -> &Script {
        match limits {
            [one] if !self.general_only => match one.algorithm {
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

    /// ARGV for `check` (layout in `lua/lib.lua`): per limit, the window
    /// and the offset go in µs, exact for every window
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

    async fn check_one(&self, client: &Client, check: &Check<'_>) -> Result<Outcome, StoreError> {
        if check.limits.is_empty() {
            return Ok(decide_at(check, &mut [], 0).0);
        }
        let reply = self
            .eval(client, self.script_for(check.limits), check)
            .await
            .map_err(|e| self.store_error(&e))?;
        self.outcome(check, &reply)
    }

    /// Rebuilds the states the script read and decides with the Rust
    /// algorithms at the script's time.
    fn outcome(&self, check: &Check<'_>, reply: &[Value]) -> Result<Outcome, StoreError> {
        let mut r = parse_reply(check, reply)?;
        let (outcome, wrote) = decide_at(check, &mut r.states, r.now);
        if wrote != r.charged || outcome.admitted != r.admitted {
            self.counters.mismatches.fetch_add(1, Relaxed);
            tracing::error!(
                redis = %self.url,
                script_charged = r.charged,
                script_admitted = r.admitted,
                rust_charged = wrote,
                rust_admitted = outcome.admitted,
                limits = ?check.limits,
                hits = check.hits,
                "Redis script and Rust algorithms disagree"
            );
        }
        Ok(outcome)
    }

    fn store_error(&self, e: &FredError) -> StoreError {
        match e.kind() {
            ErrorKind::Timeout => StoreError::Timeout(self.command_timeout),
            _ => StoreError::Unavailable(format!("Redis at {}: {e}", self.url)),
        }
    }

    /// A connected client, or `Unavailable` when none is.
    fn client(&self) -> Result<&Client, StoreError> {
        let client = self.pool.next_connected();
        if client.is_connected() {
            Ok(client)
        } else {
            Err(StoreError::Unavailable(format!(
                "not connected to Redis at {}",
                self.url
            )))
        }
    }

    fn count_error(&self, e: &StoreError) {
        match e {
            StoreError::Timeout(_) => self.counters.timeouts.fetch_add(1, Relaxed),
            StoreError::Unavailable(_) => self.counters.unavailable.fetch_add(1, Relaxed),
        };
    }

    async fn check_batch(&self, checks: &[Check<'_>]) -> Result<Outcomes, StoreError> {
        if checks.iter().all(|c| c.limits.is_empty()) {
            return Ok(checks.iter().map(|c| decide_at(c, &mut [], 0).0).collect());
        }
        let client = self.client()?;
        self.counters.batches.fetch_add(1, Relaxed);
        let all = futures_util::future::join_all(checks.iter().map(|c| self.check_one(client, c)));
        let results = tokio::time::timeout(self.command_timeout, all)
            .await
            .map_err(|_| StoreError::Timeout(self.command_timeout))?;
        results.into_iter().collect()
    }
}

/// What a script replied, with the states it read rebuilt.
#[derive(Debug)]
struct Reply {
    /// The Redis server's time, ns since the epoch.
    now: u64,
    charged: bool,
    admitted: bool,
    /// Each limit's state before the call.
    states: SmallVec<[LimitState; 2]>,
}

fn parse_reply(check: &Check<'_>, reply: &[Value]) -> Result<Reply, StoreError> {
    let bad =
        |what: &str| StoreError::Unavailable(format!("unexpected reply from Redis script: {what}"));
    if reply.len() != 4 + 3 * check.limits.len() {
        return Err(bad(&format!("{} values", reply.len())));
    }
    let num = |i: usize| -> Result<Option<u64>, StoreError> {
        parse_u64(&reply[i]).map_err(|()| bad(&format!("value {i} is not a number")))
    };
    let (Some(secs), Some(micros)) = (num(0)?, num(1)?) else {
        return Err(bad("no time"));
    };
    let now = secs
        .checked_mul(1_000_000_000)
        .and_then(|ns| ns.checked_add(micros.checked_mul(1_000)?))
        .ok_or_else(|| bad("time out of range"))?;
    let charged = num(2)? == Some(1);
    let admitted = num(3)? == Some(1);
    let mut states = SmallVec::with_capacity(check.limits.len());
    for (i, limit) in check.limits.iter().enumerate() {
        let at = 4 + 3 * i;
        let (a, b, c) = (num(at)?, num(at + 1)?, num(at + 2)?);
        let start = |us: u64| us.checked_mul(1_000).ok_or_else(|| bad("window start"));
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
    Ok(Reply {
        now,
        charged,
        admitted,
        states,
    })
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
        let result = self.check_batch(checks).await;
        if let Err(e) = &result {
            self.count_error(e);
        }
        result
    }

    /// Commands, batches and failed batches; counters live (and expire) in
    /// Redis, so the memory store's gauges stay 0. More in
    /// [`RedisStore::redis_stats`].
    fn store_stats(&self) -> StoreStats {
        let c = &self.counters;
        StoreStats {
            commands: c.commands.load(Relaxed),
            batches: c.batches.load(Relaxed),
            failures: c.timeouts.load(Relaxed) + c.unavailable.load(Relaxed),
            ..StoreStats::default()
        }
    }

    /// Ready while any pooled client is connected.
    fn health(&self) -> StoreHealth {
        StoreHealth {
            ready: self.pool.clients().iter().any(|c| c.is_connected()),
            degraded: false,
        }
    }
}

#[cfg(test)]
mod tests;
