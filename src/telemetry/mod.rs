//! Logs and metrics.
//!
//! Logs are structured (`tracing`), JSON or text. Decisions are metrics,
//! never info-level log lines. Metrics are Prometheus text from a
//! prometheus-client registry; per-rule counters are read from the rules
//! themselves at scrape time, so the hot path only bumps atomics.
//!
//! May depend on: `core`, `engine`, `store` (the trait).

pub mod metrics;

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for containers.
    Json,
    #[default]
    Text,
}

/// Logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid --log-level '{level}': {source}")]
    Filter {
        level: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("a logger is already installed")]
    AlreadyInstalled,
}

/// Installs the global logger. `level` is an `EnvFilter` directive
/// (`info`, `sluice=debug,tower=warn`, ...).
///
/// # Errors
/// [`TelemetryError`] for a bad filter or a second call.
pub fn init_logging(format: LogFormat, level: &str) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_new(level).map_err(|source| TelemetryError::Filter {
        level: level.to_string(),
        source,
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    result.map_err(|_| TelemetryError::AlreadyInstalled)
}
