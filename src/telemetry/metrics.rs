//! The Prometheus metrics of the service: RPC latency and results, rule
//! statistics, the counter store's and the key store's own counters
//! (query latency and errors by operation, usage flushes and their lag).
//!
//! May depend on: `engine`, `keys` (the resolver's counters), `store`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::otel;
use crate::core::stats::StatsSnapshot;
use crate::engine::Engine;
use crate::keys::Resolver;
use crate::keys::resolver::{ERROR_KINDS, KeyStoreStats, OPERATIONS, QueryStats};
use crate::keys::usage::FlushStats;
use crate::store::{CounterStore, HistogramSnapshot, StoreHealth, StoreStats};

/// Upper bounds of the RPC latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 1.0,
];

/// How an RPC ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    OverLimit,
    Error,
}

/// The trace of one request that fell in a bucket (an OpenMetrics
/// exemplar), so a dashboard can jump from a slow bucket to its trace.
#[derive(Clone, Copy, Debug)]
struct Exemplar {
    trace_id: opentelemetry::trace::TraceId,
    span_id: opentelemetry::trace::SpanId,
    seconds: f64,
    at: SystemTime,
}

/// A latency histogram made of atomics: observing is two relaxed adds and
/// a short scan, with no lock shared between requests. Exemplars are kept
/// only while tracing is on, one per bucket, the latest sampled request.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
    exemplars: [Mutex<Option<Exemplar>>; LATENCY_BUCKETS.len() + 1],
}

impl Histogram {
    fn observe_ns(&self, ns: u64) {
        #[allow(clippy::cast_precision_loss)]
        let secs = ns as f64 / 1e9;
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
        if otel::enabled()
            && let Some((trace_id, span_id)) = super::current_ids()
        {
            *self.exemplars[i].lock() = Some(Exemplar {
                trace_id,
                span_id,
                seconds: secs,
                at: SystemTime::now(),
            });
        }
    }

    /// The histogram in OpenMetrics text, with exemplars.
    /// (prometheus-client builds exemplars only inside its own locking
    /// histogram, so this one is written here.)
    fn encode(&self, name: &str, help: &str, out: &mut String) {
        let (sum, count, buckets) = self.snapshot();
        let _ = writeln!(out, "# HELP {name} {help}.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let _ = writeln!(out, "# UNIT {name} seconds");
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
        let mut cumulative = 0;
        for (i, (le, n)) in buckets.iter().enumerate() {
            cumulative += n;
            if le.is_infinite() {
                let _ = write!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
            } else {
                let _ = write!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
            }
            if let Some(e) = *self.exemplars[i].lock() {
                let at =
                    e.at.duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64());
                let _ = write!(
                    out,
                    " # {{trace_id=\"{}\",span_id=\"{}\"}} {} {at:.3}",
                    e.trace_id, e.span_id, e.seconds
                );
            }
            out.push('\n');
        }
    }

    /// (sum in seconds, count, per-bucket counts); the encoder makes them
    /// cumulative.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut count = 0;
        let mut out = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Relaxed);
            count += n;
            out.push((LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), n));
        }
        #[allow(clippy::cast_precision_loss)]
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        (sum, count, out)
    }
}

/// Service-wide metrics, shared by the gRPC and HTTP front ends.
#[derive(Debug, Default)]
pub struct Metrics {
    latency: Histogram,
    ok: AtomicU64,
    over_limit: AtomicU64,
    errors: AtomicU64,
    /// Configuration loads that were applied.
    pub config_load_success: Counter,
    /// Configuration loads that were rejected (the previous one kept serving).
    pub config_load_error: Counter,
    /// ValidateKey answers by code (VALID, NOT_FOUND, ...; ERROR for a
    /// failed call).
    pub key_validations: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// AdminService calls by method and gRPC code (both from fixed sets).
    pub admin_requests: Family<Vec<(&'static str, String)>, Counter>,
    /// Gateway answers (ext_authz Check, `/auth`) by transport and code
    /// (OK, MISSING, NOT_FOUND, ..., RATE_LIMITED).
    pub authz_checks: Family<[(&'static str, &'static str); 2], Counter>,
    /// Re-reads of a listener's TLS files that changed them, by listener
    /// and result (`ok`, or `error`: the previous certificate kept serving).
    pub tls_reloads: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// TLS handshakes refused or abandoned, by listener.
    pub tls_handshake_failures: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Decision calls in flight (see `crate::admission`).
    pub in_flight: AtomicU64,
    /// Decision calls refused because `--max-concurrent-requests` were in
    /// flight.
    pub shed_concurrency: AtomicU64,
    /// Decision calls answered at their deadline (grpc-timeout or
    /// `--request-timeout`), not decided.
    pub shed_deadline: AtomicU64,
    /// Decision calls dropped before they were answered: their deadline
    /// passed or their client went away.
    pub abandoned: AtomicU64,
}

impl Metrics {
    /// Records one gateway answer.
    pub fn record_authz(&self, transport: &'static str, code: &'static str) {
        self.authz_checks
            .get_or_create(&[("transport", transport), ("code", code)])
            .inc();
    }

    /// Records one ShouldRateLimit call (gRPC or `/json`).
    pub fn record_rpc(&self, started: Instant, outcome: Outcome) {
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.latency.observe_ns(ns);
        match outcome {
            Outcome::Ok => &self.ok,
            Outcome::OverLimit => &self.over_limit,
            Outcome::Error => &self.errors,
        }
        .fetch_add(1, Relaxed);
    }
}

/// What the collector reads from the engine at scrape time.
pub trait StatsSource: Send + Sync + std::fmt::Debug + 'static {
    /// Every rule and dynamic metric key with its counters.
    fn rule_stats(&self) -> Vec<(Arc<str>, StatsSnapshot)>;
    fn store_stats(&self) -> StoreStats;
    fn store_histograms(&self) -> Vec<HistogramSnapshot>;
    fn store_health(&self) -> StoreHealth;
    /// Hits recorded on a rule's own key because the metric-key cap was hit.
    fn metric_key_overflow(&self) -> u64;
}

impl<S: CounterStore> StatsSource for Engine<S> {
    fn rule_stats(&self) -> Vec<(Arc<str>, StatsSnapshot)> {
        let rules = self.rules();
        let mut out: Vec<(Arc<str>, StatsSnapshot)> = rules
            .rules()
            .into_iter()
            .map(|r| (r.stats_key.clone(), r.stats.snapshot()))
            .collect();
        out.extend(
            self.dynamic_stats()
                .snapshot()
                .into_iter()
                .map(|(k, s)| (Arc::from(k), s.snapshot())),
        );
        out.push((
            Arc::from("(untracked overrides)"),
            self.override_stats().snapshot(),
        ));
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }

    fn store_stats(&self) -> StoreStats {
        self.store().store_stats()
    }

    fn store_histograms(&self) -> Vec<HistogramSnapshot> {
        self.store().store_histograms()
    }

    fn store_health(&self) -> StoreHealth {
        self.store().health()
    }

    fn metric_key_overflow(&self) -> u64 {
        self.dynamic_stats().overflow()
    }
}

#[derive(Debug)]
struct ServiceCollector {
    metrics: Arc<Metrics>,
    source: Arc<dyn StatsSource>,
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

impl Collector for ServiceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        {
            let mut m = encoder.encode_descriptor(
                "sluice_build_info",
                "The running build: always 1, its version in the label",
                None,
                MetricType::Gauge,
            )?;
            let labels = [("version", env!("CARGO_PKG_VERSION"))];
            let e = m.encode_family(&labels)?;
            ConstGauge::new(1).encode(e)?;
        }
        {
            let stats = otel::export_stats();
            let load = |f: fn(&super::export::ExportStats) -> u64| stats.map_or(0, |s| f(s));
            let mut m = encoder.encode_descriptor(
                "sluice_trace_spans",
                "Finished sampled spans by what became of them: exported, export_failed (the collector was down, refused them or timed out) or dropped (the export queue was full)",
                None,
                MetricType::Counter,
            )?;
            for (outcome, v) in [
                ("exported", load(|s| s.exported.load(Relaxed))),
                ("export_failed", load(|s| s.failed.load(Relaxed))),
                ("dropped", load(|s| s.dropped.load(Relaxed))),
            ] {
                let labels = [("outcome", outcome)];
                let e = m.encode_family(&labels)?;
                ConstCounter::new(v).encode(e)?;
            }
            gauge(
                &mut encoder,
                "sluice_trace_queue_spans",
                "Finished spans waiting for export (bounded by OTEL_BSP_MAX_QUEUE_SIZE)",
                stats.map_or(0, |s| {
                    i64::try_from(s.queued.load(Relaxed)).unwrap_or(i64::MAX)
                }),
            )?;
        }
        {
            let mut m = encoder.encode_descriptor(
                "sluice_rpc_decisions",
                "ShouldRateLimit calls by overall result",
                None,
                MetricType::Counter,
            )?;
            for (label, v) in [
                ("ok", &self.metrics.ok),
                ("over_limit", &self.metrics.over_limit),
                ("error", &self.metrics.errors),
            ] {
                let fam = [("result", label)];
                let e = m.encode_family(&fam)?;
                ConstCounter::new(v.load(Relaxed)).encode(e)?;
            }
        }

        gauge(
            &mut encoder,
            "sluice_requests_in_flight",
            "Decision calls (ShouldRateLimit, ValidateKey, Check, /json, /auth) being answered now",
            i64::try_from(self.metrics.in_flight.load(Relaxed)).unwrap_or(i64::MAX),
        )?;
        {
            let mut m = encoder.encode_descriptor(
                "sluice_requests_shed",
                "Decision calls not decided: refused at once because --max-concurrent-requests were in flight (concurrency), or answered at their deadline (deadline)",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in [
                ("concurrency", &self.metrics.shed_concurrency),
                ("deadline", &self.metrics.shed_deadline),
            ] {
                let fam = [("reason", reason)];
                let e = m.encode_family(&fam)?;
                ConstCounter::new(n.load(Relaxed)).encode(e)?;
            }
        }
        counter(
            &mut encoder,
            "sluice_requests_abandoned",
            "Decision calls dropped before they were answered because their client went away",
            self.metrics.abandoned.load(Relaxed),
        )?;

        let rules = self.source.rule_stats();
        type Pick = fn(&StatsSnapshot) -> u64;
        let per_rule: [(&str, &str, Pick); 5] = [
            (
                "sluice_rule_total_hits",
                "Hits counted against the rule",
                |s| s.total_hits,
            ),
            (
                "sluice_rule_over_limit",
                "Hits over the rule's limit",
                |s| s.over_limit,
            ),
            (
                "sluice_rule_near_limit",
                "Hits past 80% of the rule's limit",
                |s| s.near_limit,
            ),
            (
                "sluice_rule_within_limit",
                "Hits within the rule's limit",
                |s| s.within_limit,
            ),
            (
                "sluice_rule_shadow_mode",
                "Over-limit hits let through by shadow mode",
                |s| s.shadow_mode,
            ),
        ];
        for (name, help, pick) in per_rule {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (key, snap) in &rules {
                let fam = [("key", &**key)];
                let e = m.encode_family(&fam)?;
                ConstCounter::new(pick(snap)).encode(e)?;
            }
        }
        counter(
            &mut encoder,
            "sluice_metric_key_overflow",
            "Hits recorded on the rule's own key because the cap on per-value metric keys (--max-metric-keys) was reached",
            self.source.metric_key_overflow(),
        )?;

        let store = self.source.store_stats();
        gauge(
            &mut encoder,
            "sluice_counters_live",
            "Counters held by the counter store",
            i64::try_from(store.live_counters).unwrap_or(i64::MAX),
        )?;
        counter(
            &mut encoder,
            "sluice_counters_expired",
            "Counters dropped because their windows had passed",
            store.expired,
        )?;
        for (name, help, v) in [
            (
                "sluice_redis_commands",
                "Script calls sent to Redis (batch calls, each carrying many checks)",
                store.commands,
            ),
            (
                "sluice_redis_batches",
                "Decisions whose checks went to Redis (each waits for one round trip)",
                store.batches,
            ),
            ("sluice_redis_checks", "Checks sent to Redis", store.checks),
            (
                "sluice_redis_resent_checks",
                "Checks sent again to another Redis node because theirs no longer served their slot",
                store.resent,
            ),
            (
                "sluice_store_degraded_checks",
                "Checks answered by the failure mode while the shared store was unreachable",
                store.degraded_checks,
            ),
            (
                "sluice_store_cached_denials",
                "Checks answered from the local over-limit cache",
                store.cached_denials,
            ),
            (
                "sluice_store_failures",
                "Calls to the shared store that failed or timed out",
                store.failures,
            ),
        ] {
            counter(&mut encoder, name, help, v)?;
        }
        gauge(
            &mut encoder,
            "sluice_store_breaker_state",
            "Circuit breaker in front of the shared store: 0 closed, 1 open, 2 half-open",
            i64::from(store.breaker),
        )?;
        let health = self.source.store_health();
        gauge(
            &mut encoder,
            "sluice_store_degraded",
            "1 while decisions are not coming from the shared store",
            i64::from(health.degraded),
        )?;
        for h in self.source.store_histograms() {
            let mut m = encoder.encode_descriptor(h.name, h.help, None, MetricType::Histogram)?;
            m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                h.sum, h.count, &h.buckets, None,
            )?;
        }
        counter(
            &mut encoder,
            "sluice_counters_overflow",
            "Checks answered without storing a counter because the cap on live counters (--max-counters) was reached",
            store.overflow,
        )?;
        Ok(())
    }
}

/// What the key-store collector reads at scrape time.
pub trait KeyStoreSource: Send + Sync + std::fmt::Debug + 'static {
    fn key_store_stats(&self) -> &KeyStoreStats;
    fn key_store_health(&self) -> StoreHealth;
    fn usage_flushes(&self) -> &FlushStats;
    /// How long the oldest usage count not yet written has waited, in ms.
    fn usage_lag_ms(&self) -> i64;
}

impl<S: CounterStore> KeyStoreSource for Resolver<S> {
    fn key_store_stats(&self) -> &KeyStoreStats {
        self.stats()
    }

    fn key_store_health(&self) -> StoreHealth {
        self.health()
    }

    fn usage_flushes(&self) -> &FlushStats {
        &self.usage().flushes
    }

    fn usage_lag_ms(&self) -> i64 {
        self.usage().lag_ms(self.now())
    }
}

#[derive(Debug)]
struct KeyStoreCollector {
    source: Arc<dyn KeyStoreSource>,
}

impl Collector for KeyStoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.source.key_store_stats();
        for (name, help, v) in [
            (
                "sluice_key_store_lookups",
                "Key lookups sent to the key store (cache misses, one per secret however many requests wait for it)",
                &s.lookups,
            ),
            (
                "sluice_key_store_shared_lookups",
                "Cache misses answered by a lookup another request had in flight for the same secret",
                &s.shared,
            ),
            (
                "sluice_key_store_failures",
                "Key lookups that failed or timed out (--key-store-timeout)",
                &s.failures,
            ),
            (
                "sluice_key_lookups_refused",
                "Cache misses not looked up because the caller used up its failed validations (--failed-validations-per-minute)",
                &s.refused,
            ),
        ] {
            counter(&mut encoder, name, help, v.load(Relaxed))?;
        }
        let mut m = encoder.encode_descriptor(
            "sluice_key_store_degraded_answers",
            "Keys answered by --key-store-failure-mode because the key store could not look them up",
            None,
            MetricType::Counter,
        )?;
        for (answer, v) in [
            ("cached", &s.degraded_cached),
            ("deny", &s.degraded_deny),
            ("allow", &s.degraded_allow),
        ] {
            let fam = [("answer", answer)];
            let e = m.encode_family(&fam)?;
            ConstCounter::new(v.load(Relaxed)).encode(e)?;
        }
        gauge(
            &mut encoder,
            "sluice_key_store_degraded",
            "1 while key lookups fail and keys are answered by the failure mode",
            i64::from(self.source.key_store_health().degraded),
        )?;
        let flushes = self.source.usage_flushes();
        let queries: [(&str, &QueryStats); 2] = [
            (OPERATIONS[0], &s.lookup_queries),
            (OPERATIONS[1], &flushes.queries),
        ];
        {
            let mut m = encoder.encode_descriptor(
                "sluice_key_store_query_duration_seconds",
                "Time of key-store queries, answered or failed, by operation: lookup (a key not in the cache) or usage_flush (a batch of usage counts written)",
                None,
                MetricType::Histogram,
            )?;
            for (operation, q) in queries {
                let h = q.seconds.snapshot("", "");
                let labels = [("operation", operation)];
                m.encode_family(&labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        h.sum, h.count, &h.buckets, None,
                    )?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "sluice_key_store_errors",
                "Failed key-store queries by operation (lookup, usage_flush) and kind (timeout, unavailable, database, corrupt, other)",
                None,
                MetricType::Counter,
            )?;
            for (operation, q) in queries {
                for (kind, n) in ERROR_KINDS.iter().zip(&q.errors) {
                    let labels = [("operation", operation), ("kind", kind)];
                    let e = m.encode_family(&labels)?;
                    ConstCounter::new(n.load(Relaxed)).encode(e)?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "sluice_usage_flushes",
                "Usage flushes that wrote their batch (ok) or failed to (error: the batch is kept, with its flush id, for the next one)",
                None,
                MetricType::Counter,
            )?;
            for (outcome, n) in [("ok", &flushes.ok), ("error", &flushes.failed)] {
                let labels = [("outcome", outcome)];
                let e = m.encode_family(&labels)?;
                ConstCounter::new(n.load(Relaxed)).encode(e)?;
            }
        }
        {
            let lag = self.source.usage_lag_ms();
            #[allow(clippy::cast_precision_loss)]
            let g = ConstGauge::new(lag as f64 / 1000.0);
            let m = encoder.encode_descriptor(
                "sluice_usage_flush_lag_seconds",
                "Age of the oldest usage count not yet written to the key store (0 when none waits)",
                None,
                g.metric_type(),
            )?;
            g.encode(m)?;
        }
        Ok(())
    }
}

/// Adds the key store's metrics to `registry`.
pub fn register_key_store(registry: &mut MetricsRegistry, source: Arc<dyn KeyStoreSource>) {
    registry
        .registry
        .register_collector(Box::new(KeyStoreCollector { source }));
}

/// The service's metrics, ready to render.
#[derive(Debug)]
pub struct MetricsRegistry {
    registry: Registry,
    metrics: Arc<Metrics>,
}

/// Builds the registry for `metrics` and the engine behind `source`.
pub fn registry(metrics: Arc<Metrics>, source: Arc<dyn StatsSource>) -> MetricsRegistry {
    let mut registry = Registry::default();
    registry.register(
        "sluice_config_load_success",
        "Configuration loads applied (start-up and reloads)",
        metrics.config_load_success.clone(),
    );
    registry.register(
        "sluice_config_load_error",
        "Configuration loads rejected; the previous configuration kept serving",
        metrics.config_load_error.clone(),
    );
    registry.register(
        "sluice_key_validations",
        "ValidateKey answers by code",
        metrics.key_validations.clone(),
    );
    registry.register(
        "sluice_admin_requests",
        "AdminService calls by method and gRPC code",
        metrics.admin_requests.clone(),
    );
    registry.register(
        "sluice_authz_checks",
        "Gateway answers (ext_authz Check, /auth) by transport and code",
        metrics.authz_checks.clone(),
    );
    registry.register(
        "sluice_tls_reloads",
        "Changed TLS files re-read, by listener and result (error: the previous certificate kept serving)",
        metrics.tls_reloads.clone(),
    );
    registry.register(
        "sluice_tls_handshake_failures",
        "TLS handshakes refused or abandoned, by listener",
        metrics.tls_handshake_failures.clone(),
    );
    registry.register_collector(Box::new(ServiceCollector {
        metrics: metrics.clone(),
        source,
    }));
    registry.register_collector(Box::new(super::process::ProcessCollector));
    MetricsRegistry { registry, metrics }
}

/// OpenMetrics text for `registry`.
pub fn render(registry: &MetricsRegistry) -> String {
    let mut out = String::with_capacity(8192);
    if prometheus_client::encoding::text::encode(&mut out, &registry.registry).is_err() {
        out.clear();
        return out;
    }
    // The latency histogram (with its exemplars) goes before the end marker.
    let end = out.rfind("# EOF").unwrap_or(out.len());
    let mut histogram = String::with_capacity(2048);
    registry.metrics.latency.encode(
        "sluice_rpc_duration_seconds",
        "Time to answer a ShouldRateLimit call, from request decoded to response built",
        &mut histogram,
    );
    out.insert_str(end, &histogram);
    out
}
