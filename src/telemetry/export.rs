//! The bounded queue in front of the OTLP exporter, and its counters.
//!
//! The SDK's batch processor does the batching, timing and export calls;
//! this wrapper bounds how many finished spans may wait for export and
//! counts what happens to each: exported, failed (the export call
//! returned an error or timed out: the collector is down or refused them)
//! or dropped (the queue was full). A span is "queued" from the moment it
//! ends until an export call takes it, so the SDK's own channel, which is
//! as large, never fills and never drops a span uncounted.
//!
//! May depend on: nothing of sluice's own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfig, Span, SpanData, SpanExporter, SpanProcessor};

/// What became of finished, sampled spans.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Handed to an export call that succeeded.
    pub exported: AtomicU64,
    /// Handed to an export call that failed or timed out.
    pub failed: AtomicU64,
    /// Never queued: the queue was full.
    pub dropped: AtomicU64,
    /// Waiting for an export call now.
    pub queued: AtomicUsize,
}

/// The SDK's batch processor with a counted, bounded queue in front.
#[derive(Debug)]
pub struct Bounded {
    inner: BatchSpanProcessor<Tokio>,
    cap: usize,
    stats: Arc<ExportStats>,
}

impl Bounded {
    /// Batches for `exporter` on the current tokio runtime, at most `cap`
    /// spans waiting.
    pub fn new<E>(exporter: E, config: BatchConfig, cap: usize, stats: Arc<ExportStats>) -> Bounded
    where
        E: SpanExporter + Send + Sync + 'static,
    {
        let counted = Counted {
            inner: exporter,
            stats: stats.clone(),
        };
        Bounded {
            inner: BatchSpanProcessor::builder(counted, Tokio)
                .with_batch_config(config)
                .build(),
            cap,
            stats,
        }
    }
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let reserved = self
            .stats
            .queued
            .fetch_update(Relaxed, Relaxed, |q| (q < self.cap).then_some(q + 1));
        if reserved.is_err() {
            self.stats.dropped.fetch_add(1, Relaxed);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter, counting each batch's spans out of the queue and into
/// exported or failed.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    stats: Arc<ExportStats>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        // Saturating: never below zero, whatever the SDK hands us.
        let _ = self
            .stats
            .queued
            .fetch_update(Relaxed, Relaxed, |q| Some(q.saturating_sub(n)));
        // The SDK abandons an export at its timeout by dropping this
        // future: the guard then counts the batch as failed.
        let mut outcome = Outcome {
            spans: u64::try_from(n).unwrap_or(u64::MAX),
            stats: &self.stats,
            ok: false,
        };
        let result = self.inner.export(batch).await;
        outcome.ok = result.is_ok();
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts one export call's spans when the call ends, however it ends.
struct Outcome<'a> {
    spans: u64,
    stats: &'a ExportStats,
    ok: bool,
}

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        let counter = if self.ok {
            &self.stats.exported
        } else {
            &self.stats.failed
        };
        counter.fetch_add(self.spans, Relaxed);
    }
}
