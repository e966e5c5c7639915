//! A real OTLP trace receiver inside the test: the collector's
//! `TraceService` over gRPC (opentelemetry-proto's generated server, on
//! tonic) and `POST /v1/traces` over HTTP/protobuf, both on free loopback
//! ports, keeping every span it is sent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;

/// One received span, flattened.
#[derive(Clone, Debug)]
pub struct RecvSpan {
    /// `service.name` of the exporting process.
    pub service: String,
    pub resource: HashMap<String, String>,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// OTLP span kind: 1 internal, 2 server, 3 client.
    pub kind: i32,
    pub attrs: HashMap<String, String>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    pub status_message: String,
    /// Events, by name, with their attributes.
    pub events: Vec<(String, HashMap<String, String>)>,
    /// Which transport brought it: "grpc" or "http".
    pub via: &'static str,
}

impl RecvSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).map(String::as_str)
    }
}

pub const SERVER: i32 = 2;
pub const CLIENT: i32 = 3;

fn value(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn map(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value(&kv.value)))
        .collect()
}

fn collect(req: &ExportTraceServiceRequest, via: &'static str, into: &Mutex<Vec<RecvSpan>>) {
    let mut out = into.lock().unwrap();
    for rs in &req.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| map(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                out.push(RecvSpan {
                    service: service.clone(),
                    resource: resource.clone(),
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent_span_id: hex::encode(&s.parent_span_id),
                    name: s.name.clone(),
                    kind: s.kind,
                    attrs: map(&s.attributes),
                    status: s.status.as_ref().map_or(0, |st| st.code),
                    status_message: s
                        .status
                        .as_ref()
                        .map(|st| st.message.clone())
                        .unwrap_or_default(),
                    events: s
                        .events
                        .iter()
                        .map(|e| (e.name.clone(), map(&e.attributes)))
                        .collect(),
                    via,
                });
            }
        }
    }
}

#[derive(Clone)]
struct Grpc(Arc<Mutex<Vec<RecvSpan>>>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        collect(request.get_ref(), "grpc", &self.0);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The receiver; its servers stop when it is dropped.
pub struct Receiver {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    spans: Arc<Mutex<Vec<RecvSpan>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc.local_addr().unwrap();
        let service = TraceServiceServer::new(Grpc(spans.clone()));
        let grpc_task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(grpc))
                .await;
        });
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        let store = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let store = store.clone();
                async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(req) => {
                            collect(&req, "http", &store);
                            let resp = ExportTraceServiceResponse {
                                partial_success: None,
                            };
                            (
                                axum::http::StatusCode::OK,
                                [("content-type", "application/x-protobuf")],
                                resp.encode_to_vec(),
                            )
                        }
                        Err(_) => (
                            axum::http::StatusCode::BAD_REQUEST,
                            [("content-type", "text/plain")],
                            b"not an ExportTraceServiceRequest".to_vec(),
                        ),
                    }
                }
            }),
        );
        let http_task = tokio::spawn(async move {
            let _ = axum::serve(http, app).await;
        });
        Receiver {
            grpc_addr,
            http_addr,
            spans,
            tasks: vec![grpc_task, http_task],
        }
    }

    /// `http://127.0.0.1:<grpc port>`.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// `http://127.0.0.1:<http port>` (the base; exporters add /v1/traces).
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    pub fn spans(&self) -> Vec<RecvSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (bounded) until `done` holds for the spans received, and
    /// returns them; panics with what arrived if it never does.
    pub async fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        done: impl Fn(&[RecvSpan]) -> bool,
    ) -> Vec<RecvSpan> {
        let deadline = Instant::now() + limit;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {limit:?}; received:\n{spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
