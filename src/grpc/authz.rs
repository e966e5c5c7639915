//! `envoy.service.auth.v3.Authorization/Check` (Envoy's
//! `envoy.filters.http.ext_authz` with a gRPC service): translate the
//! CheckRequest into a gateway request, ask the [`Gate`], translate the
//! answer back.
//!
//! An allow is status OK with `ok_response` (identity headers that replace
//! any the client sent, the key's header or query parameter removed,
//! rate-limit headers for the client) and dynamic metadata (`key_id`,
//! `owner`, `plan`, under Envoy's `envoy.filters.http.ext_authz`). A
//! denial is a non-OK status with `denied_response` (the HTTP status,
//! headers and problem+json body): Envoy sends it as is, whatever its
//! `failure_mode_allow`, which only applies when sluice cannot be reached.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::check_request::{AttributeContext, CheckRequest, HttpRequest};
use super::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, address, header_value_option,
};
use super::pb::envoy::service::auth::v3::authorization_server::Authorization;
use super::pb::envoy::service::auth::v3::{
    CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response,
};
use super::pb::envoy::r#type::v3::HttpStatus;
use super::pb::google::rpc;
use crate::authz::request::{COST, DOMAIN, SCOPES};
use crate::authz::{Answer, Gate, GateRequest, Headers, RouteSettings};
use crate::store::CounterStore;
use crate::telemetry::metrics::Metrics;

/// The ext_authz gRPC service.
#[derive(Debug)]
pub struct AuthzGrpc<S> {
    gate: Arc<Gate<S>>,
    metrics: Arc<Metrics>,
}

impl<S> AuthzGrpc<S> {
    pub fn new(gate: Arc<Gate<S>>, metrics: Arc<Metrics>) -> Self {
        AuthzGrpc { gate, metrics }
    }
}

/// The request's headers: the `headers` map, or `header_map` when Envoy
/// sends raw headers (`encode_raw_headers`), repeats joined by `,`.
enum CheckHeaders<'a> {
    Map(&'a HttpRequest),
    Owned(HashMap<String, String>),
}

impl Headers for CheckHeaders<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        match self {
            CheckHeaders::Map(http) => http.header(name),
            CheckHeaders::Owned(m) => m.get(name).map(String::as_str),
        }
    }
}

fn headers(http: &HttpRequest) -> CheckHeaders<'_> {
    let Some(raw) = http.header_map.as_ref().filter(|m| !m.headers.is_empty()) else {
        return CheckHeaders::Map(http);
    };
    let mut out: HashMap<String, String> = HashMap::with_capacity(raw.headers.len());
    for h in &raw.headers {
        let value = if h.raw_value.is_empty() {
            h.value.as_str()
        } else {
            match std::str::from_utf8(&h.raw_value) {
                Ok(v) => v,
                // Not text: not a key, not a descriptor value.
                Err(_) => continue,
            }
        };
        out.entry(h.key.to_ascii_lowercase())
            .and_modify(|v| {
                v.push(',');
                v.push_str(value);
            })
            .or_insert_with(|| value.to_string());
    }
    CheckHeaders::Owned(out)
}

fn source_address(attrs: &AttributeContext) -> Option<&str> {
    match attrs.source.as_ref()?.address.as_ref()?.address.as_ref()? {
        address::Address::SocketAddress(s) if !s.address.is_empty() => Some(&s.address),
        address::Address::SocketAddress(_) | address::Address::Pipe(_) => None,
    }
}

fn overwrite(name: String, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name,
            value,
            raw_value: Vec::new(),
        }),
        append: None,
        append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        keep_empty_value: false,
    }
}

/// The google.rpc code of a denial, by its HTTP status.
fn rpc_code(status: u16) -> tonic::Code {
    match status {
        400 => tonic::Code::InvalidArgument,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        429 => tonic::Code::ResourceExhausted,
        503 => tonic::Code::Unavailable,
        _ => tonic::Code::Internal,
    }
}

/// The CheckResponse for an answer.
pub fn response(answer: Answer) -> CheckResponse {
    match answer {
        Answer::Allow(a) => CheckResponse {
            status: Some(rpc::Status {
                code: tonic::Code::Ok.into(),
                message: String::new(),
            }),
            dynamic_metadata: Some(
                a.metadata
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            pbjson_types::Value {
                                kind: Some(pbjson_types::value::Kind::StringValue(v)),
                            },
                        )
                    })
                    .collect(),
            ),
            http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                headers: a
                    .set_headers
                    .into_iter()
                    .map(|(k, v)| overwrite(k, v))
                    .collect(),
                headers_to_remove: a.remove_headers,
                response_headers_to_add: a
                    .response_headers
                    .into_iter()
                    .map(|(k, v)| overwrite(k, v))
                    .collect(),
                query_parameters_to_remove: a.remove_query,
            })),
        },
        Answer::Deny(d) => CheckResponse {
            status: Some(rpc::Status {
                code: rpc_code(d.status).into(),
                message: d.code.to_string(),
            }),
            dynamic_metadata: None,
            http_response: Some(check_response::HttpResponse::DeniedResponse(
                DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: i32::from(d.status),
                    }),
                    headers: d
                        .headers
                        .into_iter()
                        .map(|(k, v)| overwrite(k, v))
                        .collect(),
                    body: d.body,
                },
            )),
        },
    }
}

#[tonic::async_trait]
impl<S: CounterStore> Authorization for AuthzGrpc<S> {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let msg = request.into_inner();
        let mut attrs = msg.attributes.unwrap_or_default();
        let http = attrs
            .request
            .take()
            .and_then(|r| r.http)
            .unwrap_or_default();
        let headers = headers(&http);
        let ext = &attrs.context_extensions;
        let req = GateRequest {
            method: &http.method,
            path: &http.path,
            host: &http.host,
            remote_address: source_address(&attrs),
            headers: &headers,
            route: RouteSettings {
                domain: ext.get(DOMAIN).map(String::as_str),
                scopes: ext.get(SCOPES).map(String::as_str),
                cost: ext.get(COST).map(String::as_str),
            },
        };
        let answer = self.gate.check(&req).await;
        self.metrics.record_authz("grpc", answer.code());
        Ok(Response::new(response(answer)))
    }
}
