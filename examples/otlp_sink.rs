//! A do-nothing OTLP trace collector for benchmarks: the collector's
//! `TraceService` over gRPC (opentelemetry-proto's generated server, on
//! tonic), which accepts every export, counts its spans and discards them.
//! `scripts/bench-tracing.sh` points sluice at it, so the cost it measures
//! is sluice's (making, batching and sending spans), not a collector's.
//!
//! `cargo run --release --example otlp_sink -- 127.0.0.1:18317 [COUNT_FILE]`
//!
//! Every 200 ms, and once more on SIGTERM or Ctrl-C, it writes the spans
//! and exports received so far to COUNT_FILE (`spans exports`, one line),
//! and prints the totals when it stops.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

#[derive(Debug, Default)]
struct Counts {
    spans: AtomicU64,
    exports: AtomicU64,
}

#[derive(Clone, Debug)]
struct Sink(Arc<Counts>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.spans.fetch_add(spans as u64, Relaxed);
        self.0.exports.fetch_add(1, Relaxed);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn write_counts(file: Option<&PathBuf>, counts: &Counts) {
    let Some(path) = file else { return };
    let line = format!(
        "{} {}\n",
        counts.spans.load(Relaxed),
        counts.exports.load(Relaxed)
    );
    // Written whole under another name, then renamed: a reader never sees
    // half a line.
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, line).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:18317".to_string())
        .parse()?;
    let file = args.next().map(PathBuf::from);
    let counts = Arc::new(Counts::default());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("otlp sink listening on {addr}");

    let ticker = {
        let counts = counts.clone();
        let file = file.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                write_counts(file.as_ref(), &counts);
            }
        })
    };
    let stop = async {
        let terminate = tokio::signal::unix::SignalKind::terminate();
        match tokio::signal::unix::signal(terminate) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Sink(counts.clone())))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), stop)
        .await?;
    ticker.abort();
    write_counts(file.as_ref(), &counts);
    println!(
        "otlp sink: {} spans in {} exports",
        counts.spans.load(Relaxed),
        counts.exports.load(Relaxed)
    );
    Ok(())
}
