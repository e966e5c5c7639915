//! Admin-token rules through the real binary: a `kid` no key has is
//! refused (never checked with the HS256 secret or a PEM key), the clock
//! leeway is `--jwt-leeway`, the lifetime is bounded by
//! `--jwt-max-lifetime`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sluice::grpc::pb::sluice::v1 as pb;
use sluice::grpc::pb::sluice::v1::admin_service_client::AdminServiceClient;
use tonic::Code;

use crate::support::{BIN, Opts, Sluice};

const SECRET: &str = "it-admin-auth-secret-0123456789abcdef";

const CONFIG: &str = "\
domain: d
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 10}
";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn start(extra: &[&str]) -> Sluice {
    Sluice::start_with(
        CONFIG,
        Opts {
            args: extra,
            env: &[("SLUICE_JWT_SECRET", SECRET)],
            ..Opts::default()
        },
    )
}

fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
}

fn hs256(kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn rs256(kid: Option<&str>, claims: &Value) -> String {
    let pem = std::fs::read(fixture("rsa.key")).unwrap();
    let mut h = Header::new(Algorithm::RS256);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

/// Claims issued `age` seconds ago, living `lifetime` seconds.
fn claims(age: i64, lifetime: i64) -> Value {
    json!({"sub": "it", "scope": "plans:read", "iat": now() - age, "exp": now() - age + lifetime})
}

/// ListPlans with `token`: Ok, or the refusal's code and message.
async fn list_plans(s: &Sluice, token: &str) -> Result<(), (Code, String)> {
    let mut c = AdminServiceClient::new(s.admin_channel().await);
    let mut r = tonic::Request::new(pb::ListPlansRequest::default());
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    c.list_plans(r)
        .await
        .map(|_| ())
        .map_err(|e| (e.code(), e.message().to_string()))
}

fn refused(r: Result<(), (Code, String)>, reason: &str) {
    match r {
        Err((Code::Unauthenticated, m)) if m.contains(reason) => {}
        other => panic!("expected UNAUTHENTICATED with {reason:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_kid_never_falls_back_to_an_unnamed_key() {
    let pem = fixture("rsa.pub");
    let s = start(&["--jwt-public-key", pem.to_str().unwrap()]);
    let c = claims(0, 600);
    // Without a kid, the secret and the PEM key (neither has a kid) verify.
    list_plans(&s, &hs256(None, &c)).await.unwrap();
    list_plans(&s, &rs256(None, &c)).await.unwrap();
    // The same tokens naming a kid no key has: refused, although the
    // secret and the PEM key would verify their signatures.
    refused(list_plans(&s, &hs256(Some("k1"), &c)).await, "unknown kid");
    refused(
        list_plans(&s, &rs256(Some("rsa-1"), &c)).await,
        "unknown kid",
    );
    drop(s);

    // With a JWKS, a kid picks its key; an unknown one is still refused.
    let jwks = fixture("jwks.json");
    let s = start(&["--jwt-jwks", jwks.to_str().unwrap()]);
    list_plans(&s, &rs256(Some("rsa-1"), &c)).await.unwrap();
    refused(
        list_plans(&s, &rs256(Some("rsa-9"), &c)).await,
        "unknown kid",
    );
    refused(
        list_plans(&s, &hs256(Some("rsa-1"), &c)).await,
        "unknown kid",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leeway_is_a_flag() {
    // Expired 10 s ago: inside the default 30 s leeway, outside 0.
    let late = hs256(None, &claims(70, 60));
    let s = start(&[]);
    list_plans(&s, &late).await.unwrap();
    drop(s);
    let s = start(&["--jwt-leeway", "0"]);
    refused(list_plans(&s, &late).await, "token expired");
    drop(s);
    let s = Sluice::start_with(
        CONFIG,
        Opts {
            env: &[("SLUICE_JWT_SECRET", SECRET), ("SLUICE_JWT_LEEWAY", "0")],
            ..Opts::default()
        },
    );
    refused(list_plans(&s, &late).await, "token expired");
    // Over 300 s is refused at start.
    let out = Command::new(BIN)
        .args(["serve", "--config", "x.yaml", "--jwt-leeway", "301"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--jwt-leeway"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lifetime_is_bounded_by_default_and_by_the_flag() {
    let mint = |ttl: &str| {
        let out = Command::new(BIN)
            .args(["token", "--scope", "plans:read", "--ttl", ttl])
            .env("SLUICE_JWT_SECRET", SECRET)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    // `sluice token` says when it mints past the default bound.
    let out = Command::new(BIN)
        .args(["token", "--scope", "plans:read", "--ttl", "30d"])
        .env("SLUICE_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success());
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(note.contains("--jwt-max-lifetime"), "{note}");
    let out = Command::new(BIN)
        .args(["token", "--scope", "plans:read", "--ttl", "24h"])
        .env("SLUICE_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Default: 24 h.
    let s = start(&[]);
    list_plans(&s, &mint("24h")).await.unwrap();
    let (code, message) = list_plans(&s, &mint("30d")).await.unwrap_err();
    assert_eq!(code, Code::Unauthenticated);
    assert!(
        message.contains("2592000 s") && message.contains("86400 s"),
        "{message}"
    );
    assert!(message.contains("--jwt-max-lifetime"), "{message}");
    // No iat: the lifetime is unknown.
    let no_iat = json!({"sub": "it", "scope": "plans:read", "exp": now() + 60});
    refused(list_plans(&s, &hs256(None, &no_iat)).await, "missing iat");
    drop(s);

    let s = start(&["--jwt-max-lifetime", "1h"]);
    list_plans(&s, &hs256(None, &claims(0, 3600)))
        .await
        .unwrap();
    refused(
        list_plans(&s, &mint("2h")).await,
        "over the maximum of 3600 s",
    );
    drop(s);

    // 0 turns the bound off.
    let s = start(&["--jwt-max-lifetime", "0"]);
    list_plans(&s, &mint("30d")).await.unwrap();
    list_plans(&s, &hs256(None, &no_iat)).await.unwrap();
}

/// Mints a token granting `scopes` (space-separated words).
fn mint_scopes(scopes: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["token", "--ttl", "10m", "--scope"])
        .args(scopes)
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

fn authorized<T>(m: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// The scope each AdminService method needs, as the README states it;
/// kept apart from the server's own table on purpose.
fn needed_scope(method: &str) -> &'static str {
    match method {
        "CreateKey" | "UpdateKey" | "RevokeKey" | "RotateKey" => "keys:write",
        "GetKey" | "ListKeys" => "keys:read",
        "CreatePlan" | "UpdatePlan" | "DeletePlan" => "plans:write",
        "GetPlan" | "ListPlans" => "plans:read",
        "GetUsage" => "usage:read",
        "ListAuditEvents" => "audit:read",
        other => panic!("AdminService/{other} is new: add it to this test and to the README"),
    }
}

/// Calls `method` with default arguments; the answer's code.
async fn call_method(
    c: &mut AdminServiceClient<tonic::transport::Channel>,
    method: &str,
    t: &str,
) -> Code {
    let r = match method {
        "CreateKey" => c
            .create_key(authorized(pb::CreateKeyRequest::default(), t))
            .await
            .map(|_| ()),
        "GetKey" => c
            .get_key(authorized(pb::GetKeyRequest::default(), t))
            .await
            .map(|_| ()),
        "ListKeys" => c
            .list_keys(authorized(pb::ListKeysRequest::default(), t))
            .await
            .map(|_| ()),
        "UpdateKey" => c
            .update_key(authorized(pb::UpdateKeyRequest::default(), t))
            .await
            .map(|_| ()),
        "RevokeKey" => c
            .revoke_key(authorized(pb::RevokeKeyRequest::default(), t))
            .await
            .map(|_| ()),
        "RotateKey" => c
            .rotate_key(authorized(pb::RotateKeyRequest::default(), t))
            .await
            .map(|_| ()),
        "CreatePlan" => c
            .create_plan(authorized(pb::CreatePlanRequest::default(), t))
            .await
            .map(|_| ()),
        "GetPlan" => c
            .get_plan(authorized(pb::GetPlanRequest::default(), t))
            .await
            .map(|_| ()),
        "ListPlans" => c
            .list_plans(authorized(pb::ListPlansRequest::default(), t))
            .await
            .map(|_| ()),
        "UpdatePlan" => c
            .update_plan(authorized(pb::UpdatePlanRequest::default(), t))
            .await
            .map(|_| ()),
        "DeletePlan" => c
            .delete_plan(authorized(pb::DeletePlanRequest::default(), t))
            .await
            .map(|_| ()),
        "GetUsage" => c
            .get_usage(authorized(pb::GetUsageRequest::default(), t))
            .await
            .map(|_| ()),
        "ListAuditEvents" => c
            .list_audit_events(authorized(pb::ListAuditEventsRequest::default(), t))
            .await
            .map(|_| ()),
        other => panic!("AdminService/{other} is new: add it to this test"),
    };
    r.map_or_else(|e| e.code(), |()| Code::Ok)
}

/// The AdminService methods in the descriptor the binary serves.
fn admin_methods() -> Vec<String> {
    use prost::Message as _;
    let set =
        prost_types::FileDescriptorSet::decode(sluice::grpc::pb::FILE_DESCRIPTOR_SET).unwrap();
    set.file
        .iter()
        .filter(|f| f.package() == "sluice.v1")
        .flat_map(|f| f.service.iter())
        .filter(|s| s.name() == "AdminService")
        .flat_map(|s| s.method.iter().map(|m| m.name().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_admin_method_needs_its_scope() {
    let methods = admin_methods();
    assert_eq!(methods.len(), 13, "{methods:?}");
    let s = start(&[]);
    let mut c = AdminServiceClient::new(s.admin_channel().await);
    let all = [
        "keys:read",
        "keys:write",
        "plans:read",
        "plans:write",
        "usage:read",
        "audit:read",
    ];
    for method in &methods {
        let needed = needed_scope(method);
        let others: Vec<&str> = all.iter().copied().filter(|s| *s != needed).collect();
        let code = call_method(&mut c, method, &mint_scopes(&others)).await;
        assert_eq!(code, Code::PermissionDenied, "{method} without {needed}");
        let code = call_method(&mut c, method, &mint_scopes(&[needed])).await;
        assert!(
            !matches!(
                code,
                Code::PermissionDenied | Code::Unauthenticated | Code::Unimplemented
            ),
            "{method} with {needed}: {code:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_admin_authentications_are_limited_per_caller() {
    let s = start(&[
        "--admin-auth-failures-per-minute",
        "3",
        "--caller-id-header",
        "x-forwarded-for",
    ]);
    let mut c = AdminServiceClient::new(s.admin_channel().await);
    let good = mint_scopes(&["plans:read"]);
    let call = |token: &str, from: &str| {
        let mut r = authorized(pb::ListPlansRequest::default(), token);
        r.metadata_mut()
            .insert("x-forwarded-for", from.parse().unwrap());
        r
    };
    for _ in 0..3 {
        let e = c.list_plans(call("garbage", "10.1.1.1")).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }
    // The 4th, and then even a good token from the same caller.
    for t in ["garbage", good.as_str()] {
        let e = c.list_plans(call(t, "10.1.1.1")).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(
            e.message().contains("failed admin authentications")
                && e.message().contains("3 per minute"),
            "{e:?}"
        );
    }
    // Another caller behind the same proxy is not locked out.
    c.list_plans(call(&good, "10.2.2.2")).await.unwrap();
    // A missing scope is not an authentication failure.
    let keys_only = mint_scopes(&["keys:read"]);
    for _ in 0..5 {
        let e = c
            .list_plans(call(&keys_only, "10.3.3.3"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
    c.list_plans(call(&good, "10.3.3.3")).await.unwrap();
    // Metered by code.
    let m = s.metrics().await;
    assert!(
        m.contains(
            "sluice_admin_requests_total{method=\"sluice.v1.AdminService/ListPlans\",code=\"RESOURCE_EXHAUSTED\"} 2"
        ),
        "{m}"
    );
}

/// Replaces `path` as a rotation does: a new file renamed over it.
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn key_files_are_reloaded_and_a_bad_one_keeps_the_old_keys() {
    let keys = tempfile::tempdir().unwrap();
    let jwks = keys.path().join("jwks.json");
    let pem = keys.path().join("admin.pub");
    let all: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap();
    let only = |kid: &str| {
        let key = all["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .unwrap()
            .clone();
        json!({ "keys": [key] }).to_string()
    };
    std::fs::write(&jwks, only("ec-1")).unwrap();
    std::fs::copy(fixture("rsa.pub"), &pem).unwrap();
    let s = start(&[
        "--jwt-jwks",
        jwks.to_str().unwrap(),
        "--jwt-public-key",
        pem.to_str().unwrap(),
    ]);
    let c = claims(0, 600);
    let ed = {
        let key = std::fs::read(fixture("ed.key")).unwrap();
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some("ed-1".into());
        jsonwebtoken::encode(&h, &c, &EncodingKey::from_ed_pem(&key).unwrap()).unwrap()
    };
    let rsa2 = {
        let key = std::fs::read(fixture("rsa2.key")).unwrap();
        jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &c,
            &EncodingKey::from_rsa_pem(&key).unwrap(),
        )
        .unwrap()
    };
    refused(list_plans(&s, &ed).await, "algorithm EdDSA is not allowed");
    refused(list_plans(&s, &rsa2).await, "bad signature");
    list_plans(&s, &rs256(None, &c)).await.unwrap();

    // Rotations of both files reach the running server.
    replace(&jwks, &only("ed-1"));
    replace(&pem, &std::fs::read_to_string(fixture("rsa2.pub")).unwrap());
    s.wait_log("admin-token public keys reloaded", Duration::from_secs(10));
    let mut rotated = false;
    for _ in 0..100 {
        if list_plans(&s, &ed).await.is_ok() && list_plans(&s, &rsa2).await.is_ok() {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rotated, "the rotated keys were not picked up");
    refused(list_plans(&s, &rs256(None, &c)).await, "bad signature");

    // A broken JWKS: an error in the log, the previous keys stay.
    replace(&jwks, "{\"keys\": [");
    let line = s.wait_log("cannot be used", Duration::from_secs(10));
    assert!(
        line.contains("ERROR") && line.contains("jwks.json") && line.contains("previous keys stay"),
        "{line}"
    );
    list_plans(&s, &ed).await.unwrap();
    list_plans(&s, &rsa2).await.unwrap();
}
