//! Logs, metrics and traces.
//!
//! Logs are structured (`tracing`), JSON or text; in JSON, a line written
//! inside a traced request carries its `trace_id` and `span_id`.
//! Decisions are metrics, never info-level log lines. Metrics are
//! Prometheus text from a prometheus-client registry; per-rule counters are
//! read from the rules themselves at scrape time, so the hot path only
//! bumps atomics. Traces ([`otel`]) are OpenTelemetry spans exported over
//! OTLP, off unless an endpoint is configured; [`trace`] has the span
//! names, fields and helpers the instrumented modules use.
//!
//! May depend on: `core`, `engine`, `store` (the trait).

pub mod export;
pub mod metrics;
pub mod otel;
pub mod process;
pub mod throttle;
pub mod trace;

use std::sync::OnceLock;

use tracing::dispatcher::WeakDispatch;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;

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

/// The installed subscriber, for reading a span's trace ids while a log
/// line is formatted.
static DISPATCH: OnceLock<WeakDispatch> = OnceLock::new();

/// Installs the global logger, and the bridge from `tracing` spans to
/// OpenTelemetry when `traces` is given. `level` is an `EnvFilter`
/// directive (`info`, `sluice=debug,tower=warn`, ...); it filters log
/// lines only, never which spans are traced.
///
/// # Errors
/// [`TelemetryError`] for a bad filter or a second call.
pub fn init_logging(
    format: LogFormat,
    level: &str,
    traces: Option<&otel::Pipeline>,
) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_new(level).map_err(|source| TelemetryError::Filter {
        level: level.to_string(),
        source,
    })?;
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .event_format(WithTraceIds(
                format::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            ))
            .with_writer(std::io::stdout)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(std::io::stdout)
            .with_filter(filter)
            .boxed(),
    };
    // Only sluice's own spans become OpenTelemetry spans (not h2's or
    // hyper's); they are made only while tracing is on.
    let spans = traces.map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer())
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(Targets::new().with_target("sluice", tracing::Level::INFO))
    });
    let subscriber = tracing_subscriber::registry().with(logs).with(spans);
    let dispatch = tracing::Dispatch::new(subscriber);
    let weak = dispatch.downgrade();
    tracing::dispatcher::set_global_default(dispatch)
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    let _ = DISPATCH.set(weak);
    Ok(())
}

/// The trace and span id of the span current on this thread, when it is
/// an OpenTelemetry span that is being recorded.
pub fn current_ids() -> Option<(opentelemetry::trace::TraceId, opentelemetry::trace::SpanId)> {
    use opentelemetry::trace::TraceContextExt as _;
    if !otel::enabled() {
        return None;
    }
    let dispatch = DISPATCH.get()?.upgrade()?;
    let id = dispatch.current_span().id()?.clone();
    let cx = tracing_opentelemetry::get_otel_context(&id, &dispatch)?;
    let span = cx.span();
    let sc = span.span_context();
    (sc.is_valid() && sc.is_sampled()).then(|| (sc.trace_id(), sc.span_id()))
}

/// The JSON event format, plus `trace_id` and `span_id` when the line is
/// written inside a sampled span.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, span_id)) = current_ids() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The JSON formatter writes one object and a newline: put the ids
        // before its closing brace.
        if let Some(end) = line.rfind('}') {
            let ids = format!(",\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"");
            line.insert_str(end, &ids);
        }
        writer.write_str(&line)
    }
}
