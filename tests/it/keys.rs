//! API keys and plans through the real binary, on SQLite and on a real
//! PostgreSQL: the key lifecycle, rotation grace, revocation between two
//! replicas, admin authentication, audit rows, usage after SIGTERM,
//! key-aware ShouldRateLimit and the CLI. Every case that is not about one
//! database runs on both.

use std::process::Command;
use std::time::{Duration, Instant};

use sluice::grpc::pb::sluice::v1 as pb;
use sluice::grpc::pb::sluice::v1::admin_service_client::AdminServiceClient;
use sluice::grpc::pb::sluice::v1::key_service_client::KeyServiceClient;
use tonic::transport::Channel;

use crate::support::db::{Kind, TestDb};
use crate::support::{BIN, OK, OVER, Opts, Sluice, call, desc, eventually, on_both, req};

pub(crate) const SECRET: &str = "it-admin-secret-it-admin-secret-0123";
pub(crate) const KEY_SECRET: &str = "it-key-hashing-secret-0123456789abcdef";

const CONFIG: &str = "\
domain: gateway
api_key:
  descriptor_key: x-api-key
  on_invalid: deny
descriptors:
  - key: path
    rate_limit: {unit: minute, requests_per_unit: 1000}
";

fn config() -> &'static str {
    CONFIG
}

fn start(db: &TestDb, extra: &[&str]) -> Sluice {
    start_config(db, config(), extra)
}

pub(crate) fn start_config(db: &TestDb, config: &str, extra: &[&str]) -> Sluice {
    let mut args = Vec::new();
    if !extra.contains(&"--database-url") {
        args.extend_from_slice(&["--database-url", db.url.as_str()]);
    }
    if !extra.contains(&"--usage-flush-interval-ms") {
        args.extend_from_slice(&["--usage-flush-interval-ms", "200"]);
    }
    args.extend_from_slice(extra);
    Sluice::start_with(
        config,
        Opts {
            args: &args,
            env: &[
                ("SLUICE_JWT_SECRET", SECRET),
                ("SLUICE_KEY_SECRET", KEY_SECRET),
            ],
            ..Opts::default()
        },
    )
}

pub(crate) fn token(scopes: &str) -> String {
    let out = Command::new(BIN)
        .args([
            "token",
            "--scope",
            scopes,
            "--ttl",
            "10m",
            "--subject",
            "it-ops",
        ])
        .env("SLUICE_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[derive(Clone)]
pub(crate) struct Admin {
    pub(crate) client: AdminServiceClient<Channel>,
    token: String,
}

impl Admin {
    pub(crate) async fn new(s: &Sluice, scopes: &str) -> Admin {
        Admin {
            client: AdminServiceClient::new(s.admin_channel().await),
            token: token(scopes),
        }
    }

    pub(crate) fn req<T>(&self, m: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(m);
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        r
    }
}

pub(crate) fn limit(requests: u64, unit: pb::Unit) -> pb::Limit {
    pb::Limit {
        requests,
        unit: unit.into(),
        ..pb::Limit::default()
    }
}

pub(crate) async fn create_plan(a: &mut Admin, name: &str, limits: Vec<pb::Limit>) -> pb::Plan {
    let m = pb::CreatePlanRequest {
        plan: Some(pb::Plan {
            name: name.into(),
            limits,
            ..pb::Plan::default()
        }),
    };
    let r = a.req(m);
    a.client.create_plan(r).await.unwrap().into_inner()
}

pub(crate) async fn create_key(a: &mut Admin, plan: &str, scopes: &[&str]) -> (pb::Key, String) {
    let m = pb::CreateKeyRequest {
        name: "ci".into(),
        owner_id: "acme".into(),
        plan: plan.into(),
        scopes: scopes.iter().map(|s| (*s).to_string()).collect(),
        ..pb::CreateKeyRequest::default()
    };
    let r = a.req(m);
    let out = a.client.create_key(r).await.unwrap().into_inner();
    (out.key.unwrap(), out.secret)
}

async fn validate(
    s: &Sluice,
    key: &str,
    cost: Option<u64>,
    scopes: &[&str],
) -> pb::ValidateKeyResponse {
    let mut c = KeyServiceClient::new(s.channel().await);
    c.validate_key(pb::ValidateKeyRequest {
        key: key.into(),
        cost,
        required_scopes: scopes.iter().map(|s| (*s).to_string()).collect(),
    })
    .await
    .unwrap()
    .into_inner()
}

fn code(r: &pb::ValidateKeyResponse) -> pb::ValidationCode {
    pb::ValidationCode::try_from(r.code).unwrap()
}

on_both!(key_lifecycle);
async fn key_lifecycle(kind: Kind) {
    let db = TestDb::new(kind).await;
    let s = start(&db, &[]);
    let mut a = Admin::new(&s, "all").await;
    create_plan(&mut a, "starter", vec![limit(3, pb::Unit::Minute)]).await;
    let (key, secret) = create_key(&mut a, "starter", &["read"]).await;
    assert!(
        secret.starts_with("sk_live_") && secret.len() >= 40,
        "{secret}"
    );
    assert!(key.hint.starts_with("sk_live_...") && secret.ends_with(&key.hint[11..]));

    // Valid, with its plan and limits; a cost charges them all or nothing.
    let v = validate(&s, &secret, None, &[]).await;
    assert!(v.valid && code(&v) == pb::ValidationCode::Valid, "{v:?}");
    assert_eq!(
        (v.key_id.as_str(), v.owner_id.as_str(), v.plan.as_str()),
        (key.id.as_str(), "acme", "starter")
    );
    assert_eq!(v.limits.len(), 1);
    assert_eq!(v.limits[0].limit, 3);
    for left in [2, 1, 0] {
        let v = validate(&s, &secret, Some(1), &[]).await;
        assert_eq!(code(&v), pb::ValidationCode::Valid);
        assert_eq!(v.limits[0].remaining, left);
    }
    let v = validate(&s, &secret, Some(1), &[]).await;
    assert_eq!(code(&v), pb::ValidationCode::RateLimited);
    assert!(!v.valid && v.limits[0].exceeded);

    // Answers are counted by code.
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("sluice_key_validations_total{code=\"VALID\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_key_validations_total{code=\"RATE_LIMITED\"} 1"),
        "{metrics}"
    );

    // Scopes; unknown and wrong keys say only NOT_FOUND.
    assert_eq!(
        code(&validate(&s, &secret, None, &["write"]).await),
        pb::ValidationCode::InsufficientScope
    );
    for bad in ["sk_live_unknown", &format!("{secret}x"), ""] {
        let v = validate(&s, bad, None, &[]).await;
        assert_eq!(code(&v), pb::ValidationCode::NotFound);
        assert!(v.key_id.is_empty() && v.plan.is_empty());
    }

    // Disable, enable.
    let m = pb::UpdateKeyRequest {
        id: key.id.clone(),
        enabled: Some(false),
        ..Default::default()
    };
    let r = a.req(m);
    let k = a.client.update_key(r).await.unwrap().into_inner();
    assert_eq!(k.state, pb::KeyState::Disabled as i32);
    assert_eq!(
        code(&validate(&s, &secret, None, &[]).await),
        pb::ValidationCode::Disabled
    );
    let m = pb::UpdateKeyRequest {
        id: key.id.clone(),
        enabled: Some(true),
        ..Default::default()
    };
    let r = a.req(m);
    a.client.update_key(r).await.unwrap();
    assert_eq!(
        code(&validate(&s, &secret, None, &[]).await),
        pb::ValidationCode::Valid
    );

    // Rotation: both secrets work during the grace period, then only the new.
    let m = pb::RotateKeyRequest {
        id: key.id.clone(),
        grace_period: Some(pbjson_types::Duration {
            seconds: 2,
            nanos: 0,
        }),
    };
    let r = a.req(m);
    let rotated = a.client.rotate_key(r).await.unwrap().into_inner();
    assert_ne!(rotated.secret, secret);
    assert_eq!(
        code(&validate(&s, &secret, None, &[]).await),
        pb::ValidationCode::Valid
    );
    assert_eq!(
        code(&validate(&s, &rotated.secret, None, &[]).await),
        pb::ValidationCode::Valid
    );
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(
        code(&validate(&s, &secret, None, &[]).await),
        pb::ValidationCode::NotFound
    );
    assert_eq!(
        code(&validate(&s, &rotated.secret, None, &[]).await),
        pb::ValidationCode::Valid
    );

    // A plan in use cannot go; revoke is final.
    let r = a.req(pb::DeletePlanRequest {
        name: "starter".into(),
    });
    let e = a.client.delete_plan(r).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let r = a.req(pb::RevokeKeyRequest {
        id: key.id.clone(),
        reason: "leaked".into(),
    });
    let k = a.client.revoke_key(r).await.unwrap().into_inner();
    assert_eq!(k.state, pb::KeyState::Revoked as i32);
    assert_eq!(
        code(&validate(&s, &rotated.secret, None, &[]).await),
        pb::ValidationCode::Revoked
    );
    let r = a.req(pb::UpdateKeyRequest {
        id: key.id.clone(),
        name: Some("x".into()),
        ..Default::default()
    });
    assert_eq!(
        a.client.update_key(r).await.unwrap_err().code(),
        tonic::Code::FailedPrecondition
    );

    // Listing by state and pages.
    for _ in 0..3 {
        create_key(&mut a, "starter", &[]).await;
    }
    let r = a.req(pb::ListKeysRequest {
        page_size: 2,
        state: pb::KeyState::Active.into(),
        ..Default::default()
    });
    let page = a.client.list_keys(r).await.unwrap().into_inner();
    assert_eq!(page.keys.len(), 2);
    assert!(!page.next_page_token.is_empty());
    let r = a.req(pb::ListKeysRequest {
        page_size: 2,
        state: pb::KeyState::Active.into(),
        page_token: page.next_page_token,
        ..Default::default()
    });
    let rest = a.client.list_keys(r).await.unwrap().into_inner();
    assert_eq!(rest.keys.len(), 1);
    let r = a.req(pb::ListKeysRequest {
        state: pb::KeyState::Revoked.into(),
        ..Default::default()
    });
    let revoked = a.client.list_keys(r).await.unwrap().into_inner();
    assert_eq!(
        revoked
            .keys
            .iter()
            .map(|k| k.id.as_str())
            .collect::<Vec<_>>(),
        vec![key.id.as_str()]
    );

    // Every change left an audit event, with the actor and no secret.
    let r = a.req(pb::ListAuditEventsRequest {
        target: format!("key/{}", key.id),
        ..Default::default()
    });
    let events = a
        .client
        .list_audit_events(r)
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        vec![
            "key.revoke",
            "key.rotate",
            "key.update",
            "key.update",
            "key.create"
        ]
    );
    assert!(
        events
            .iter()
            .all(|e| e.actor == "it-ops" && !e.request_id.is_empty())
    );
    let dump = format!("{events:?}");
    assert!(!dump.contains(&secret) && !dump.contains(&rotated.secret));
}

on_both!(bad_input_names_the_field);
async fn bad_input_names_the_field(kind: Kind) {
    let db = TestDb::new(kind).await;
    let s = start(&db, &[]);
    let mut a = Admin::new(&s, "all").await;
    let cases: Vec<(pb::Plan, &str)> = vec![
        (
            pb::Plan {
                name: "p".into(),
                limits: vec![limit(0, pb::Unit::Minute)],
                ..Default::default()
            },
            "plan.limits[0].requests",
        ),
        (
            pb::Plan {
                name: "bad name!".into(),
                limits: vec![limit(1, pb::Unit::Minute)],
                ..Default::default()
            },
            "plan.name",
        ),
        (
            pb::Plan {
                name: "p".into(),
                limits: vec![],
                ..Default::default()
            },
            "plan.limits",
        ),
        (
            pb::Plan {
                name: "p".into(),
                limits: vec![pb::Limit {
                    requests: 1,
                    ..Default::default()
                }],
                ..Default::default()
            },
            "plan.limits[0].unit",
        ),
        (
            pb::Plan {
                name: "p".into(),
                limits: vec![limit(1, pb::Unit::Minute)],
                monthly_quota: Some(pb::Quota {
                    requests: 10,
                    refill_day: 31,
                }),
                ..Default::default()
            },
            "plan.monthly_quota.refill_day",
        ),
    ];
    for (plan, field) in cases {
        let r = a.req(pb::CreatePlanRequest { plan: Some(plan) });
        let e = a.client.create_plan(r).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}: {e:?}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    create_plan(&mut a, "p", vec![limit(1, pb::Unit::Minute)]).await;
    let big: serde_json::Map<String, serde_json::Value> = (0..100)
        .map(|i| (format!("k{i}"), serde_json::Value::String("x".repeat(50))))
        .collect();
    let r = a.req(pb::CreateKeyRequest {
        name: "n".into(),
        owner_id: "o".into(),
        plan: "p".into(),
        metadata: Some(serde_json::from_value(serde_json::Value::Object(big)).unwrap()),
        ..Default::default()
    });
    let e = a.client.create_key(r).await.unwrap_err();
    assert!(
        e.message().starts_with("metadata") && e.message().contains("4096"),
        "{e:?}"
    );
    let r = a.req(pb::CreateKeyRequest {
        name: "n".into(),
        owner_id: "o".into(),
        plan: "nope".into(),
        ..Default::default()
    });
    let e = a.client.create_key(r).await.unwrap_err();
    assert!(
        e.message().starts_with("plan") && e.code() == tonic::Code::InvalidArgument,
        "{e:?}"
    );
    let r = a.req(pb::ListKeysRequest {
        page_size: 5000,
        ..Default::default()
    });
    let e = a.client.list_keys(r).await.unwrap_err();
    assert!(
        e.message().starts_with("page_size") && e.message().contains("1000"),
        "{e:?}"
    );
    // Nothing was half-written: only the one good plan exists, and no key.
    let r = a.req(pb::ListKeysRequest::default());
    assert!(
        a.client
            .list_keys(r)
            .await
            .unwrap()
            .into_inner()
            .keys
            .is_empty()
    );
    let r = a.req(pb::ListPlansRequest::default());
    assert_eq!(
        a.client
            .list_plans(r)
            .await
            .unwrap()
            .into_inner()
            .plans
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_tokens_are_checked() {
    let db = TestDb::new(Kind::Sqlite).await;
    let s = start(&db, &[]);
    let mut c = AdminServiceClient::new(s.admin_channel().await);
    let call = |auth: Option<String>| {
        let mut r = tonic::Request::new(pb::ListPlansRequest::default());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    };
    let e = c.list_plans(call(None)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = c
        .list_plans(call(Some("Bearer garbage".into())))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = c
        .list_plans(call(Some(format!("Basic {}", token("all")))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = c
        .list_plans(call(Some(format!("Bearer {}", token("keys:read")))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("plans:read"), "{e:?}");
    c.list_plans(call(Some(format!("Bearer {}", token("plans:read")))))
        .await
        .unwrap();
    // A token signed with another secret.
    let out = Command::new(BIN)
        .args(["token", "--scope", "all"])
        .env("SLUICE_JWT_SECRET", "another-secret-another-secret-0000")
        .output()
        .unwrap();
    let forged = String::from_utf8(out.stdout).unwrap();
    let e = c
        .list_plans(call(Some(format!("Bearer {}", forged.trim()))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("bad signature"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_without_an_admin_key_disables_the_admin_api() {
    let db = TestDb::new(Kind::Postgres).await;
    let s = Sluice::start_with(
        config(),
        Opts {
            args: &["--database-url", &db.url],
            env: &[("SLUICE_KEY_SECRET", KEY_SECRET)],
            ..Opts::default()
        },
    );
    let mut c = AdminServiceClient::new(s.admin_channel().await);
    let e = c
        .list_plans(pb::ListPlansRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("SLUICE_JWT_SECRET"), "{e:?}");
    // And without a key secret, PostgreSQL refuses to start.
    let out = Command::new(BIN)
        .args([
            "serve",
            "--config",
            s.config_path.to_str().unwrap(),
            "--database-url",
            &db.url,
        ])
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .env_remove("SLUICE_KEY_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SLUICE_KEY_SECRET"));
}

on_both!(usage_survives_sigterm);
async fn usage_survives_sigterm(kind: Kind) {
    let db = TestDb::new(kind).await;
    // A long flush interval: only the shutdown flush can count them.
    let mut s = start(&db, &["--usage-flush-interval-ms", "10000"]);
    let mut a = Admin::new(&s, "all").await;
    create_plan(&mut a, "p", vec![limit(30, pb::Unit::Hour)]).await;
    let (key, secret) = create_key(&mut a, "p", &[]).await;
    let mut admitted = 0;
    let mut limited = 0;
    for _ in 0..40 {
        match code(&validate(&s, &secret, Some(1), &[]).await) {
            pb::ValidationCode::Valid => admitted += 1,
            pb::ValidationCode::RateLimited => limited += 1,
            other => panic!("{other:?}"),
        }
    }
    let mut rls = s.client().await;
    for _ in 0..5 {
        call(
            &mut rls,
            req("gateway", vec![desc(&[("x-api-key", &secret)])]),
        )
        .await;
        limited += 1;
    }
    assert_eq!((admitted, limited), (30, 15));
    s.terminate();
    assert!(s.wait_exit(Duration::from_secs(15)).success());
    let s2 = start(&db, &[]);
    let mut a2 = Admin::new(&s2, "all").await;
    let r = a2.req(pb::GetUsageRequest {
        key_id: key.id.clone(),
        ..Default::default()
    });
    let days = a2.client.get_usage(r).await.unwrap().into_inner().days;
    let total: (u64, u64) = days
        .iter()
        .fold((0, 0), |t, d| (t.0 + d.admitted, t.1 + d.limited));
    assert_eq!(total, (30, 15), "{days:?}");
    let r = a2.req(pb::GetKeyRequest { id: key.id });
    assert!(
        a2.client
            .get_key(r)
            .await
            .unwrap()
            .into_inner()
            .last_used_at
            .is_some()
    );
}

on_both!(concurrent_admin_changes_never_fail_each_other);
/// Two replicas on one database, 24 key creations at once (half through
/// each) while usage is flushed: every one succeeds. On SQLite a change
/// that read before it wrote used to be refused at once ("key store
/// unavailable") whenever another connection committed in between.
async fn concurrent_admin_changes_never_fail_each_other(kind: Kind) {
    let db = TestDb::new(kind).await;
    let nodes = [start(&db, &[]), start(&db, &[])];
    let mut first = Admin::new(&nodes[0], "all").await;
    create_plan(&mut first, "p", vec![limit(1000, pb::Unit::Minute)]).await;
    let (_, secret) = create_key(&mut first, "p", &[]).await;
    let admins = [first, Admin::new(&nodes[1], "all").await];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let mut a = admins[i % 2].clone();
        tasks.spawn(async move {
            let r = a.req(pb::CreateKeyRequest {
                name: format!("k{i}"),
                owner_id: "acme".into(),
                plan: "p".into(),
                ..pb::CreateKeyRequest::default()
            });
            a.client.create_key(r).await.map(|_| ())
        });
        // Usage for the flushers to write meanwhile.
        validate(&nodes[i % 2], &secret, Some(1), &[]).await;
    }
    let mut failed = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Err(status) = done.unwrap() {
            failed.push(status);
        }
    }
    assert!(failed.is_empty(), "{failed:?}");
    let mut a = admins[1].clone();
    let r = a.req(pb::ListKeysRequest {
        page_size: 100,
        ..Default::default()
    });
    let keys = a.client.list_keys(r).await.unwrap().into_inner().keys;
    assert_eq!(keys.len(), 25);
}

/// Two replicas on one database: B caches a key as valid, A revokes it, and
/// B must refuse it within a second (in ValidateKey and ShouldRateLimit).
async fn revocation_reaches_replica_b(db: &TestDb, args: &[&str]) {
    let a_node = start(db, args);
    let b_node = start(db, args);
    let mut a = Admin::new(&a_node, "all").await;
    create_plan(&mut a, "p", vec![limit(1000, pb::Unit::Minute)]).await;
    let (key, secret) = create_key(&mut a, "p", &[]).await;
    // B caches the key as valid.
    for _ in 0..2 {
        assert_eq!(
            code(&validate(&b_node, &secret, None, &[]).await),
            pb::ValidationCode::Valid
        );
    }
    let r = a.req(pb::RevokeKeyRequest {
        id: key.id,
        reason: String::new(),
    });
    a.client.revoke_key(r).await.unwrap();
    let revoked_at = Instant::now();
    let seen = eventually(Duration::from_secs(1), || async {
        code(&validate(&b_node, &secret, None, &[]).await) == pb::ValidationCode::Revoked
    })
    .await;
    assert!(
        seen,
        "replica B still accepted the key 1 s after revocation"
    );
    eprintln!(
        "revocation reached replica B after {:?}",
        revoked_at.elapsed()
    );
    let mut rls = b_node.client().await;
    let r = call(
        &mut rls,
        req("gateway", vec![desc(&[("x-api-key", &secret)])]),
    )
    .await;
    assert_eq!(r.overall_code, OVER);
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_reaches_another_replica_within_a_second() {
    // PostgreSQL LISTEN/NOTIFY carries the notice.
    let db = TestDb::new(Kind::Postgres).await;
    revocation_reaches_replica_b(&db, &[]).await;
}

on_both!(key_aware_should_rate_limit);
async fn key_aware_should_rate_limit(kind: Kind) {
    let db = TestDb::new(kind).await;
    let s = start_config(
        &db,
        "domain: gateway\napi_key: {descriptor_key: x-api-key, on_invalid: deny}\ndescriptors: []\n",
        &[],
    );
    let mut a = Admin::new(&s, "all").await;
    create_plan(
        &mut a,
        "tight",
        vec![limit(3, pb::Unit::Hour), limit(100, pb::Unit::Second)],
    )
    .await;
    let (_, secret) = create_key(&mut a, "tight", &[]).await;
    let mut rls = s.client().await;
    let mine = req(
        "gateway",
        vec![desc(&[("x-api-key", &secret)]), desc(&[("path", "/a")])],
    );
    for left in [2, 1, 0] {
        let r = call(&mut rls, mine.clone()).await;
        assert_eq!(r.overall_code, OK);
        let st = &r.statuses[0];
        assert_eq!(st.limit_remaining, left);
        let l = st.current_limit.as_ref().unwrap();
        assert_eq!(
            (l.requests_per_unit, l.unit),
            (3, 3),
            "the tightest limit is reported"
        );
    }
    let r = call(&mut rls, mine.clone()).await;
    assert_eq!(r.overall_code, OVER);
    // ValidateKey shares the budget.
    assert_eq!(
        code(&validate(&s, &secret, Some(1), &[]).await),
        pb::ValidationCode::RateLimited
    );
    // An unknown key: OVER_LIMIT with a problem body, nothing else said.
    let r = call(
        &mut rls,
        req("gateway", vec![desc(&[("x-api-key", "sk_live_forged")])]),
    )
    .await;
    assert_eq!(r.overall_code, OVER);
    let body: serde_json::Value = serde_json::from_slice(&r.raw_body).unwrap();
    assert_eq!(body["code"], "NOT_FOUND");
    assert!(
        r.response_headers_to_add
            .iter()
            .any(|h| h.value == "application/problem+json")
    );

    // on_invalid: allow lets an unknown key through with no limit.
    let db2 = TestDb::new(kind).await;
    let s2 = start_config(
        &db2,
        "domain: gateway\napi_key: {descriptor_key: x-api-key, on_invalid: allow}\ndescriptors: []\n",
        &[],
    );
    let mut rls2 = s2.client().await;
    for _ in 0..5 {
        let r = call(
            &mut rls2,
            req("gateway", vec![desc(&[("x-api-key", "sk_live_forged")])]),
        )
        .await;
        assert_eq!(r.overall_code, OK);
    }
}

#[test]
fn the_cli_manages_plans_and_keys() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::new(Kind::Sqlite));
    let s = start(&db, &[]);
    let addr = format!("http://{}", s.admin_addr.unwrap());
    let tok = token("all");
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("SLUICE_ADDR", &addr)
            .env("SLUICE_TOKEN", &tok)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&[
        "plans",
        "create",
        "pro",
        "--limit",
        "100/minute",
        "--limit",
        "5000/90s",
        "--quota",
        "100000",
        "--refill-day",
        "15",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("pro") && out.contains("5000/90s") && out.contains("100000/month"),
        "{out}"
    );
    let (ok, out, err) = cli(&[
        "keys", "create", "--name", "web", "--owner", "acme", "--plan", "pro", "--scope", "read",
        "--json",
    ]);
    assert!(ok, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = created["key"]["id"].as_str().unwrap().to_string();
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("sk_live_"));
    let (ok, out, _) = cli(&["keys", "list"]);
    assert!(
        ok && out.contains(&id) && out.contains("active") && !out.contains(&secret),
        "{out}"
    );
    let (ok, out, err) = cli(&["keys", "revoke", &id, "--reason", "test"]);
    assert!(ok && out.contains("revoked"), "{out}{err}");
    let (ok, out, _) = cli(&["audit", "--target", &format!("key/{id}")]);
    assert!(
        ok && out.contains("key.revoke") && out.contains("key.create"),
        "{out}"
    );
    let (ok, _, err) = cli(&["plans", "create", "bad", "--limit", "ten/minute"]);
    assert!(!ok && err.contains("--limit"), "{err}");
    let (ok, _, err) = cli(&["plans", "delete", "pro"]);
    assert!(
        !ok && err.contains("FailedPrecondition") && err.contains("used by 1 key"),
        "{err}"
    );
    // Without a token: a clear hint.
    let out = Command::new(BIN)
        .args(["plans", "list"])
        .env("SLUICE_ADDR", &addr)
        .env_remove("SLUICE_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SLUICE_TOKEN"));
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_a_revocation_reaches_a_replica_on_a_shared_sqlite_file() {
    // No PostgreSQL NOTIFY here: the notice travels on Redis pub/sub.
    let redis = crate::support::redis::RedisServer::start();
    let url = redis.url();
    let db = TestDb::new(Kind::Sqlite).await;
    revocation_reaches_replica_b(
        &db,
        &["--redis-url", url.as_str(), "--redis-timeout", "250"],
    )
    .await;
}
