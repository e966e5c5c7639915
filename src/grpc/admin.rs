//! `sluice.v1.AdminService`: keys, plans, usage and audit over gRPC.
//!
//! Every call reaches a handler only through [`super::admin_gate`], which
//! authorizes it by one method → scope table and hands over the
//! [`Actor`]; a handler translates the call into the key admin's types;
//! every field problem comes back as INVALID_ARGUMENT naming the field.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::admin_gate::actor;
use super::pb::sluice::v1 as pb;
use super::pb::sluice::v1::admin_service_server::AdminService;
use super::status::key_status;
use crate::core::limit::Algorithm;
use crate::core::unit::Unit;
use crate::keys::model::{
    ApiKey, AuditEvent, KeyState, Millis, Plan, PlanLimit, Quota, UsageDay, Window,
};
use crate::keys::repo::{KeyChanges, KeyFilter};
use crate::keys::{KeyAdmin, KeyError, NewKey, PlanDraft, validate};

/// The admin gRPC service.
#[derive(Debug)]
pub struct AdminGrpc {
    keys: Arc<KeyAdmin>,
}

impl AdminGrpc {
    pub fn new(keys: Arc<KeyAdmin>) -> Self {
        AdminGrpc { keys }
    }
}

fn invalid(field: &str, problem: impl Into<String>) -> Status {
    key_status(&KeyError::Invalid {
        field: field.into(),
        problem: problem.into(),
    })
}

// ---- conversions ----

pub(crate) fn timestamp(ms: Millis) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

fn millis(field: &str, t: &pbjson_types::Timestamp) -> Result<Millis, Status> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(invalid(field, "nanos must be 0 to 999999999"));
    }
    t.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(t.nanos / 1_000_000)))
        .filter(|ms| *ms >= 0)
        .ok_or_else(|| invalid(field, "is out of range"))
}

pub(crate) fn to_struct(m: &serde_json::Map<String, serde_json::Value>) -> pbjson_types::Struct {
    serde_json::from_value(serde_json::Value::Object(m.clone())).unwrap_or_default()
}

fn from_struct(
    field: &str,
    s: Option<pbjson_types::Struct>,
) -> Result<serde_json::Map<String, serde_json::Value>, Status> {
    let Some(s) = s else {
        return Ok(serde_json::Map::new());
    };
    match serde_json::to_value(&s) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) | Err(_) => Err(invalid(field, "must be a JSON object")),
    }
}

fn unit_to_pb(u: Unit) -> pb::Unit {
    match u {
        Unit::Second => pb::Unit::Second,
        Unit::Minute => pb::Unit::Minute,
        Unit::Hour => pb::Unit::Hour,
        Unit::Day => pb::Unit::Day,
        Unit::Week => pb::Unit::Week,
        Unit::Month => pb::Unit::Month,
        Unit::Year => pb::Unit::Year,
    }
}

fn algorithm_to_pb(a: Algorithm) -> pb::Algorithm {
    match a {
        Algorithm::FixedWindow => pb::Algorithm::FixedWindow,
        Algorithm::SlidingWindow => pb::Algorithm::SlidingWindow,
        Algorithm::TokenBucket => pb::Algorithm::TokenBucket,
    }
}

fn limit_to_pb(l: &PlanLimit) -> pb::Limit {
    let (unit, duration) = match l.window {
        Window::Unit(u) => (unit_to_pb(u), None),
        Window::Seconds(s) => (
            pb::Unit::Unspecified,
            Some(pbjson_types::Duration {
                seconds: i64::try_from(s).unwrap_or(i64::MAX),
                nanos: 0,
            }),
        ),
    };
    pb::Limit {
        requests: u64::from(l.requests),
        unit: unit.into(),
        duration,
        algorithm: algorithm_to_pb(l.algorithm).into(),
        burst: l.burst.map(u64::from),
    }
}

fn limit_from_pb(field: &str, l: &pb::Limit) -> Result<PlanLimit, Status> {
    let requests =
        validate::count(&format!("{field}.requests"), l.requests).map_err(|e| key_status(&e))?;
    let unit = pb::Unit::try_from(l.unit)
        .map_err(|_| invalid(&format!("{field}.unit"), format!("unknown unit {}", l.unit)))?;
    let window = match (unit, &l.duration) {
        (pb::Unit::Unspecified, None) => {
            return Err(invalid(
                &format!("{field}.unit"),
                "set a unit (SECOND ... YEAR) or a duration",
            ));
        }
        (pb::Unit::Unspecified, Some(d)) => {
            if d.nanos != 0 || d.seconds <= 0 {
                return Err(invalid(
                    &format!("{field}.duration"),
                    format!(
                        "must be 1 s to {} s (366 days), in whole seconds",
                        validate::MAX_WINDOW_SECONDS
                    ),
                ));
            }
            Window::Seconds(u64::try_from(d.seconds).unwrap_or(u64::MAX))
        }
        (_, Some(_)) => {
            return Err(invalid(
                &format!("{field}.duration"),
                "set either a unit or a duration, not both",
            ));
        }
        (u, None) => Window::Unit(match u {
            pb::Unit::Second => Unit::Second,
            pb::Unit::Minute => Unit::Minute,
            pb::Unit::Hour => Unit::Hour,
            pb::Unit::Day => Unit::Day,
            pb::Unit::Week => Unit::Week,
            pb::Unit::Month => Unit::Month,
            pb::Unit::Year | pb::Unit::Unspecified => Unit::Year,
        }),
    };
    let algorithm = match pb::Algorithm::try_from(l.algorithm) {
        Ok(pb::Algorithm::Unspecified | pb::Algorithm::FixedWindow) => Algorithm::FixedWindow,
        Ok(pb::Algorithm::SlidingWindow) => Algorithm::SlidingWindow,
        Ok(pb::Algorithm::TokenBucket) => Algorithm::TokenBucket,
        Err(_) => {
            return Err(invalid(
                &format!("{field}.algorithm"),
                format!("unknown algorithm {}", l.algorithm),
            ));
        }
    };
    let burst = l
        .burst
        .map(|b| validate::count(&format!("{field}.burst"), b))
        .transpose()
        .map_err(|e| key_status(&e))?;
    Ok(PlanLimit {
        requests,
        window,
        algorithm,
        burst,
    })
}

fn limits_from_pb(field: &str, limits: &[pb::Limit]) -> Result<Vec<PlanLimit>, Status> {
    if limits.len() > validate::MAX_LIMITS {
        return Err(invalid(
            field,
            format!(
                "has {} limits; at most {} are allowed",
                limits.len(),
                validate::MAX_LIMITS
            ),
        ));
    }
    limits
        .iter()
        .enumerate()
        .map(|(i, l)| limit_from_pb(&format!("{field}[{i}]"), l))
        .collect()
}

fn plan_to_pb(p: &Plan) -> pb::Plan {
    pb::Plan {
        name: p.name.clone(),
        description: p.description.clone(),
        limits: p.limits.iter().map(limit_to_pb).collect(),
        monthly_quota: p.quota.map(|q| pb::Quota {
            requests: u64::from(q.requests),
            refill_day: u32::from(q.refill_day),
        }),
        created_at: Some(timestamp(p.created_at)),
        updated_at: Some(timestamp(p.updated_at)),
    }
}

fn plan_from_pb(p: Option<pb::Plan>) -> Result<PlanDraft, Status> {
    let p = p.ok_or_else(|| invalid("plan", "is required"))?;
    let quota = match p.monthly_quota {
        None => None,
        Some(q) => Some(Quota {
            requests: validate::count("plan.monthly_quota.requests", q.requests)
                .map_err(|e| key_status(&e))?,
            refill_day: match q.refill_day {
                0 => 1,
                d => u8::try_from(d)
                    .map_err(|_| invalid("plan.monthly_quota.refill_day", "must be 1 to 28"))?,
            },
        }),
    };
    Ok(PlanDraft {
        limits: limits_from_pb("plan.limits", &p.limits)?,
        name: p.name,
        description: p.description,
        quota,
    })
}

fn state_to_pb(s: KeyState) -> pb::KeyState {
    match s {
        KeyState::Active => pb::KeyState::Active,
        KeyState::Disabled => pb::KeyState::Disabled,
        KeyState::Expired => pb::KeyState::Expired,
        KeyState::Revoked => pb::KeyState::Revoked,
    }
}

fn key_to_pb(k: &ApiKey, now: Millis) -> pb::Key {
    pb::Key {
        id: k.id.clone(),
        name: k.name.clone(),
        owner_id: k.owner_id.clone(),
        plan: k.plan.clone(),
        scopes: k.scopes.clone(),
        metadata: Some(to_struct(&k.metadata)),
        enabled: k.enabled,
        state: state_to_pb(k.state(now)).into(),
        hint: k.hint.clone(),
        limits: k
            .limits
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(limit_to_pb)
            .collect(),
        expires_at: k.expires_at.map(timestamp),
        created_at: Some(timestamp(k.created_at)),
        updated_at: Some(timestamp(k.updated_at)),
        last_used_at: k.last_used_at.map(timestamp),
        revoked_at: k.revoked_at.map(timestamp),
    }
}

fn usage_to_pb(u: &UsageDay) -> pb::UsageDay {
    pb::UsageDay {
        key_id: u.key_id.clone(),
        day: u.day.clone(),
        admitted: u.admitted,
        limited: u.limited,
    }
}

fn audit_to_pb(e: &AuditEvent) -> pb::AuditEvent {
    let details = match &e.details {
        serde_json::Value::Object(m) => to_struct(m),
        _ => pbjson_types::Struct::default(),
    };
    pb::AuditEvent {
        id: u64::try_from(e.id).unwrap_or(0),
        time: Some(timestamp(e.at)),
        actor: e.actor.clone(),
        action: e.action.clone(),
        target: e.target.clone(),
        request_id: e.request_id.clone(),
        details: Some(details),
    }
}

/// Page tokens are opaque to clients: hex of the last item's sort key.
fn encode_token(parts: &[&str]) -> String {
    hex::encode(parts.join("\u{0}"))
}

fn decode_token(token: &str) -> Result<Vec<String>, Status> {
    if token.is_empty() {
        return Ok(Vec::new());
    }
    hex::decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .map(|s| s.split('\u{0}').map(str::to_string).collect())
        .ok_or_else(|| invalid("page_token", "is not a token this server issued"))
}

fn non_negative_duration(
    field: &str,
    d: Option<&pbjson_types::Duration>,
) -> Result<Duration, Status> {
    match d {
        None => Ok(Duration::ZERO),
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(invalid(field, "must not be negative")),
        Some(d) => Ok(Duration::new(
            u64::try_from(d.seconds).unwrap_or(u64::MAX),
            u32::try_from(d.nanos).unwrap_or(0),
        )),
    }
}

#[tonic::async_trait]
impl AdminService for AdminGrpc {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let actor = actor(&request)?;
        let m = request.into_inner();
        let new = NewKey {
            metadata: from_struct("metadata", m.metadata)?,
            expires_at: m
                .expires_at
                .as_ref()
                .map(|t| millis("expires_at", t))
                .transpose()?,
            limits: if m.limits.is_empty() {
                None
            } else {
                Some(limits_from_pb("limits", &m.limits)?)
            },
            name: m.name,
            owner_id: m.owner_id,
            plan: m.plan,
            scopes: m.scopes,
            prefix: m.prefix,
        };
        let created = self
            .keys
            .create_key(new, &actor)
            .await
            .map_err(|e| key_status(&e))?;
        tracing::info!(actor = %actor.subject, key_id = %created.key.id, "key created");
        Ok(Response::new(pb::CreateKeyResponse {
            key: Some(key_to_pb(&created.key, self.keys.now())),
            secret: created.secret,
        }))
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        actor(&request)?;
        let key = self
            .keys
            .get_key(&request.get_ref().id)
            .await
            .map_err(|e| key_status(&e))?;
        Ok(Response::new(key_to_pb(&key, self.keys.now())))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        actor(&request)?;
        let m = request.into_inner();
        let after = decode_token(&m.page_token)?
            .into_iter()
            .next()
            .unwrap_or_default();
        let state = match pb::KeyState::try_from(m.state) {
            Ok(pb::KeyState::Unspecified) => None,
            Ok(pb::KeyState::Active) => Some(KeyState::Active),
            Ok(pb::KeyState::Disabled) => Some(KeyState::Disabled),
            Ok(pb::KeyState::Expired) => Some(KeyState::Expired),
            Ok(pb::KeyState::Revoked) => Some(KeyState::Revoked),
            Err(_) => return Err(invalid("state", format!("unknown state {}", m.state))),
        };
        let filter = KeyFilter {
            owner_id: (!m.owner_id.is_empty()).then_some(m.owner_id),
            plan: (!m.plan.is_empty()).then_some(m.plan),
            state,
        };
        let size = validate::page_size("page_size", m.page_size).map_err(|e| key_status(&e))?;
        let keys = self
            .keys
            .list_keys(&filter, &after, size)
            .await
            .map_err(|e| key_status(&e))?;
        let next = match keys.last() {
            Some(k) if keys.len() == size as usize => encode_token(&[&k.id]),
            _ => String::new(),
        };
        let now = self.keys.now();
        Ok(Response::new(pb::ListKeysResponse {
            keys: keys.iter().map(|k| key_to_pb(k, now)).collect(),
            next_page_token: next,
        }))
    }

    async fn update_key(
        &self,
        request: Request<pb::UpdateKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        let actor = actor(&request)?;
        let m = request.into_inner();
        if m.clear_expires_at && m.expires_at.is_some() {
            return Err(invalid(
                "clear_expires_at",
                "cannot be set together with expires_at",
            ));
        }
        let expires_at = if m.clear_expires_at {
            Some(None)
        } else {
            m.expires_at
                .as_ref()
                .map(|t| millis("expires_at", t).map(Some))
                .transpose()?
        };
        let limits = match &m.limits {
            None => None,
            Some(l) if l.limits.is_empty() => Some(None),
            Some(l) => Some(Some(limits_from_pb("limits.limits", &l.limits)?)),
        };
        let changes = KeyChanges {
            name: m.name,
            plan: m.plan,
            scopes: m.scopes.map(|s| s.scopes),
            metadata: match m.metadata {
                Some(s) => Some(from_struct("metadata", Some(s))?),
                None => None,
            },
            enabled: m.enabled,
            expires_at,
            limits,
        };
        let key = self
            .keys
            .update_key(&m.id, changes, &actor)
            .await
            .map_err(|e| key_status(&e))?;
        tracing::info!(actor = %actor.subject, key_id = %key.id, "key updated");
        Ok(Response::new(key_to_pb(&key, self.keys.now())))
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        let actor = actor(&request)?;
        let m = request.into_inner();
        let key = self
            .keys
            .revoke_key(&m.id, &m.reason, &actor)
            .await
            .map_err(|e| key_status(&e))?;
        tracing::info!(actor = %actor.subject, key_id = %key.id, "key revoked");
        Ok(Response::new(key_to_pb(&key, self.keys.now())))
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let actor = actor(&request)?;
        let m = request.into_inner();
        let grace = non_negative_duration("grace_period", m.grace_period.as_ref())?;
        let r = self
            .keys
            .rotate_key(&m.id, grace, &actor)
            .await
            .map_err(|e| key_status(&e))?;
        tracing::info!(actor = %actor.subject, key_id = %r.key.id, "key rotated");
        Ok(Response::new(pb::RotateKeyResponse {
            key: Some(key_to_pb(&r.key, self.keys.now())),
            secret: r.secret,
            previous_secret_expires_at: Some(timestamp(r.previous_expires_at)),
        }))
    }

    async fn create_plan(
        &self,
        request: Request<pb::CreatePlanRequest>,
    ) -> Result<Response<pb::Plan>, Status> {
        let actor = actor(&request)?;
        let draft = plan_from_pb(request.into_inner().plan)?;
        let plan = self
            .keys
            .create_plan(draft, &actor)
            .await
            .map_err(|e| key_status(&e))?;
        tracing::info!(actor = %actor.subject, plan = %plan.name, "plan created");
        Ok(Response::new(plan_to_pb(&plan)))
    }

    async fn get_plan(
        &self,
        request: Request<pb::GetPlanRequest>,
    ) -> Result<Response<pb::Plan>, Status> {
        actor(&request)?;
        let plan = self
            .keys
            .get_plan(&request.get_ref().name)
            .await
            .map_err(|e| key_status(&e))?;
        Ok(Response::new(plan_to_pb(&plan)))
    }

    async fn list_plans(
        &self,
        request: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        actor(&request)?;
        let m = request.into_inner();
        let after = decode_token(&m.page_token)?
            .into_iter()
            .next()
            .unwrap_or_default();
        let size = validate::page_size("page_size", m.page_size).map_err(|e| key_status(&e))?;
        let plans = self
            .keys
            .list_plans(&after, size)
            .await
            .map_err(|e| key_status(&e))?;
        let next = match plans.last() {
            Some(p) if plans.len() == size as usize => encode_token(&[&p.name]),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListPlansResponse {
            plans: plans.iter().map(plan_to_pb).collect(),
            next_page_token: next,
        }))
    }

    async fn update_plan(
        &self,
        request: Request<pb::UpdatePlanRequest>,
    ) -> Result<Response<pb::Plan>, Status> {
        let actor = actor(&request)?;
        let draft = plan_from_pb(request.into_inner().plan)?;
        let plan = self
            .keys
            .update_plan(draft, &actor)
            .await
            .map_err(|e| key_status(&e))?;
        tracing::info!(actor = %actor.subject, plan = %plan.name, "plan updated");
        Ok(Response::new(plan_to_pb(&plan)))
    }

    async fn delete_plan(
        &self,
        request: Request<pb::DeletePlanRequest>,
    ) -> Result<Response<pb::DeletePlanResponse>, Status> {
        let actor = actor(&request)?;
        let name = request.into_inner().name;
        self.keys
            .delete_plan(&name, &actor)
            .await
            .map_err(|e| key_status(&e))?;
        tracing::info!(actor = %actor.subject, plan = %name, "plan deleted");
        Ok(Response::new(pb::DeletePlanResponse {}))
    }

    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        actor(&request)?;
        let m = request.into_inner();
        let cursor = decode_token(&m.page_token)?;
        let (day, key) = match cursor.as_slice() {
            [] => ("", ""),
            [d, k] => (d.as_str(), k.as_str()),
            _ => return Err(invalid("page_token", "is not a token this server issued")),
        };
        let size = validate::page_size("page_size", m.page_size).map_err(|e| key_status(&e))?;
        let days = self
            .keys
            .usage(&m.key_id, &m.from_day, &m.to_day, (day, key), size)
            .await
            .map_err(|e| key_status(&e))?;
        let next = match days.last() {
            Some(u) if days.len() == size as usize => encode_token(&[&u.day, &u.key_id]),
            _ => String::new(),
        };
        Ok(Response::new(pb::GetUsageResponse {
            days: days.iter().map(usage_to_pb).collect(),
            next_page_token: next,
        }))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        actor(&request)?;
        let m = request.into_inner();
        let before = match decode_token(&m.page_token)?.first() {
            None => 0,
            Some(s) => s
                .parse::<i64>()
                .map_err(|_| invalid("page_token", "is not a token this server issued"))?,
        };
        let size = validate::page_size("page_size", m.page_size).map_err(|e| key_status(&e))?;
        let events = self
            .keys
            .audit_events(&m.target, &m.actor, before, size)
            .await
            .map_err(|e| key_status(&e))?;
        let next = match events.last() {
            Some(e) if events.len() == size as usize => encode_token(&[&e.id.to_string()]),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.iter().map(audit_to_pb).collect(),
            next_page_token: next,
        }))
    }
}
