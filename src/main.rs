//! The `sluice` command: `serve`, `check-config`, `migrate`, `token`, and
//! the admin client commands (`keys`, `plans`, `usage`, `audit`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use sluice::app::{Application, KeysConfig, RedisConfig, ServeConfig};
use sluice::auth::{AdminAuthConfig, Scope};
use sluice::authz::{GateOptions, IdentityHeaders};
use sluice::config::{self, LoadOptions};
use sluice::core::stats::StatsRegistry;
use sluice::engine::{HeaderMode, RequestLimits};
use sluice::keys::cache::CacheOptions;
use sluice::keys::guard::GuardOptions;
use sluice::keys::{KeyOptions, KeyStoreFailureMode, ResolverOptions};
use sluice::secret::{Secret, redact_url};
use sluice::service::CallerSource;
use sluice::store::redis::{RedisOptions, RedisTlsFiles};
use sluice::store::resilient::{FailureMode, ResilienceOptions};
use sluice::telemetry::{self, LogFormat};
use sluice::tls::ServerTlsFiles;

/// A rate-limit decision service, wire-compatible with Envoy's external
/// rate-limit protocol.
#[derive(Debug, Parser)]
#[command(name = "sluice", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve ShouldRateLimit over gRPC, plus health, metrics and /json over HTTP.
    Serve(Box<ServeArgs>),
    /// Validate a configuration file or directory; print every error.
    CheckConfig {
        /// A YAML file, or a directory of them.
        path: PathBuf,
        /// Allow several files to define the same domain, merging them.
        #[arg(long)]
        merge_domains: bool,
    },
    /// Apply the key store's migrations and exit.
    Migrate {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Mint an admin token (HS256) from SLUICE_JWT_SECRET or the secret
    /// generated beside the embedded database.
    Token(TokenArgs),
    /// Manage API keys through the admin API.
    Keys(sluice::cli::KeysArgs),
    /// Manage plans through the admin API.
    Plans(sluice::cli::PlansArgs),
    /// Show admitted and limited requests per key per day.
    Usage(sluice::cli::UsageArgs),
    /// Show the admin audit trail, newest first.
    Audit(sluice::cli::AuditArgs),
    /// Check a running sluice: gRPC health, then one ShouldRateLimit that
    /// spends nothing (what `helm test` runs).
    Probe(sluice::cli::ProbeArgs),
}

#[derive(Debug, Clone, Args)]
struct DatabaseArgs {
    /// Where keys, plans, usage and audit live: postgres://user:pass@host/db, or
    /// sqlite://path (created on first start, with generated secrets beside it).
    #[arg(
        long,
        env = "SLUICE_DATABASE_URL",
        default_value = "sqlite://sluice-data/sluice.db"
    )]
    database_url: String,
}

/// The gateway: Envoy's ext_authz Check and forward auth on /auth.
#[derive(Debug, Args)]
struct AuthzArgs {
    /// Domain whose `authz:` settings and descriptors apply when a route names none
    /// (context extension / query parameter sluice.domain). Unset: the key's own limits only.
    #[arg(long, env = "SLUICE_AUTHZ_DOMAIN")]
    authz_domain: Option<String>,
    /// Rate-limit headers on gateway answers (to the client).
    #[arg(
        long,
        env = "SLUICE_AUTHZ_RESPONSE_HEADERS",
        value_enum,
        default_value = "ietf"
    )]
    authz_response_headers: HeadersArg,
    /// Upstream header carrying the caller's key id.
    #[arg(
        long,
        env = "SLUICE_AUTHZ_KEY_ID_HEADER",
        default_value = "x-sluice-key-id"
    )]
    authz_key_id_header: String,
    /// Upstream header carrying the key's owner.
    #[arg(
        long,
        env = "SLUICE_AUTHZ_OWNER_HEADER",
        default_value = "x-sluice-owner"
    )]
    authz_owner_header: String,
    /// Upstream header carrying the key's plan.
    #[arg(
        long,
        env = "SLUICE_AUTHZ_PLAN_HEADER",
        default_value = "x-sluice-plan"
    )]
    authz_plan_header: String,
    /// Upstream header carrying the key's scopes, space-separated.
    #[arg(
        long,
        env = "SLUICE_AUTHZ_SCOPES_HEADER",
        default_value = "x-sluice-scopes"
    )]
    authz_scopes_header: String,
}

impl AuthzArgs {
    fn options(self) -> anyhow::Result<GateOptions> {
        let identity = IdentityHeaders {
            key_id: header_flag("--authz-key-id-header", self.authz_key_id_header)?,
            owner: header_flag("--authz-owner-header", self.authz_owner_header)?,
            plan: header_flag("--authz-plan-header", self.authz_plan_header)?,
            scopes: header_flag("--authz-scopes-header", self.authz_scopes_header)?,
        };
        let names = [
            &identity.key_id,
            &identity.owner,
            &identity.plan,
            &identity.scopes,
        ];
        if names
            .iter()
            .enumerate()
            .any(|(i, n)| names[..i].contains(n))
        {
            anyhow::bail!("--authz-*-header: the four identity headers need four different names");
        }
        Ok(GateOptions {
            identity,
            response_headers: header_mode(self.authz_response_headers),
            default_domain: self.authz_domain.filter(|d| !d.is_empty()),
        })
    }
}

/// A header name flag: an HTTP token, lower-cased.
fn header_flag(flag: &str, name: String) -> anyhow::Result<String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok {
        anyhow::bail!(
            "{flag}: {name:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~)"
        );
    }
    Ok(name.to_ascii_lowercase())
}

fn header_mode(h: HeadersArg) -> HeaderMode {
    match h {
        HeadersArg::None => HeaderMode::None,
        HeadersArg::Draft03 => HeaderMode::Draft03,
        HeadersArg::Ietf => HeaderMode::Ietf,
    }
}

#[derive(Debug, Args)]
struct TokenArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    /// Scopes to grant (repeat or space-separate): keys:read keys:write plans:read
    /// plans:write usage:read audit:read, or "all".
    #[arg(long = "scope", required = true, num_args = 1..)]
    scopes: Vec<String>,
    /// Lifetime, e.g. 15m, 12h, 30d (at most 366d).
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// The token's subject, recorded as the actor of every change made with it.
    #[arg(long, default_value = "operator")]
    subject: String,
    #[arg(long, env = "SLUICE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<Secret>,
    #[arg(long, env = "SLUICE_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    #[arg(long, env = "SLUICE_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum HeadersArg {
    None,
    Draft03,
    Ietf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FailureModeArg {
    Allow,
    Deny,
    Local,
}

/// A listen address, or "" for none.
#[derive(Debug, Clone, Copy)]
struct ListenAddr(Option<SocketAddr>);

impl std::str::FromStr for ListenAddr {
    type Err = std::net::AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            Ok(ListenAddr(None))
        } else {
            s.parse().map(|a| ListenAddr(Some(a)))
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KeyStoreFailureArg {
    Deny,
    Allow,
    Cached,
}

/// A header name, lowercased (as HTTP/2 and gRPC metadata spell them).
fn header_name(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    if lower.is_empty()
        || !lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "{s:?} is not a header name (letters, digits, '-', '_', '.')"
        ));
    }
    Ok(lower)
}

/// The default of `--jwt-max-lifetime`.
const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// `--jwt-max-lifetime`: seconds, `None` for no bound.
#[derive(Debug, Clone, Copy)]
struct MaxLifetime(Option<u64>);

fn max_lifetime(s: &str) -> Result<MaxLifetime, String> {
    if matches!(s.trim(), "0" | "off" | "none") {
        return Ok(MaxLifetime(None));
    }
    let d = sluice::cli::parse_duration(s)?;
    if d.as_secs() == 0 {
        return Ok(MaxLifetime(None));
    }
    Ok(MaxLifetime(Some(d.as_secs())))
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Json,
    Text,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// A YAML file or a directory of them (envoyproxy/ratelimit format); watched and hot-reloaded.
    #[arg(long, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// gRPC listen address (ShouldRateLimit, health, reflection).
    #[arg(long, env = "SLUICE_GRPC_ADDR", default_value = "0.0.0.0:8081")]
    grpc_addr: SocketAddr,
    /// HTTP listen address (/healthz, /readyz, /metrics, /json).
    #[arg(long, env = "SLUICE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// The admin API's own gRPC listener (AdminService, health, reflection);
    /// "" turns the admin API off. Beyond loopback, give it TLS.
    #[arg(long, env = "SLUICE_ADMIN_GRPC_ADDR", default_value = "127.0.0.1:8082")]
    admin_grpc_addr: ListenAddr,
    #[command(flatten)]
    authz: AuthzArgs,
    /// PEM certificate chain of the gRPC listener (TLS); re-read when it changes.
    #[arg(long, env = "SLUICE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert; re-read when it changes.
    #[arg(long, env = "SLUICE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificates: gRPC clients must present a certificate issued by one (mTLS).
    #[arg(long, env = "SLUICE_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// PEM certificate chain of the admin listener (TLS); re-read when it changes.
    #[arg(long, env = "SLUICE_ADMIN_TLS_CERT", requires = "admin_tls_key")]
    admin_tls_cert: Option<PathBuf>,
    /// PEM private key of --admin-tls-cert.
    #[arg(long, env = "SLUICE_ADMIN_TLS_KEY", requires = "admin_tls_cert")]
    admin_tls_key: Option<PathBuf>,
    /// PEM CA certificates: admin clients must present a certificate issued by one (mTLS).
    #[arg(long, env = "SLUICE_ADMIN_TLS_CLIENT_CA", requires = "admin_tls_cert")]
    admin_tls_client_ca: Option<PathBuf>,
    /// Rate-limit headers to add to responses.
    #[arg(
        long,
        env = "SLUICE_RESPONSE_HEADERS",
        value_enum,
        default_value = "none"
    )]
    response_headers: HeadersArg,
    /// Answer OK whenever the overall answer would be OVER_LIMIT (still counting).
    #[arg(long, env = "SLUICE_SHADOW_MODE")]
    shadow_mode: bool,
    /// Allow several files to define the same domain, merging them.
    #[arg(long, env = "SLUICE_MERGE_DOMAINS")]
    merge_domains: bool,
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormatArg,
    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives.
    #[arg(long, env = "SLUICE_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Cap on live counters in the memory store; past it, new keys go uncounted (see README).
    #[arg(long, env = "SLUICE_MAX_COUNTERS", default_value_t = sluice::store::memory::DEFAULT_MAX_COUNTERS)]
    max_counters: u64,
    /// Most descriptors one request may carry.
    #[arg(long, env = "SLUICE_MAX_DESCRIPTORS", default_value_t = RequestLimits::default().max_descriptors)]
    max_descriptors: usize,
    /// Most entries one descriptor may carry.
    #[arg(long, env = "SLUICE_MAX_ENTRIES", default_value_t = RequestLimits::default().max_entries)]
    max_entries: usize,
    /// Longest entry key or value, in bytes.
    #[arg(long, env = "SLUICE_MAX_VALUE_BYTES", default_value_t = RequestLimits::default().max_value_bytes)]
    max_value_bytes: usize,
    /// Most hits one request or descriptor may add (hits_addend).
    #[arg(long, env = "SLUICE_MAX_HITS_ADDEND", default_value_t = RequestLimits::default().max_hits_addend)]
    max_hits_addend: u64,
    /// Largest encoded gRPC request, in bytes.
    #[arg(long, env = "SLUICE_MAX_REQUEST_BYTES", default_value_t = 64 * 1024)]
    max_request_bytes: usize,
    /// Cap on metric keys built from request values (detailed_metric, value_to_metric, overrides).
    #[arg(long, env = "SLUICE_MAX_METRIC_KEYS", default_value_t = 10_000)]
    max_metric_keys: usize,
    /// Most decision calls (ShouldRateLimit, ValidateKey, Check, /json, /auth) in flight at
    /// once; past it a call is refused at once, never queued: RESOURCE_EXHAUSTED over gRPC, 503
    /// over HTTP. 0: no bound.
    #[arg(long, env = "SLUICE_MAX_CONCURRENT_REQUESTS", default_value_t = 1000)]
    max_concurrent_requests: usize,
    /// Seconds a decision call may take at most; a caller's shorter grpc-timeout wins. Past its
    /// deadline a call is answered DEADLINE_EXCEEDED (503 over HTTP) and not decided.
    #[arg(long, env = "SLUICE_REQUEST_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout: u64,
    /// Seconds sluice keeps answering after SIGTERM/SIGINT, already not ready and
    /// NOT_SERVING, so that load balancers stop sending work before connections close.
    #[arg(long, env = "SLUICE_SHUTDOWN_DELAY", default_value_t = 5)]
    shutdown_delay: u64,
    /// Seconds calls still open after the shutdown delay get to finish.
    #[arg(long, env = "SLUICE_DRAIN_TIMEOUT", default_value_t = 10)]
    drain_timeout: u64,
    /// Keep counters in Redis, shared by every replica: redis://,
    /// redis-cluster://host:port?node=host:port&..., or
    /// redis-sentinel://host:port?sentinelServiceName=NAME&node=host:port; over TLS
    /// rediss://, rediss-cluster://, rediss-sentinel://. Unset: in memory.
    #[arg(long, env = "SLUICE_REDIS_URL")]
    redis_url: Option<String>,
    /// PEM CA certificates for a TLS Redis URL (rediss://, rediss-cluster://,
    /// rediss-sentinel://): the only roots Redis servers are verified against
    /// (default: the system's roots).
    #[arg(long, env = "SLUICE_REDIS_TLS_CA")]
    redis_tls_ca: Option<PathBuf>,
    /// PEM client certificate chain presented to Redis (servers with
    /// tls-auth-clients yes); with --redis-tls-key.
    #[arg(long, env = "SLUICE_REDIS_TLS_CERT", requires = "redis_tls_key")]
    redis_tls_cert: Option<PathBuf>,
    /// PEM private key of --redis-tls-cert.
    #[arg(long, env = "SLUICE_REDIS_TLS_KEY", requires = "redis_tls_cert")]
    redis_tls_key: Option<PathBuf>,
    /// Redis password, overriding the URL's (never logged).
    #[arg(long, env = "SLUICE_REDIS_PASSWORD", hide_env_values = true)]
    redis_password: Option<Secret>,
    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[arg(long, env = "SLUICE_REDIS_KEY_PREFIX", default_value = "sluice")]
    redis_key_prefix: String,
    /// Milliseconds a Redis node may stay silent with calls outstanding
    /// before sluice checks (PING, at least 250 ms) whether it is down; time
    /// queued in sluice never counts.
    #[arg(long, env = "SLUICE_REDIS_TIMEOUT", default_value_t = 10)]
    redis_timeout: u64,
    /// Redis connections per node; each carries one batch call at a time.
    #[arg(long, env = "SLUICE_REDIS_POOL_SIZE", default_value_t = 2)]
    redis_pool_size: usize,
    /// Most checks in one Redis batch script call (1 to 4096).
    #[arg(long, env = "SLUICE_REDIS_BATCH_MAX", default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=4096))]
    redis_batch_max: u64,
    /// Microseconds a batch waits for more checks before it goes out while
    /// a connection is free (0: at once; at most 10000).
    #[arg(long, env = "SLUICE_REDIS_BATCH_WAIT_US", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    redis_batch_wait_us: u64,
    /// While Redis is unreachable: allow (answer OK), deny (answer OVER_LIMIT),
    /// or local (decide in memory with limits divided by --local-fallback-divisor).
    #[arg(long, env = "SLUICE_FAILURE_MODE", value_enum, default_value = "allow")]
    failure_mode: FailureModeArg,
    /// Number of sluice replicas; local fallback limits are divided by it.
    #[arg(long, env = "SLUICE_LOCAL_FALLBACK_DIVISOR", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    local_fallback_divisor: u32,
    /// Keys remembered as over their limit until their window ends (0: off).
    #[arg(long, env = "SLUICE_OVER_LIMIT_CACHE_SIZE", default_value_t = 100_000)]
    over_limit_cache_size: u64,
    #[command(flatten)]
    db: DatabaseArgs,
    /// Do not apply key-store migrations at start (run `sluice migrate` instead).
    #[arg(long, env = "SLUICE_NO_MIGRATE")]
    no_migrate: bool,
    /// Key-store connections.
    #[arg(long, env = "SLUICE_DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    database_max_connections: u32,
    /// Secret API keys are hashed under (HMAC-SHA256), at least 32 bytes; the same on
    /// every replica. Required with PostgreSQL; generated beside a SQLite database.
    #[arg(long, env = "SLUICE_KEY_SECRET", hide_env_values = true)]
    key_secret: Option<Secret>,
    /// HS256 secret for admin tokens, at least 32 bytes.
    #[arg(long, env = "SLUICE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<Secret>,
    /// A PEM public key (RSA, EC P-256 or Ed25519) admin tokens may be signed with.
    #[arg(long, env = "SLUICE_JWT_PUBLIC_KEY")]
    jwt_public_key: Option<PathBuf>,
    /// A JWKS file of public keys admin tokens may be signed with (chosen by kid).
    #[arg(long, env = "SLUICE_JWT_JWKS")]
    jwt_jwks: Option<PathBuf>,
    /// Required `iss` of admin tokens.
    #[arg(long, env = "SLUICE_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required `aud` of admin tokens.
    #[arg(long, env = "SLUICE_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Seconds of clock skew allowed on admin tokens' exp, nbf and iat (at most 300).
    #[arg(long, env = "SLUICE_JWT_LEEWAY", default_value_t = sluice::auth::DEFAULT_LEEWAY_SECS, value_parser = clap::value_parser!(u64).range(0..=sluice::auth::MAX_LEEWAY_SECS))]
    jwt_leeway: u64,
    /// Longest lifetime (exp - iat) of an admin token, e.g. 1h, 24h, 30d; a token without
    /// iat, or living longer, is refused. 0: no bound.
    #[arg(long, env = "SLUICE_JWT_MAX_LIFETIME", default_value = "24h", value_parser = max_lifetime)]
    jwt_max_lifetime: MaxLifetime,
    /// Keys held in the validation cache (0: no cache).
    #[arg(long, env = "SLUICE_KEY_CACHE_SIZE", default_value_t = 100_000)]
    key_cache_size: u64,
    /// Seconds a cached key lives without a change notice.
    #[arg(long, env = "SLUICE_KEY_CACHE_TTL", default_value_t = 60)]
    key_cache_ttl: u64,
    /// Milliseconds between usage writes (at most 10 s).
    #[arg(long, env = "SLUICE_USAGE_FLUSH_INTERVAL_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    usage_flush_interval_ms: u64,
    /// Failed key validations (ValidateKey and key-aware ShouldRateLimit) allowed per
    /// caller per minute; past it, keys the cache does not know are not looked up (0: no limit).
    #[arg(
        long,
        env = "SLUICE_FAILED_VALIDATIONS_PER_MINUTE",
        default_value_t = 100
    )]
    failed_validations_per_minute: u32,
    /// Bound on one key-store lookup in milliseconds (statement and lock timeouts too).
    #[arg(long, env = "SLUICE_KEY_STORE_TIMEOUT", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    key_store_timeout: u64,
    /// When the key store cannot look a key up: deny (its descriptor OVER_LIMIT), allow
    /// (no limit), or cached (the cached entry even past its TTL, else deny).
    #[arg(
        long,
        env = "SLUICE_KEY_STORE_FAILURE_MODE",
        value_enum,
        default_value = "cached"
    )]
    key_store_failure_mode: KeyStoreFailureArg,
    /// Request header (gRPC metadata) naming the caller for the failed-validation guard,
    /// e.g. x-forwarded-for; default: the peer address.
    #[arg(long, env = "SLUICE_CALLER_ID_HEADER", value_parser = header_name)]
    caller_id_header: Option<String>,
    /// Which entry of a comma-separated caller header, counted from the right (1: the
    /// rightmost, added by the proxy in front of sluice).
    #[arg(long, env = "SLUICE_CALLER_ID_HOP", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
    caller_id_hop: u64,
    /// Admin calls allowed per token subject per minute (0: no limit).
    #[arg(long, env = "SLUICE_ADMIN_CALLS_PER_MINUTE", default_value_t = 600)]
    admin_calls_per_minute: u32,
    /// Failed admin authentications (UNAUTHENTICATED) allowed per caller (--caller-id-header,
    /// else the peer address) per minute; past it every admin call of that caller is refused
    /// with RESOURCE_EXHAUSTED until the minute ends, its token unchecked (0: no limit).
    #[arg(
        long,
        env = "SLUICE_ADMIN_AUTH_FAILURES_PER_MINUTE",
        default_value_t = 20
    )]
    admin_auth_failures_per_minute: u32,
    /// Export traces over OTLP to this collector (as OTEL_EXPORTER_OTLP_ENDPOINT). Unset, with
    /// no OTEL_EXPORTER_OTLP_*ENDPOINT either: tracing is off.
    #[arg(long, env = "SLUICE_OTEL_ENDPOINT")]
    otel_endpoint: Option<String>,
    /// Trace this ratio (0 to 1) of new traces; a caller's sampled trace is always continued and
    /// an unsampled one never exported (parent-based). Overrides OTEL_TRACES_SAMPLER.
    #[arg(long, env = "SLUICE_TRACE_SAMPLING", value_name = "RATIO")]
    trace_sampling: Option<f64>,
    /// Put descriptor entries (request data: user ids, keys, addresses) on trace spans.
    #[arg(long, env = "SLUICE_TRACE_DESCRIPTOR_VALUES")]
    trace_descriptor_values: bool,
    /// Seconds start-up keeps retrying a database or Redis that cannot be reached yet
    /// (starting beside sluice); 0 fails at once. Wrong passwords, missing databases,
    /// refused migrations and bad settings always fail at once.
    #[arg(long, env = "SLUICE_STARTUP_WAIT", default_value_t = 30)]
    startup_wait: u64,
    /// Shift the clock by this many milliseconds (testing window alignment only).
    #[arg(
        long,
        env = "SLUICE_TEST_CLOCK_OFFSET_MS",
        default_value_t = 0,
        hide = true,
        allow_hyphen_values = true
    )]
    test_clock_offset_ms: i64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig {
            path,
            merge_domains,
        } => check_config(&path, merge_domains),
        Command::Serve(args) => report(serve(*args)),
        Command::Migrate { db } => report(migrate(&db)),
        Command::Token(args) => report(token(&args)),
        Command::Keys(args) => sluice::cli::run(sluice::cli::Command::Keys(args)),
        Command::Plans(args) => sluice::cli::run(sluice::cli::Command::Plans(args)),
        Command::Usage(args) => sluice::cli::run(sluice::cli::Command::Usage(args)),
        Command::Audit(args) => sluice::cli::run(sluice::cli::Command::Audit(args)),
        Command::Probe(args) => sluice::cli::run(sluice::cli::Command::Probe(args)),
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once: libraries often
/// repeat their source's text in their own (sqlx: "error returned from
/// database: X", then X again as the source).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string().replace('\n', " ");
        if line.contains(text.as_str()) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn migrate(db: &DatabaseArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let repo = sluice::keys::repo::Repository::connect(&db.database_url, 1).await?;
        repo.migrate().await?;
        repo.close().await;
        println!("migrated {}", redact_url(&db.database_url));
        Ok(())
    })
}

fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let mut scopes = Vec::new();
    for word in args.scopes.iter().flat_map(|s| s.split_whitespace()) {
        if word == "all" {
            scopes.extend(Scope::ALL);
            continue;
        }
        match Scope::parse(word) {
            Some(s) => scopes.push(s),
            None => anyhow::bail!(
                "--scope: unknown scope {word:?} (use keys:read keys:write plans:read plans:write usage:read audit:read, or all)"
            ),
        }
    }
    let ttl = sluice::cli::parse_duration(&args.ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
    if ttl > DEFAULT_MAX_LIFETIME {
        eprintln!(
            "sluice: note: --ttl {} is over the default --jwt-max-lifetime of 24h; a server refuses this token unless its --jwt-max-lifetime is at least as long",
            args.ttl
        );
    }
    let secret = match &args.jwt_secret {
        Some(s) => s.expose().to_vec(),
        None => {
            let Some(file) = sluice::app::jwt_secret_file(&args.db.database_url) else {
                anyhow::bail!(
                    "set SLUICE_JWT_SECRET: with PostgreSQL there is no generated secret file"
                );
            };
            let text = std::fs::read_to_string(&file).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read {} ({e}); start `sluice serve` once to generate it, or set SLUICE_JWT_SECRET",
                    file.display()
                )
            })?;
            hex::decode(text.trim())
                .map_err(|_| anyhow::anyhow!("{} does not hold a hex secret", file.display()))?
        }
    };
    let t = sluice::auth::mint_hs256(
        &secret,
        &args.subject,
        &scopes,
        ttl,
        args.jwt_issuer.as_deref(),
        args.jwt_audience.as_deref(),
    )?;
    println!("{t}");
    Ok(())
}

fn check_config(path: &std::path::Path, merge_domains: bool) -> ExitCode {
    let stats = StatsRegistry::default();
    match config::load(path, LoadOptions { merge_domains }, &stats) {
        Ok(rules) => {
            let domains: Vec<_> = rules.domains().map(|d| d.name.to_string()).collect();
            println!(
                "ok: {} domain(s) ({}), {} rule(s)",
                domains.len(),
                domains.join(", "),
                rules.rules().len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for err in &e.errors {
                eprintln!("{err}");
            }
            eprintln!("{} error(s)", e.errors.len());
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let format = match args.log_format {
        LogFormatArg::Json => LogFormat::Json,
        LogFormatArg::Text => LogFormat::Text,
    };
    let trace_flags = telemetry::otel::TraceFlags {
        endpoint: args.otel_endpoint.clone(),
        sampling: args.trace_sampling,
        descriptor_values: args.trace_descriptor_values,
    };
    let otel = telemetry::otel::OtelConfig::from_sources(&|k| std::env::var(k).ok(), &trace_flags)?;
    // Exports run on the service's runtime, so it comes first.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let pipeline = match &otel {
        Some(cfg) => {
            let _in_runtime = runtime.enter();
            Some(telemetry::otel::Pipeline::install(cfg)?)
        }
        None => None,
    };
    telemetry::init_logging(format, &args.log_level, pipeline.as_ref())?;
    if let Some(cfg) = &otel {
        tracing::info!(
            endpoint = %cfg.endpoint,
            protocol = ?cfg.protocol,
            sampler = ?cfg.sampler,
            service = cfg.service_name(),
            "exporting traces"
        );
    }
    let keys = KeysConfig {
        database_url: args.db.database_url,
        migrate: !args.no_migrate,
        max_connections: args.database_max_connections,
        key_secret: args.key_secret,
        auth: AdminAuthConfig {
            hs256_secret: args.jwt_secret,
            public_key_pem: args.jwt_public_key,
            jwks: args.jwt_jwks,
            issuer: args.jwt_issuer,
            audience: args.jwt_audience,
            leeway_secs: args.jwt_leeway,
            max_lifetime_secs: args.jwt_max_lifetime.0,
        },
        options: KeyOptions {
            cache: CacheOptions {
                capacity: args.key_cache_size,
                found_ttl: Duration::from_secs(args.key_cache_ttl.max(1)),
                ..CacheOptions::default()
            },
            guard: GuardOptions {
                failed_validations_per_minute: args.failed_validations_per_minute,
                admin_calls_per_minute: args.admin_calls_per_minute,
                admin_auth_failures_per_minute: args.admin_auth_failures_per_minute,
            },
            flush_every: Duration::from_millis(args.usage_flush_interval_ms),
            resolver: ResolverOptions {
                timeout: Duration::from_millis(args.key_store_timeout),
                failure_mode: match args.key_store_failure_mode {
                    KeyStoreFailureArg::Deny => KeyStoreFailureMode::Deny,
                    KeyStoreFailureArg::Allow => KeyStoreFailureMode::Allow,
                    KeyStoreFailureArg::Cached => KeyStoreFailureMode::Cached,
                },
                max_connections: args.database_max_connections,
            },
        },
    };
    let cfg = ServeConfig {
        config_path: args.config,
        grpc_addr: args.grpc_addr,
        http_addr: args.http_addr,
        admin_grpc_addr: args.admin_grpc_addr.0,
        tls: tls_files(args.tls_cert, args.tls_key, args.tls_client_ca),
        admin_tls: tls_files(
            args.admin_tls_cert,
            args.admin_tls_key,
            args.admin_tls_client_ca,
        ),
        headers: header_mode(args.response_headers),
        authz: args.authz.options()?,
        shadow_mode: args.shadow_mode,
        merge_domains: args.merge_domains,
        max_counters: args.max_counters,
        request_limits: RequestLimits {
            max_descriptors: args.max_descriptors,
            max_entries: args.max_entries,
            max_value_bytes: args.max_value_bytes,
            max_hits_addend: args.max_hits_addend,
        },
        max_metric_keys: args.max_metric_keys,
        max_request_bytes: args.max_request_bytes,
        max_concurrent_requests: args.max_concurrent_requests,
        request_timeout: Duration::from_secs(args.request_timeout),
        shutdown_delay: Duration::from_secs(args.shutdown_delay),
        drain_timeout: Duration::from_secs(args.drain_timeout),
        startup_wait: Duration::from_secs(args.startup_wait),
        clock_offset_ns: args.test_clock_offset_ms.saturating_mul(1_000_000),
        redis: args.redis_url.map(|url| {
            let mut options = RedisOptions::new(url);
            options.password = args.redis_password;
            options.key_prefix = args.redis_key_prefix;
            options.command_timeout = Duration::from_millis(args.redis_timeout.max(1));
            options.pool_size = args.redis_pool_size.max(1);
            options.batch_max = usize::try_from(args.redis_batch_max).unwrap_or(usize::MAX);
            options.batch_wait = Duration::from_micros(args.redis_batch_wait_us);
            options.tls = RedisTlsFiles {
                ca: args.redis_tls_ca,
                cert: args.redis_tls_cert,
                key: args.redis_tls_key,
            };
            RedisConfig {
                options,
                resilience: ResilienceOptions {
                    mode: match args.failure_mode {
                        FailureModeArg::Allow => FailureMode::Allow,
                        FailureModeArg::Deny => FailureMode::Deny,
                        FailureModeArg::Local => FailureMode::Local,
                    },
                    local_divisor: args.local_fallback_divisor,
                    over_limit_cache_size: args.over_limit_cache_size,
                    ..ResilienceOptions::default()
                },
            }
        }),
        keys,
        caller: CallerSource {
            header: args.caller_id_header,
            hop: usize::try_from(args.caller_id_hop).unwrap_or(1),
        },
    };
    let result = runtime.block_on(async move {
        let app = Application::build(cfg).await?;
        app.run_until_stopped(shutdown_signal()).await
    });
    // Send what is queued while the runtime still runs the exporter.
    if let Some(p) = &pipeline {
        p.shutdown();
    }
    result
}

/// A listener's TLS files (clap has checked that certificate and key come
/// together, and a client CA only with them).
fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Option<ServerTlsFiles> {
    Some(ServerTlsFiles {
        cert: cert?,
        key: key?,
        client_ca,
    })
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
