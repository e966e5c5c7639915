//! The HTTP side: `/healthz`, `/readyz`, `/metrics`, `POST /json`, which
//! takes a protojson `RateLimitRequest` and answers a protojson
//! `RateLimitResponse` (200 OK, 429 over limit, 400 bad input), as
//! envoyproxy/ratelimit offers, and forward auth on `/auth` ([`auth`]).
//! `/json` asks the same keyed-decision service as gRPC's ShouldRateLimit
//! ([`crate::service::Decider`]), so API keys count the same way; `/auth`
//! asks the gateway's [`Gate`], which decides through that service too.
//!
//! The decision routes (`POST /json`, `/auth`) are admitted like gRPC
//! decision calls ([`admission`]): past `--max-concurrent-requests` in
//! flight they are answered 503 at once.
//!
//! May depend on: `service`, `engine` (its types), `authz`, `grpc::{pb,
//! convert, rls::answer_response}` (the protocol types), `crate::admission`,
//! `shutdown` (readiness), `telemetry`.

pub mod admission;
pub mod auth;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};

use crate::authz::Gate;
use crate::engine::{Code, DecideError};
use crate::grpc::convert;
use crate::grpc::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use crate::grpc::rls::answer_response;
use crate::service::{CallerSource, Decider};
use crate::shutdown::Shutdown;
use crate::store::CounterStore;
use crate::telemetry::metrics::{self, Metrics, Outcome};
use crate::telemetry::throttle::LogThrottle;

/// What the handlers share.
#[derive(Debug)]
pub struct HttpState<S> {
    pub decider: Arc<Decider<S>>,
    /// Who is calling `/json`: a configured header, else the peer.
    pub caller: Arc<CallerSource>,
    /// Forward auth (`/auth`).
    pub gate: Arc<Gate<S>>,
    pub metrics: Arc<Metrics>,
    pub registry: metrics::MetricsRegistry,
    /// A configuration has been loaded.
    pub ready: Arc<AtomicBool>,
    /// Readiness fails from the moment shutdown begins.
    pub shutdown: Shutdown,
    /// The bound on decision calls in flight, shared with gRPC.
    pub admission: crate::admission::Admission,
}

/// The HTTP routes.
pub fn router<S: CounterStore>(state: Arc<HttpState<S>>) -> Router {
    let a = state.admission.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<S>))
        .route("/metrics", get(metrics_text::<S>))
        .route(
            "/json",
            post(json::<S>).layer(from_fn_with_state(a.clone(), admission::json)),
        )
        .route(
            "/auth",
            any(auth::auth::<S>).layer(from_fn_with_state(a.clone(), admission::auth)),
        )
        .route(
            "/auth/{*path}",
            any(auth::auth_path::<S>).layer(from_fn_with_state(a, admission::auth)),
        )
        .with_state(state)
}

async fn readyz<S: CounterStore>(State(st): State<Arc<HttpState<S>>>) -> Response {
    if st.shutdown.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else if !st.ready.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "no configuration loaded\n").into_response()
    } else {
        // A shared store that is down does not make sluice unready: the
        // failure mode answers for it (see `store::resilient`); the same
        // holds for the key store (`--key-store-failure-mode`).
        let store = st.decider.engine().store().health();
        let keys = st.decider.key_store_health();
        let mut problems = Vec::new();
        if store.degraded {
            problems.push(
                "the counter store is not deciding every check; the failure mode answers for it",
            );
        }
        if keys.degraded {
            problems.push("key store unreachable; --key-store-failure-mode answers for it");
        }
        match (store.ready && keys.ready, problems.is_empty()) {
            (false, _) => {
                let what = if store.ready {
                    "key store"
                } else {
                    "counter store"
                };
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{what} unreachable\n"),
                )
                    .into_response()
            }
            (true, false) => (
                StatusCode::OK,
                format!("ready (degraded: {})\n", problems.join("; ")),
            )
                .into_response(),
            (true, true) => (StatusCode::OK, "ready\n").into_response(),
        }
    }
}

async fn metrics_text<S: CounterStore>(State(st): State<Arc<HttpState<S>>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics::render(&st.registry),
    )
        .into_response()
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

async fn json<S: CounterStore>(
    State(st): State<Arc<HttpState<S>>>,
    extensions: Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let msg: RateLimitRequest = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            st.metrics.record_rpc(started, Outcome::Error);
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("body is not a protojson RateLimitRequest: {e}"),
            );
        }
    };
    let caller = || {
        let header = st
            .caller
            .header()
            .and_then(|h| headers.get(h))
            .map(|v| v.as_bytes());
        let peer = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        st.caller.caller_id(header, peer)
    };
    match st
        .decider
        .should_rate_limit(convert::request(&msg), caller)
        .await
    {
        Ok(answer) => {
            let (status, outcome) = match answer.decision.overall {
                Code::Ok => (StatusCode::OK, Outcome::Ok),
                Code::OverLimit => (StatusCode::TOO_MANY_REQUESTS, Outcome::OverLimit),
            };
            st.metrics.record_rpc(started, outcome);
            (status, axum::Json(answer_response(answer))).into_response()
        }
        Err(DecideError::Invalid(e)) => {
            st.metrics.record_rpc(started, Outcome::Error);
            json_error(StatusCode::BAD_REQUEST, &e.to_string())
        }
        Err(DecideError::Store(e)) => {
            st.metrics.record_rpc(started, Outcome::Error);
            static FAILED: LogThrottle = LogThrottle::new();
            if let Some(r) = FAILED.admit() {
                tracing::warn!(error = %e, occurrences = r.count, repeated = %r, "counter store failed");
            }
            json_error(StatusCode::SERVICE_UNAVAILABLE, "counter store unavailable")
        }
    }
}
