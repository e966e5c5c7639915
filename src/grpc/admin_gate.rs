//! The one gate every `sluice.v1.AdminService` call passes: a wrapper
//! around the generated server that, before the handler sees the call,
//! looks the method up in [`METHODS`] (method → the scope it needs), checks
//! the caller's failed-authentication allowance, the bearer token and its
//! scope, and the token subject's admin-call allowance, then hands the
//! handler the [`Actor`] in the request's extensions.
//!
//! A method missing from [`METHODS`] is refused PERMISSION_DENIED before
//! any token is looked at, so a new RPC cannot be served until it is given
//! a scope; a test checks the table against the service descriptor.
//!
//! Failed authentications (UNAUTHENTICATED) are counted per caller (the
//! `--caller-id-header` entry, else the peer address); past
//! `--admin-auth-failures-per-minute` every admin call of that caller is
//! answered RESOURCE_EXHAUSTED until its minute ends, without checking
//! the token (a caller trying tokens costs no signature checks then).
//!
//! May depend on: `auth`, `keys` (the guard, [`Actor`]), `service` (the
//! caller id); tonic and http.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::server::TcpConnectInfo;

use crate::auth::{AdminAuth, AuthError, Scope};
use crate::keys::KeyAdmin;
use crate::keys::model::Actor;
use crate::service::CallerSource;

/// The path prefix of every AdminService method.
pub const SERVICE_PREFIX: &str = "/sluice.v1.AdminService/";

/// Every AdminService method and the scope it needs. Exhaustive: a method
/// not listed here is never served (see the module doc).
pub const METHODS: [(&str, Scope); 13] = [
    ("CreateKey", Scope::KeysWrite),
    ("GetKey", Scope::KeysRead),
    ("ListKeys", Scope::KeysRead),
    ("UpdateKey", Scope::KeysWrite),
    ("RevokeKey", Scope::KeysWrite),
    ("RotateKey", Scope::KeysWrite),
    ("CreatePlan", Scope::PlansWrite),
    ("GetPlan", Scope::PlansRead),
    ("ListPlans", Scope::PlansRead),
    ("UpdatePlan", Scope::PlansWrite),
    ("DeletePlan", Scope::PlansWrite),
    ("GetUsage", Scope::UsageRead),
    ("ListAuditEvents", Scope::AuditRead),
];

/// The scope the call to `path` (`/sluice.v1.AdminService/Method`) needs;
/// `None` for a method the table does not know.
pub fn scope_of(path: &str) -> Option<Scope> {
    let method = path.strip_prefix(SERVICE_PREFIX)?;
    METHODS
        .iter()
        .find(|(name, _)| *name == method)
        .map(|(_, scope)| *scope)
}

/// The acting [`Actor`] of an admin call the gate let through.
///
/// # Errors
/// PERMISSION_DENIED when the call did not pass the gate (never, when
/// the service is served wrapped in [`AdminGate`]).
pub fn actor<T>(request: &tonic::Request<T>) -> Result<Actor, Status> {
    request
        .extensions()
        .get::<Actor>()
        .cloned()
        .ok_or_else(|| Status::permission_denied("the call was not authorized"))
}

/// `S` (the generated AdminService server), with every call authorized.
#[derive(Clone, Debug)]
pub struct AdminGate<S> {
    inner: S,
    auth: Arc<AdminAuth>,
    keys: Arc<KeyAdmin>,
    caller: Arc<CallerSource>,
}

impl<S> AdminGate<S> {
    pub fn new(
        inner: S,
        auth: Arc<AdminAuth>,
        keys: Arc<KeyAdmin>,
        caller: Arc<CallerSource>,
    ) -> AdminGate<S> {
        AdminGate {
            inner,
            auth,
            keys,
            caller,
        }
    }

    /// Who may do what: the [`Actor`] of an allowed call, else its refusal.
    fn authorize(&self, head: &http::request::Parts) -> Result<Actor, Status> {
        let path = head.uri.path();
        let Some(scope) = scope_of(path) else {
            return Err(Status::permission_denied(format!(
                "{path} has no scope in sluice's admin method table; refused"
            )));
        };
        let guard = self.keys.guard();
        let peer = head
            .extensions
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .map(|a| a.ip());
        let caller = caller_id(&self.caller, &head.headers, peer);
        if let Some(c) = &caller
            && guard.admin_auth_exhausted(c)
        {
            return Err(Status::resource_exhausted(format!(
                "too many failed admin authentications from this caller (at most {} per minute, --admin-auth-failures-per-minute); try again in a minute",
                guard.admin_auth_failures_allowed().unwrap_or(0)
            )));
        }
        let header = head
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        let claims = self.auth.check(header, scope).map_err(|e| match e {
            AuthError::NotConfigured => Status::failed_precondition(e.to_string()),
            AuthError::Unauthenticated(_) => {
                if let Some(c) = &caller {
                    guard.record_admin_auth_failure(c);
                }
                Status::unauthenticated(e.to_string())
            }
            AuthError::PermissionDenied { .. } => Status::permission_denied(e.to_string()),
        })?;
        if !guard.admit_admin(&claims.sub) {
            return Err(Status::resource_exhausted(
                "too many admin calls for this token subject; try again in a minute",
            ));
        }
        let request_id = head
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 128)
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
        Ok(Actor {
            subject: claims.sub,
            request_id,
        })
    }
}

/// The caller an admin call is counted against.
fn caller_id(
    source: &CallerSource,
    headers: &http::HeaderMap,
    peer: Option<IpAddr>,
) -> Option<String> {
    let header = source
        .header()
        .and_then(|h| headers.get(h))
        .map(http::HeaderValue::as_bytes);
    source.caller_id(header, peer)
}

impl<S: NamedService> NamedService for AdminGate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower_service::Service<http::Request<B>> for AdminGate<S>
where
    S: tower_service::Service<
            http::Request<B>,
            Response = http::Response<Body>,
            Error = Infallible,
        >,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Either<Ready<Result<http::Response<Body>, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (mut head, body) = req.into_parts();
        match self.authorize(&head) {
            Ok(actor) => {
                head.extensions.insert(actor);
                Either::Right(self.inner.call(http::Request::from_parts(head, body)))
            }
            Err(status) => Either::Left(ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// The AdminService methods, from the descriptor the server is built
    /// from: a new RPC appears here without anyone listing it.
    fn described_methods() -> Vec<String> {
        let set = prost_types::FileDescriptorSet::decode(crate::grpc::pb::FILE_DESCRIPTOR_SET)
            .expect("the compiled descriptor set decodes");
        let methods: Vec<String> = set
            .file
            .iter()
            .filter(|f| f.package() == "sluice.v1")
            .flat_map(|f| f.service.iter())
            .filter(|s| s.name() == "AdminService")
            .flat_map(|s| s.method.iter().map(|m| m.name().to_string()))
            .collect();
        assert!(!methods.is_empty(), "no AdminService in the descriptor");
        methods
    }

    #[test]
    fn every_admin_method_has_a_scope_and_the_table_lists_nothing_else() {
        let described = described_methods();
        for m in &described {
            assert!(
                scope_of(&format!("{SERVICE_PREFIX}{m}")).is_some(),
                "AdminService/{m} has no scope in METHODS: it would be refused"
            );
        }
        for (name, _) in METHODS {
            assert!(
                described.iter().any(|m| m == name),
                "METHODS lists {name}, which AdminService does not have"
            );
        }
        assert_eq!(described.len(), METHODS.len());
    }

    #[test]
    fn the_service_name_matches_the_prefix() {
        use crate::grpc::pb::sluice::v1::admin_service_server::AdminServiceServer;
        let name = <AdminServiceServer<crate::grpc::AdminGrpc> as NamedService>::NAME;
        assert_eq!(SERVICE_PREFIX, format!("/{name}/"));
    }

    #[test]
    fn unknown_paths_have_no_scope() {
        for p in [
            "/sluice.v1.AdminService/DropEverything",
            "/sluice.v1.AdminService/",
            "/sluice.v1.AdminService/createkey",
            "/sluice.v1.KeyService/CreateKey",
            "/CreateKey",
            "",
        ] {
            assert_eq!(scope_of(p), None, "{p}");
        }
        assert_eq!(
            scope_of("/sluice.v1.AdminService/ListAuditEvents"),
            Some(Scope::AuditRead)
        );
    }
}
