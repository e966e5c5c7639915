//! The gRPC observation layer, in front of every service: while tracing is
//! on, one SERVER span per RPC, continued from the caller's trace context
//! (W3C, B3, baggage: whatever the installed propagator reads), named and
//! attributed after the OpenTelemetry RPC conventions; and always, the
//! count of AdminService calls by method and code.
//!
//! The gRPC code is read where the server writes it: the response headers
//! of a trailers-only answer, else the trailers at the end of the body, so
//! the span ends when the answer has been sent. A call whose body is
//! dropped before its trailers (the client went away) ends CANCELLED.
//!
//! With tracing off, a call that is not an admin call goes through with
//! one relaxed load and a path prefix test: no span, no lookup.
//!
//! May depend on: `telemetry`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use opentelemetry::propagation::Extractor;
use prost::Message as _;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::telemetry::metrics::Metrics;
use crate::telemetry::otel;
use crate::telemetry::trace::{fields, truncate};

const ADMIN_PREFIX: &str = "/sluice.v1.AdminService/";
/// Health checks (probes, Envoy's health checker) are not traced.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";
/// What `rpc.method` says of a method the server does not define.
const OTHER: &str = "_OTHER";

/// Paths (`/package.Service/Method`) of every method served, mapped to
/// their fully qualified names (`package.Service/Method`).
#[derive(Debug, Default)]
pub struct Methods(HashMap<Box<str>, Arc<str>>);

impl Methods {
    /// Every method of the services described by these encoded
    /// `FileDescriptorSet`s; sets that do not decode are skipped.
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Methods {
        let mut map = HashMap::new();
        for set in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = service.name.unwrap_or_default();
                    for method in service.method {
                        let qualified = if package.is_empty() {
                            format!("{service_name}/{}", method.name.unwrap_or_default())
                        } else {
                            format!(
                                "{package}.{service_name}/{}",
                                method.name.unwrap_or_default()
                            )
                        };
                        map.insert(
                            format!("/{qualified}").into_boxed_str(),
                            Arc::from(qualified),
                        );
                    }
                }
            }
        }
        Methods(map)
    }

    /// The methods sluice serves: rate limit, keys, admin, health and
    /// reflection.
    pub fn served() -> Methods {
        Methods::from_descriptor_sets(&[
            super::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ])
    }

    /// The fully qualified name of the method at `path`.
    pub fn get(&self, path: &str) -> Option<&Arc<str>> {
        self.0.get(path)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Names of the gRPC codes, as `rpc.response.status_code` and the
/// `code` label write them.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// Whether a code is a server error (span status ERROR), per the gRPC
/// semantic conventions for SERVER spans.
fn is_server_error(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// The layer; see the module docs.
#[derive(Clone, Debug)]
pub struct ObserveLayer {
    methods: Arc<Methods>,
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    pub fn new(metrics: Arc<Metrics>) -> ObserveLayer {
        ObserveLayer {
            methods: Arc::new(Methods::served()),
            metrics,
        }
    }
}

impl<S> tower_layer::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service the layer wraps around the router.
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

/// What is known of a call until its code is.
#[derive(Debug)]
struct Call {
    span: Option<Span>,
    /// `Some` for AdminService calls: the method label.
    admin: Option<Arc<str>>,
    metrics: Arc<Metrics>,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: i32) {
        if self.done {
            return;
        }
        self.done = true;
        let name = code_name(code);
        if let Some(span) = &self.span {
            span.record(fields::RPC_RESPONSE_STATUS_CODE, name);
            if is_server_error(code) {
                span.record("otel.status_code", "error");
                span.record(fields::ERROR_TYPE, name);
            }
        }
        if let Some(method) = &self.admin {
            self.metrics
                .admin_requests
                .get_or_create(&vec![
                    ("method", method.to_string()),
                    ("code", name.to_string()),
                ])
                .inc();
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // The answer was abandoned before its status was written.
        self.finish(1);
    }
}

/// Reads a caller's trace context from request headers.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The SERVER span of a call to `path`, child of the caller's context.
fn server_span(methods: &Methods, headers: &http::HeaderMap, path: &str) -> Span {
    let method = methods.get(path);
    let name: &str = method.map_or("grpc", |m| m);
    let span = tracing::info_span!(
        target: "sluice::rpc",
        "rpc",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system.name = "grpc",
        rpc.method = method.map_or(OTHER, |m| &**m),
        rpc.method_original = Empty,
        rpc.response.status_code = Empty,
        error.type = Empty,
        sluice.domain = Empty,
        sluice.descriptors = Empty,
        sluice.code = Empty,
        sluice.over_limit_rules = Empty,
        sluice.descriptor_entries = Empty,
    );
    if method.is_none() {
        span.record(
            fields::RPC_METHOD_ORIGINAL,
            truncate(path.trim_start_matches('/'), 128),
        );
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    // Fails only without the OpenTelemetry layer, i.e. never while on.
    let _ = span.set_parent(parent);
    span
}

impl<S, B, R> tower_service::Service<http::Request<B>> for Observe<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = http::Response<ObservedBody<R>>;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let admin = path.starts_with(ADMIN_PREFIX);
        let traced = otel::enabled() && !path.starts_with(HEALTH_PREFIX);
        if !admin && !traced {
            return ObserveFuture {
                inner: self.inner.call(req),
                call: None,
            };
        }
        let methods = &self.layer.methods;
        let span = traced.then(|| server_span(methods, req.headers(), path));
        let admin = admin.then(|| {
            methods
                .get(path)
                .map_or_else(|| Arc::from(OTHER), |m| m.clone())
        });
        let inner = match &span {
            Some(s) => s.in_scope(|| self.inner.call(req)),
            None => self.inner.call(req),
        };
        ObserveFuture {
            inner,
            call: Some(Call {
                span,
                admin,
                metrics: self.layer.metrics.clone(),
                done: false,
            }),
        }
    }
}

/// The code in a `grpc-status` header or trailer.
fn status_in(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

pin_project_lite::pin_project! {
    /// The response future, polled inside the call's span.
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, R, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = Result<http::Response<ObservedBody<R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this
                .call
                .as_ref()
                .and_then(|c| c.span.as_ref())
                .map(Span::enter);
            ready!(this.inner.poll(cx))
        };
        let Some(mut call) = this.call.take() else {
            return Poll::Ready(result.map(|r| r.map(ObservedBody::plain)));
        };
        Poll::Ready(match result {
            Ok(response) => {
                if let Some(code) = status_in(response.headers()) {
                    // Trailers-only answer: the code is already known.
                    call.finish(code);
                    Ok(response.map(ObservedBody::plain))
                } else {
                    Ok(response.map(|body| ObservedBody {
                        inner: body,
                        call: Some(call),
                    }))
                }
            }
            Err(e) => {
                call.finish(2);
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// The response body, watched for the trailers that carry the code.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B> ObservedBody<B> {
    fn plain(inner: B) -> ObservedBody<B> {
        ObservedBody { inner, call: None }
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(call) = this.call.as_mut() {
            match &frame {
                Some(Ok(f)) => {
                    if let Some(code) = f.trailers_ref().and_then(status_in) {
                        call.finish(code);
                        *this.call = None;
                    }
                }
                // The stream broke, or ended without a status.
                Some(Err(_)) | None => {
                    call.finish(2);
                    *this.call = None;
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_method_is_known() {
        let m = Methods::served();
        for path in [
            "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
            "/sluice.v1.KeyService/ValidateKey",
            "/sluice.v1.AdminService/CreateKey",
            "/sluice.v1.AdminService/ListAuditEvents",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(
                m.get(path).map(|s| &**s),
                Some(&path[1..]),
                "{path} missing"
            );
        }
        assert!(m.get("/sluice.v1.AdminService/Nope").is_none());
    }

    #[test]
    fn code_names_follow_grpc() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(8), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(99), "UNKNOWN");
        assert!(is_server_error(14) && !is_server_error(3) && !is_server_error(0));
    }
}
