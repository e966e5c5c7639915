//! `GET|POST /auth`: forward auth for proxies that ask a subrequest
//! (nginx `auth_request`, Traefik `ForwardAuth`, Caddy `forward_auth`,
//! Envoy's ext_authz with an HTTP service). The same decision as the
//! gRPC `Check`; translate the subrequest, ask the [`Gate`], answer.
//!
//! * The original request: method from `X-Original-Method` /
//!   `X-Forwarded-Method`, path from `X-Original-URI` / `X-Forwarded-Uri`
//!   (or, for `/auth/<path>` as Envoy's HTTP service sends it, the rest of
//!   the path), host from `X-Forwarded-Host` / `Host`, the client from
//!   `X-Real-IP`, else the last `X-Forwarded-For` entry (the one the proxy
//!   added). Never the peer address: that is the proxy, shared by every
//!   client.
//! * Route settings: `sluice.domain`, `sluice.scopes`, `sluice.cost` as
//!   query parameters of `/auth` itself (set in the proxy's config, never
//!   the client's query); `/auth/<path>` takes none.
//! * 200 with the identity headers (and rate-limit headers, and
//!   `x-envoy-auth-headers-to-remove` naming the key's header), or
//!   401/403/429/503 with the problem body and headers, the body repeated
//!   in `x-sluice-problem` for proxies that drop a subrequest's body
//!   (nginx).

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::HttpState;
use crate::authz::request::{COST, DOMAIN, SCOPES, query_value};
use crate::authz::{Answer, GateRequest, Headers, RouteSettings};
use crate::store::CounterStore;

struct RequestHeaders<'a>(&'a HeaderMap);

impl Headers for RequestHeaders<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The client: `X-Real-IP`, else the last `X-Forwarded-For` entry.
fn client(headers: &HeaderMap) -> Option<&str> {
    if let Some(ip) = headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        return Some(ip);
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|v| !v.is_empty())
}

fn first<'a>(h: &'a RequestHeaders<'_>, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| h.get(n).map(str::trim).filter(|v| !v.is_empty()))
}

/// `/auth`, route settings from its own query.
pub async fn auth<S: CounterStore>(
    State(st): State<Arc<HttpState<S>>>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let own = format!("/auth?{}", query.as_deref().unwrap_or(""));
    let domain = query_value(&own, DOMAIN);
    let scopes = query_value(&own, SCOPES);
    let cost = query_value(&own, COST);
    let route = RouteSettings {
        domain: domain.as_deref(),
        scopes: scopes.as_deref(),
        cost: cost.as_deref(),
    };
    decide(&st, &method, None, route, &headers).await
}

/// `/auth/<path>`: the original path is the rest (Envoy's HTTP service
/// appends it to its `path_prefix`); no route settings.
pub async fn auth_path<S: CounterStore>(
    State(st): State<Arc<HttpState<S>>>,
    method: Method,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let original = match query {
        Some(q) => format!("/{rest}?{q}"),
        None => format!("/{rest}"),
    };
    decide(
        &st,
        &method,
        Some(&original),
        RouteSettings::default(),
        &headers,
    )
    .await
}

async fn decide<S: CounterStore>(
    st: &HttpState<S>,
    method: &Method,
    suffix_path: Option<&str>,
    route: RouteSettings<'_>,
    headers: &HeaderMap,
) -> Response {
    let h = RequestHeaders(headers);
    let req = GateRequest {
        method: first(&h, &["x-original-method", "x-forwarded-method"]).unwrap_or(method.as_str()),
        path: first(&h, &["x-original-uri", "x-forwarded-uri"])
            .or(suffix_path)
            .unwrap_or("/"),
        host: first(&h, &["x-forwarded-host", "host"]).unwrap_or(""),
        remote_address: client(headers),
        headers: &h,
        route,
    };
    let answer = st.gate.check(&req).await;
    st.metrics.record_authz("http", answer.code());
    respond(answer)
}

fn push(out: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
        out.insert(n, v);
    }
}

/// The HTTP answer.
pub fn respond(answer: Answer) -> Response {
    let mut headers = HeaderMap::new();
    match answer {
        Answer::Allow(a) => {
            for (k, v) in a.set_headers.iter().chain(&a.response_headers) {
                push(&mut headers, k, v);
            }
            let removed: Vec<&str> = a
                .remove_headers
                .iter()
                .map(String::as_str)
                .filter(|h| !a.set_headers.iter().any(|(k, _)| k == h))
                .collect();
            if !removed.is_empty() {
                push(
                    &mut headers,
                    "x-envoy-auth-headers-to-remove",
                    &removed.join(", "),
                );
            }
            (StatusCode::OK, headers).into_response()
        }
        Answer::Deny(d) => {
            for (k, v) in &d.headers {
                push(&mut headers, k, v);
            }
            // nginx's auth_request drops the subrequest's body: the problem
            // travels in a header too, for `auth_request_set`.
            push(&mut headers, "x-sluice-problem", &d.body);
            let status = StatusCode::from_u16(d.status).unwrap_or(StatusCode::FORBIDDEN);
            (status, headers, d.body).into_response()
        }
    }
}
