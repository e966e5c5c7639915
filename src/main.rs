//! The `sluice` command: `serve` and `check-config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use sluice::app::{Application, RedisConfig, ServeConfig};
use sluice::config::{self, LoadOptions};
use sluice::core::stats::StatsRegistry;
use sluice::engine::{HeaderMode, RequestLimits};
use sluice::store::redis::RedisOptions;
use sluice::store::resilient::{FailureMode, ResilienceOptions};
use sluice::telemetry::{self, LogFormat};

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

/// A secret from the command line or the environment; never printed.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
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
    /// Largest encoded gRPC request, in bytes.
    #[arg(long, env = "SLUICE_MAX_REQUEST_BYTES", default_value_t = 64 * 1024)]
    max_request_bytes: usize,
    /// Cap on metric keys built from request values (detailed_metric, value_to_metric, overrides).
    #[arg(long, env = "SLUICE_MAX_METRIC_KEYS", default_value_t = 10_000)]
    max_metric_keys: usize,
    /// Seconds to let in-flight requests finish after SIGTERM/SIGINT.
    #[arg(long, env = "SLUICE_DRAIN_TIMEOUT", default_value_t = 10)]
    drain_timeout: u64,
    /// Keep counters in Redis, shared by every replica: redis://, rediss://,
    /// redis-cluster://host:port?node=host:port&..., or
    /// redis-sentinel://host:port?sentinelServiceName=NAME&node=host:port. Unset: in memory.
    #[arg(long, env = "SLUICE_REDIS_URL")]
    redis_url: Option<String>,
    /// Redis password, overriding the URL's (never logged).
    #[arg(long, env = "SLUICE_REDIS_PASSWORD", hide_env_values = true)]
    redis_password: Option<Secret>,
    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[arg(long, env = "SLUICE_REDIS_KEY_PREFIX", default_value = "sluice")]
    redis_key_prefix: String,
    /// Bound on every Redis call, in milliseconds (Envoy's RPC timeout is 20 ms).
    #[arg(long, env = "SLUICE_REDIS_TIMEOUT", default_value_t = 10)]
    redis_timeout: u64,
    /// Redis connections per node.
    #[arg(long, env = "SLUICE_REDIS_POOL_SIZE", default_value_t = 2)]
    redis_pool_size: usize,
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
        Command::Serve(args) => match serve(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
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
    telemetry::init_logging(format, &args.log_level)?;
    let cfg = ServeConfig {
        config_path: args.config,
        grpc_addr: args.grpc_addr,
        http_addr: args.http_addr,
        headers: match args.response_headers {
            HeadersArg::None => HeaderMode::None,
            HeadersArg::Draft03 => HeaderMode::Draft03,
            HeadersArg::Ietf => HeaderMode::Ietf,
        },
        shadow_mode: args.shadow_mode,
        merge_domains: args.merge_domains,
        max_counters: args.max_counters,
        request_limits: RequestLimits {
            max_descriptors: args.max_descriptors,
            max_entries: args.max_entries,
            max_value_bytes: args.max_value_bytes,
        },
        max_metric_keys: args.max_metric_keys,
        max_request_bytes: args.max_request_bytes,
        drain_timeout: Duration::from_secs(args.drain_timeout),
        clock_offset_ns: args.test_clock_offset_ms.saturating_mul(1_000_000),
        redis: args.redis_url.map(|url| {
            let mut options = RedisOptions::new(url);
            options.password = args.redis_password.map(|s| s.0);
            options.key_prefix = args.redis_key_prefix;
            options.command_timeout = Duration::from_millis(args.redis_timeout.max(1));
            options.pool_size = args.redis_pool_size.max(1);
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
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let app = Application::build(cfg).await?;
        app.run_until_stopped(shutdown_signal()).await
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
