//! The HTTP side: `/healthz`, `/readyz`, `/metrics`, `POST /json`, which
//! takes a protojson `RateLimitRequest` and answers a protojson
//! `RateLimitResponse` (200 OK, 429 over limit, 400 bad input), as
//! envoyproxy/ratelimit offers, and forward auth on `/auth` ([`auth`]).
//!
//! May depend on: `engine`, `authz`, `grpc::{pb, convert}` (the protocol
//! types), `shutdown` (readiness), `telemetry`.

pub mod auth;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};

use crate::authz::Gate;
use crate::engine::{Code, DecideError, Engine};
use crate::grpc::convert;
use crate::grpc::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use crate::shutdown::Shutdown;
use crate::store::CounterStore;
use crate::telemetry::metrics::{self, Metrics, Outcome};

/// What the handlers share.
#[derive(Debug)]
pub struct HttpState<S> {
    pub engine: Arc<Engine<S>>,
    /// Forward auth (`/auth`).
    pub gate: Arc<Gate<S>>,
    pub metrics: Arc<Metrics>,
    pub registry: metrics::MetricsRegistry,
    /// A configuration has been loaded.
    pub ready: Arc<AtomicBool>,
    /// Readiness fails from the moment shutdown begins.
    pub shutdown: Shutdown,
}

/// The HTTP routes.
pub fn router<S: CounterStore>(state: Arc<HttpState<S>>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<S>))
        .route("/metrics", get(metrics_text::<S>))
        .route("/json", post(json::<S>))
        .route("/auth", any(auth::auth::<S>))
        .route("/auth/{*path}", any(auth::auth_path::<S>))
        .with_state(state)
}

async fn readyz<S: CounterStore>(State(st): State<Arc<HttpState<S>>>) -> Response {
    if st.shutdown.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else if !st.ready.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "no configuration loaded\n").into_response()
    } else {
        // A shared store that is down does not make sluice unready: the
        // failure mode answers for it (see `store::resilient`).
        let store = st.engine.store().health();
        match (store.ready, store.degraded) {
            (false, _) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "counter store unreachable\n",
            )
                .into_response(),
            (true, true) => (
                StatusCode::OK,
                "ready (degraded: the counter store is not deciding every check; the failure mode answers for it)\n",
            )
                .into_response(),
            (true, false) => (StatusCode::OK, "ready\n").into_response(),
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

async fn json<S: CounterStore>(State(st): State<Arc<HttpState<S>>>, body: Bytes) -> Response {
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
    match st.engine.decide(&convert::request(&msg)).await {
        Ok(decision) => {
            let (status, outcome) = match decision.overall {
                Code::Ok => (StatusCode::OK, Outcome::Ok),
                Code::OverLimit => (StatusCode::TOO_MANY_REQUESTS, Outcome::OverLimit),
            };
            st.metrics.record_rpc(started, outcome);
            (status, axum::Json(convert::response(decision))).into_response()
        }
        Err(DecideError::Invalid(e)) => {
            st.metrics.record_rpc(started, Outcome::Error);
            json_error(StatusCode::BAD_REQUEST, &e.to_string())
        }
        Err(DecideError::Store(e)) => {
            st.metrics.record_rpc(started, Outcome::Error);
            tracing::warn!(error = %e, "counter store failed");
            json_error(StatusCode::SERVICE_UNAVAILABLE, "counter store unavailable")
        }
    }
}
