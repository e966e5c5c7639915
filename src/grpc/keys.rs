//! `sluice.v1.KeyService/ValidateKey`: translate, ask the key resolver,
//! translate back.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb::sluice::v1 as pb;
use super::pb::sluice::v1::key_service_server::KeyService;
use super::status::key_status;
use crate::keys::{LimitReport, Resolver, Verdict};
use crate::service::CallerSource;
use crate::store::CounterStore;
use crate::telemetry::metrics::Metrics;

/// The key-validation gRPC service.
#[derive(Debug)]
pub struct KeyGrpc<S> {
    keys: Arc<Resolver<S>>,
    metrics: Arc<Metrics>,
    caller: Arc<CallerSource>,
}

impl<S> KeyGrpc<S> {
    pub fn new(keys: Arc<Resolver<S>>, metrics: Arc<Metrics>, caller: Arc<CallerSource>) -> Self {
        KeyGrpc {
            keys,
            metrics,
            caller,
        }
    }

    fn count(&self, code: &'static str) {
        self.metrics
            .key_validations
            .get_or_create(&vec![("code", code)])
            .inc();
    }
}

pub(crate) fn code(v: Verdict) -> pb::ValidationCode {
    match v {
        Verdict::Valid => pb::ValidationCode::Valid,
        Verdict::NotFound => pb::ValidationCode::NotFound,
        Verdict::Disabled => pb::ValidationCode::Disabled,
        Verdict::Expired => pb::ValidationCode::Expired,
        Verdict::Revoked => pb::ValidationCode::Revoked,
        Verdict::InsufficientScope => pb::ValidationCode::InsufficientScope,
        Verdict::RateLimited => pb::ValidationCode::RateLimited,
        Verdict::UsageExceeded => pb::ValidationCode::UsageExceeded,
    }
}

fn limit_status(r: &LimitReport) -> pb::LimitStatus {
    pb::LimitStatus {
        name: r.name.clone(),
        limit: r.limit,
        remaining: r.remaining,
        reset_seconds: r.reset_seconds,
        exceeded: r.exceeded,
    }
}

#[tonic::async_trait]
impl<S: CounterStore> KeyService for KeyGrpc<S> {
    async fn validate_key(
        &self,
        request: Request<pb::ValidateKeyRequest>,
    ) -> Result<Response<pb::ValidateKeyResponse>, Status> {
        // Behind a proxy the peer is the proxy: a configured header
        // names the caller instead.
        let caller = super::rls::caller_id(&self.caller, &request);
        let msg = request.into_inner();
        let v = self
            .keys
            .validate(
                &msg.key,
                msg.cost.unwrap_or(0),
                &msg.required_scopes,
                caller.as_deref(),
            )
            .await
            .map_err(|e| {
                self.count("ERROR");
                key_status(&e)
            })?;
        self.count(code(v.verdict).as_str_name());
        let mut out = pb::ValidateKeyResponse {
            valid: v.verdict == Verdict::Valid,
            code: code(v.verdict).into(),
            limits: v.limits.iter().map(limit_status).collect(),
            ..Default::default()
        };
        if let Some(k) = &v.key {
            let key = &k.key;
            out.key_id.clone_from(&key.id);
            out.owner_id.clone_from(&key.owner_id);
            out.name.clone_from(&key.name);
            out.plan.clone_from(&key.plan);
            out.scopes.clone_from(&key.scopes);
            out.metadata = Some(super::admin::to_struct(&key.metadata));
            out.expires_at = key.expires_at.map(super::admin::timestamp);
        }
        Ok(Response::new(out))
    }
}
