//! OpenTelemetry traces: settings from the standard `OTEL_*` variables and
//! sluice's flags, the OTLP exporter (gRPC or HTTP/protobuf) behind a
//! bounded batch queue, the sampler, the resource and the propagators that
//! read a caller's trace context.
//!
//! Tracing is off unless an endpoint is configured (`--otel-endpoint`,
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
//! Off means no exporter, no tracing layer and no span on the request path:
//! [`enabled`] is false and every instrumentation point checks it first.
//!
//! Settings are read through a lookup function, not the process
//! environment, so tests pass a map. Every bad value is an error naming the
//! variable (or flag) and what it accepts; nothing falls back silently.
//!
//! [`parent_span`] and [`record_error`] are for the modules that make
//! child spans on the decision path (the Redis store, key lookups): this
//! module is a leaf, so they may use it without depending on the rest of
//! `telemetry`.
//!
//! May depend on: nothing of sluice's own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, global};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{BatchConfigBuilder, Sampler, SdkTracer, SdkTracerProvider};

use super::export::{Bounded, ExportStats};

/// Set once tracing is installed; read on the request path (one relaxed
/// load) to skip every tracing step when off.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// `--trace-descriptor-values`, once installed.
static DESCRIPTOR_VALUES: AtomicBool = AtomicBool::new(false);
/// The export counters of the installed pipeline, for `/metrics`.
static STATS: OnceLock<Arc<ExportStats>> = OnceLock::new();

/// Whether traces are being exported. False until [`Pipeline::install`].
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether spans may carry descriptor entries (request data).
#[inline]
pub fn descriptor_values() -> bool {
    DESCRIPTOR_VALUES.load(Ordering::Relaxed)
}

/// The export counters, once a pipeline was installed.
pub fn export_stats() -> Option<&'static Arc<ExportStats>> {
    STATS.get()
}

/// The span a decision-path child span hangs under: the current span,
/// when tracing is on and there is one (an RPC's SERVER span). `None`
/// otherwise, so a store call or key lookup made outside a traced request
/// (an HTTP call, a background task) never starts a trace of its own.
#[inline]
pub fn parent_span() -> Option<tracing::Span> {
    if !enabled() {
        return None;
    }
    let current = tracing::Span::current();
    (!current.is_none()).then_some(current)
}

/// Marks `span` failed: status ERROR with `message` as its description,
/// `error.type` set to `kind` (a bounded name), and an `exception` event
/// carrying both. The span must declare `otel.status_code`,
/// `otel.status_description` and `error.type` (as `Empty`). `message` must
/// hold no secret and no request data.
pub fn record_error(span: &tracing::Span, kind: &'static str, message: &str) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    span.record("otel.status_code", "error");
    span.record("otel.status_description", message);
    span.record("error.type", kind);
    span.add_event(
        "exception",
        vec![
            KeyValue::new("exception.type", kind),
            KeyValue::new("exception.message", message.to_string()),
        ],
    );
}

/// The tracing flags of `sluice serve`.
#[derive(Clone, Debug, Default)]
pub struct TraceFlags {
    /// `--otel-endpoint`: the collector, as `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: Option<String>,
    /// `--trace-sampling RATIO`: parent-based, RATIO of new traces.
    pub sampling: Option<f64>,
    /// `--trace-descriptor-values`: put descriptor entries (request data)
    /// on spans.
    pub descriptor_values: bool,
}

/// OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// Which spans are sampled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SamplerKind {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

/// A format a caller's trace context is read in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropagatorKind {
    TraceContext,
    Baggage,
    /// B3 single header (`b3`); extraction also reads the multi-header form.
    B3,
    /// B3 multi header (`X-B3-TraceId`, ...); extraction also reads `b3`.
    B3Multi,
}

/// The batch queue between finished spans and the exporter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSettings {
    /// Spans waiting for export; past it, new spans are dropped and counted.
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
    pub schedule_delay: Duration,
    pub export_timeout: Duration,
}

/// Everything needed to start exporting traces.
#[derive(Clone, Debug, PartialEq)]
pub struct OtelConfig {
    /// The full URL spans are sent to.
    pub endpoint: String,
    pub protocol: Protocol,
    pub timeout: Duration,
    /// Extra request headers (gRPC metadata), e.g. an API key of the backend.
    pub headers: Vec<(String, String)>,
    pub sampler: SamplerKind,
    pub propagators: Vec<PropagatorKind>,
    /// Resource attributes; `service.name`, `service.version` and
    /// `service.instance.id` always among them.
    pub resource: Vec<(String, String)>,
    pub batch: BatchSettings,
    pub descriptor_values: bool,
}

/// A tracing setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OtelConfigError {
    #[error("{name}: invalid value {value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "--trace-sampling needs an OTLP endpoint (--otel-endpoint or OTEL_EXPORTER_OTLP_ENDPOINT)"
    )]
    SamplingWithoutEndpoint,
}

/// Tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtelInitError {
    #[error("cannot build the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("OTLP header {name:?} is not a valid gRPC metadata entry")]
    Header { name: String },
}

fn invalid(name: &'static str, value: &str, reason: impl Into<String>) -> OtelConfigError {
    OtelConfigError::Invalid {
        name,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Defaults of the OpenTelemetry specification.
const DEFAULT_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_QUEUE: usize = 2048;
const DEFAULT_BATCH: usize = 512;
const DEFAULT_DELAY_MS: u64 = 5000;
const DEFAULT_EXPORT_TIMEOUT_MS: u64 = 30_000;
/// Upper bound on the queue, so a typo cannot reserve gigabytes.
const MAX_QUEUE: usize = 1 << 20;
/// Longest accepted wait, in milliseconds (10 minutes).
const MAX_MS: u64 = 600_000;
/// sluice reads B3 as well as W3C by default: gateways set up for Zipkin
/// send B3. W3C wins when a request carries both (it is read last).
pub const DEFAULT_PROPAGATORS: &str = "b3,tracecontext,baggage";

impl OtelConfig {
    /// Reads the settings; `Ok(None)` when tracing is off.
    ///
    /// # Errors
    /// [`OtelConfigError`] naming the first unusable variable or flag.
    pub fn from_sources(
        env: &dyn Fn(&str) -> Option<String>,
        flags: &TraceFlags,
    ) -> Result<Option<OtelConfig>, OtelConfigError> {
        let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("OTEL_SDK_DISABLED") {
            match v.trim().to_ascii_lowercase().as_str() {
                "true" => return Ok(None),
                "false" => {}
                _ => return Err(invalid("OTEL_SDK_DISABLED", &v, "use true or false")),
            }
        }
        if let Some(v) = get("OTEL_TRACES_EXPORTER") {
            match v.trim() {
                "none" => return Ok(None),
                "otlp" => {}
                _ => {
                    return Err(invalid(
                        "OTEL_TRACES_EXPORTER",
                        &v,
                        "sluice exports traces with otlp (or none to turn them off)",
                    ));
                }
            }
        }
        let protocol = match get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .map(|v| ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", v))
            .or_else(|| {
                get("OTEL_EXPORTER_OTLP_PROTOCOL").map(|v| ("OTEL_EXPORTER_OTLP_PROTOCOL", v))
            }) {
            None => Protocol::HttpProtobuf,
            Some((name, v)) => match v.trim() {
                "grpc" => Protocol::Grpc,
                "http/protobuf" => Protocol::HttpProtobuf,
                _ => return Err(invalid(name, &v, "use grpc or http/protobuf")),
            },
        };
        // The flag and the generic variable are base URLs (HTTP appends
        // /v1/traces); the per-signal variable is used as given.
        let endpoint = if let Some(e) = flags.endpoint.as_deref().filter(|e| !e.trim().is_empty()) {
            Some(("--otel-endpoint", e.trim().to_string(), true))
        } else if let Some(e) = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some((
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                e.trim().to_string(),
                false,
            ))
        } else {
            get("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|e| ("OTEL_EXPORTER_OTLP_ENDPOINT", e.trim().to_string(), true))
        };
        let Some((endpoint_name, endpoint, is_base)) = endpoint else {
            if flags.sampling.is_some() {
                return Err(OtelConfigError::SamplingWithoutEndpoint);
            }
            return Ok(None);
        };
        let endpoint = resolve_endpoint(endpoint_name, &endpoint, is_base, protocol)?;

        let timeout = millis(
            &get,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ],
            DEFAULT_TIMEOUT_MS,
        )?;
        let headers = match get("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
            .map(|v| ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", v))
            .or_else(|| {
                get("OTEL_EXPORTER_OTLP_HEADERS").map(|v| ("OTEL_EXPORTER_OTLP_HEADERS", v))
            }) {
            None => Vec::new(),
            Some((name, v)) => parse_pairs(name, &v)?,
        };

        let sampler = match flags.sampling {
            Some(r) => SamplerKind::ParentBasedTraceIdRatio(ratio("--trace-sampling", r)?),
            None => sampler_from(&get)?,
        };
        let propagators = propagators_from(
            get("OTEL_PROPAGATORS")
                .as_deref()
                .unwrap_or(DEFAULT_PROPAGATORS),
        )?;
        let resource = resource_from(&get)?;

        let max_queue_size = count(&get, "OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_QUEUE)?;
        let max_export_batch_size = count(&get, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", DEFAULT_BATCH)?;
        if max_export_batch_size > max_queue_size {
            return Err(invalid(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                &max_export_batch_size.to_string(),
                format!("must not exceed OTEL_BSP_MAX_QUEUE_SIZE ({max_queue_size})"),
            ));
        }
        let batch = BatchSettings {
            max_queue_size,
            max_export_batch_size,
            schedule_delay: millis(&get, &["OTEL_BSP_SCHEDULE_DELAY"], DEFAULT_DELAY_MS)?,
            export_timeout: millis(
                &get,
                &["OTEL_BSP_EXPORT_TIMEOUT"],
                DEFAULT_EXPORT_TIMEOUT_MS,
            )?,
        };
        Ok(Some(OtelConfig {
            endpoint,
            protocol,
            timeout,
            headers,
            sampler,
            propagators,
            resource,
            batch,
            descriptor_values: flags.descriptor_values,
        }))
    }

    /// The resource's `service.name`.
    pub fn service_name(&self) -> &str {
        self.resource
            .iter()
            .find(|(k, _)| k == "service.name")
            .map_or("sluice", |(_, v)| v.as_str())
    }
}

fn resolve_endpoint(
    name: &'static str,
    value: &str,
    is_base: bool,
    protocol: Protocol,
) -> Result<String, OtelConfigError> {
    let uri: http::Uri = value
        .parse()
        .map_err(|e| invalid(name, value, format!("not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(invalid(
                name,
                value,
                "https is not supported: export to a collector over http (a node-local or in-cluster agent)",
            ));
        }
        _ => return Err(invalid(name, value, "use http://host:port")),
    }
    if uri.host().is_none() {
        return Err(invalid(name, value, "no host"));
    }
    Ok(match (protocol, is_base) {
        (Protocol::HttpProtobuf, true) => {
            format!("{}/v1/traces", value.trim_end_matches('/'))
        }
        _ => value.to_string(),
    })
}

fn millis(
    get: &dyn Fn(&str) -> Option<String>,
    names: &[&'static str],
    default: u64,
) -> Result<Duration, OtelConfigError> {
    for &name in names {
        if let Some(v) = get(name) {
            let ms: u64 = v
                .trim()
                .parse()
                .map_err(|_| invalid(name, &v, "milliseconds, a whole number"))?;
            if ms == 0 || ms > MAX_MS {
                return Err(invalid(name, &v, format!("between 1 and {MAX_MS} ms")));
            }
            return Ok(Duration::from_millis(ms));
        }
    }
    Ok(Duration::from_millis(default))
}

fn count(
    get: &dyn Fn(&str) -> Option<String>,
    name: &'static str,
    default: usize,
) -> Result<usize, OtelConfigError> {
    let Some(v) = get(name) else {
        return Ok(default);
    };
    match v.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_QUEUE).contains(&n) => Ok(n),
        _ => Err(invalid(
            name,
            &v,
            format!("a whole number from 1 to {MAX_QUEUE}"),
        )),
    }
}

fn ratio(name: &'static str, r: f64) -> Result<f64, OtelConfigError> {
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(invalid(name, &r.to_string(), "a ratio from 0 to 1"))
    }
}

fn sampler_from(get: &dyn Fn(&str) -> Option<String>) -> Result<SamplerKind, OtelConfigError> {
    let arg = |default: f64| -> Result<f64, OtelConfigError> {
        match get("OTEL_TRACES_SAMPLER_ARG") {
            None => Ok(default),
            Some(v) => {
                let r: f64 = v
                    .trim()
                    .parse()
                    .map_err(|_| invalid("OTEL_TRACES_SAMPLER_ARG", &v, "a ratio from 0 to 1"))?;
                ratio("OTEL_TRACES_SAMPLER_ARG", r)
            }
        }
    };
    let Some(v) = get("OTEL_TRACES_SAMPLER") else {
        return Ok(SamplerKind::ParentBasedAlwaysOn);
    };
    Ok(match v.trim() {
        "always_on" => SamplerKind::AlwaysOn,
        "always_off" => SamplerKind::AlwaysOff,
        "traceidratio" => SamplerKind::TraceIdRatio(arg(1.0)?),
        "parentbased_always_on" => SamplerKind::ParentBasedAlwaysOn,
        "parentbased_always_off" => SamplerKind::ParentBasedAlwaysOff,
        "parentbased_traceidratio" => SamplerKind::ParentBasedTraceIdRatio(arg(1.0)?),
        _ => {
            return Err(invalid(
                "OTEL_TRACES_SAMPLER",
                &v,
                "use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio",
            ));
        }
    })
}

fn propagators_from(list: &str) -> Result<Vec<PropagatorKind>, OtelConfigError> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let p = match name {
            "tracecontext" => PropagatorKind::TraceContext,
            "baggage" => PropagatorKind::Baggage,
            "b3" => PropagatorKind::B3,
            "b3multi" => PropagatorKind::B3Multi,
            // "none" means: read no context from callers.
            "none" => return Ok(Vec::new()),
            _ => {
                return Err(invalid(
                    "OTEL_PROPAGATORS",
                    list,
                    format!(
                        "unknown propagator {name:?} (use tracecontext, baggage, b3, b3multi or none)"
                    ),
                ));
            }
        };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// `key=value,key2=value2` with percent-encoded values, as the
/// specification writes `OTEL_RESOURCE_ATTRIBUTES` and `..._HEADERS`.
fn parse_pairs(name: &'static str, value: &str) -> Result<Vec<(String, String)>, OtelConfigError> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            return Err(invalid(name, value, format!("{item:?} is not key=value")));
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(invalid(name, value, format!("{item:?} has an empty key")));
        }
        let v = percent_encoding::percent_decode_str(v.trim())
            .decode_utf8()
            .map_err(|_| invalid(name, value, format!("{item:?} does not decode to UTF-8")))?;
        out.push((k.to_string(), v.into_owned()));
    }
    Ok(out)
}

fn resource_from(
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, OtelConfigError> {
    let mut attrs = match get("OTEL_RESOURCE_ATTRIBUTES") {
        None => Vec::new(),
        Some(v) => parse_pairs("OTEL_RESOURCE_ATTRIBUTES", &v)?,
    };
    let set = |attrs: &mut Vec<(String, String)>, key: &str, value: String, wins: bool| match attrs
        .iter_mut()
        .find(|(k, _)| k == key)
    {
        Some(slot) if wins => slot.1 = value,
        Some(_) => {}
        None => attrs.push((key.to_string(), value)),
    };
    if let Some(name) = get("OTEL_SERVICE_NAME") {
        set(&mut attrs, "service.name", name.trim().to_string(), true);
    }
    set(&mut attrs, "service.name", "sluice".into(), false);
    set(
        &mut attrs,
        "service.version",
        env!("CARGO_PKG_VERSION").into(),
        true,
    );
    // The pod name (Kubernetes downward API) identifies a replica across
    // restarts of its process; without one, a new id per process.
    let pod = get("POD_NAME").map(|p| p.trim().to_string());
    if let Some(p) = &pod {
        set(&mut attrs, "k8s.pod.name", p.clone(), false);
    }
    if let Some(ns) = get("POD_NAMESPACE") {
        set(
            &mut attrs,
            "k8s.namespace.name",
            ns.trim().to_string(),
            false,
        );
    }
    let instance = pod.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    set(&mut attrs, "service.instance.id", instance, false);
    Ok(attrs)
}

// === impl Pipeline ===

/// An installed trace pipeline: the provider (flushed on [`Pipeline::shutdown`]),
/// the tracer the `tracing` bridge writes to, and the export counters.
#[derive(Debug)]
pub struct Pipeline {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    stats: Arc<ExportStats>,
    descriptor_values: bool,
}

impl Pipeline {
    /// Builds the exporter and provider, installs the global propagator
    /// and tracer provider, and turns [`enabled`] on. Must run inside a
    /// tokio runtime (exports run on it).
    ///
    /// # Errors
    /// [`OtelInitError`] when the exporter cannot be built.
    pub fn install(cfg: &OtelConfig) -> Result<Pipeline, OtelInitError> {
        let stats = Arc::new(ExportStats::default());
        let exporter_err = |source| OtelInitError::Exporter {
            endpoint: cfg.endpoint.clone(),
            source,
        };
        let exporter = match cfg.protocol {
            Protocol::Grpc => {
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (k, v) in &cfg.headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())
                        .map_err(|_| OtelInitError::Header { name: k.clone() })?;
                    let value = v
                        .parse()
                        .map_err(|_| OtelInitError::Header { name: k.clone() })?;
                    metadata.insert(key, value);
                }
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(cfg.endpoint.clone())
                    .with_timeout(cfg.timeout)
                    .with_metadata(metadata)
                    .build()
                    .map_err(exporter_err)?
            }
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(cfg.endpoint.clone())
                .with_timeout(cfg.timeout)
                .with_headers(cfg.headers.iter().cloned().collect())
                .build()
                .map_err(exporter_err)?,
        };
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(cfg.batch.max_queue_size)
            .with_max_export_batch_size(cfg.batch.max_export_batch_size)
            .with_scheduled_delay(cfg.batch.schedule_delay)
            .with_max_export_timeout(cfg.batch.export_timeout)
            .with_max_concurrent_exports(1)
            .build();
        let processor = Bounded::new(exporter, batch, cfg.batch.max_queue_size, stats.clone());
        let resource = Resource::builder_empty()
            .with_attributes(
                cfg.resource
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler(cfg.sampler))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("sluice");
        global::set_text_map_propagator(propagator(&cfg.propagators));
        global::set_tracer_provider(provider.clone());
        let _ = STATS.set(stats.clone());
        DESCRIPTOR_VALUES.store(cfg.descriptor_values, Ordering::Relaxed);
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Pipeline {
            provider,
            tracer,
            stats,
            descriptor_values: cfg.descriptor_values,
        })
    }

    /// The tracer behind the `tracing` bridge.
    pub fn tracer(&self) -> SdkTracer {
        self.tracer.clone()
    }

    /// Spans exported, failed and dropped so far.
    pub fn stats(&self) -> Arc<ExportStats> {
        self.stats.clone()
    }

    /// Whether spans may carry descriptor entries.
    pub fn descriptor_values(&self) -> bool {
        self.descriptor_values
    }

    /// Exports what is queued (bounded by the export timeout) and stops.
    pub fn shutdown(&self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "trace exporter did not shut down cleanly");
        }
    }
}

fn sampler(kind: SamplerKind) -> Sampler {
    match kind {
        SamplerKind::AlwaysOn => Sampler::AlwaysOn,
        SamplerKind::AlwaysOff => Sampler::AlwaysOff,
        SamplerKind::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
        SamplerKind::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        SamplerKind::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        SamplerKind::ParentBasedTraceIdRatio(r) => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
        }
    }
}

/// One propagator reading every listed format, later ones winning.
pub fn propagator(kinds: &[PropagatorKind]) -> TextMapCompositePropagator {
    use opentelemetry_propagator_b3::{B3Encoding, Propagator as B3};
    let list: Vec<Box<dyn TextMapPropagator + Send + Sync>> = kinds
        .iter()
        .map(|k| -> Box<dyn TextMapPropagator + Send + Sync> {
            match k {
                PropagatorKind::TraceContext => Box::new(TraceContextPropagator::new()),
                PropagatorKind::Baggage => Box::new(BaggagePropagator::new()),
                PropagatorKind::B3 => Box::new(B3::with_encoding(B3Encoding::SingleHeader)),
                PropagatorKind::B3Multi => Box::new(B3::with_encoding(B3Encoding::MultipleHeader)),
            }
        })
        .collect();
    TextMapCompositePropagator::new(list)
}

#[cfg(test)]
mod tests;
