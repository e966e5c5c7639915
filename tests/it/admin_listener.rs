//! The admin API on its own listener (`--admin-grpc-addr`): AdminService
//! answers there and only there; ShouldRateLimit and KeyService stay on
//! the data-plane port; each listener has health and a reflection that
//! lists what it serves; `""` turns the listener off; an admin listener
//! beyond loopback without TLS is warned about at start.

use std::process::Command;

use sluice::grpc::pb::sluice::v1 as pb;
use sluice::grpc::pb::sluice::v1::admin_service_client::AdminServiceClient;
use sluice::grpc::pb::sluice::v1::key_service_client::KeyServiceClient;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::keys::{Admin, start_config, token};
use crate::support::db::{Kind, TestDb};
use crate::support::{BIN, OK, Opts, Sluice, call, desc, req, tool};

const CONFIG: &str = "\
domain: gateway
api_key:
  descriptor_key: x-api-key
descriptors:
  - key: path
    rate_limit: {unit: minute, requests_per_unit: 1000}
";

fn grpcurl(args: &[&str]) -> String {
    let out = Command::new(tool("grpcurl")).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "grpcurl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn list_plans(tok: &str) -> tonic::Request<pb::ListPlansRequest> {
    let mut r = tonic::Request::new(pb::ListPlansRequest::default());
    r.metadata_mut()
        .insert("authorization", format!("Bearer {tok}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_answers_only_on_its_own_listener() {
    let db = TestDb::new(Kind::Sqlite).await;
    let s = start_config(&db, CONFIG, &[]);
    let admin_addr = s.admin_addr.unwrap();
    assert_ne!(admin_addr, s.grpc_addr);
    let tok = token("all");

    // The admin listener serves AdminService.
    let mut a = Admin::new(&s, "all").await;
    let r = a.req(pb::ListPlansRequest::default());
    a.client.list_plans(r).await.unwrap();

    // The data-plane port does not, even with a valid token.
    let mut on_data = AdminServiceClient::new(s.channel().await);
    let e = on_data.list_plans(list_plans(&tok)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
    let e = on_data
        .create_plan(pb::CreatePlanRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");

    // ShouldRateLimit and ValidateKey stay on the data plane...
    let mut rls = s.client().await;
    let r = call(&mut rls, req("gateway", vec![desc(&[("path", "/")])])).await;
    assert_eq!(r.overall_code, OK);
    let mut k = KeyServiceClient::new(s.channel().await);
    let v = k
        .validate_key(pb::ValidateKeyRequest {
            key: "sk_live_unknown".into(),
            ..pb::ValidateKeyRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!v.valid);
    // ...and are not on the admin listener.
    let mut k_admin = KeyServiceClient::new(s.admin_channel().await);
    let e = k_admin
        .validate_key(pb::ValidateKeyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");

    // Health on both.
    for (channel, services) in [
        (
            s.channel().await,
            &[
                "",
                "envoy.service.ratelimit.v3.RateLimitService",
                "sluice.v1.KeyService",
            ][..],
        ),
        (s.admin_channel().await, &["", "sluice.v1.AdminService"][..]),
    ] {
        let mut h = HealthClient::new(channel);
        for service in services {
            let r = h
                .check(HealthCheckRequest {
                    service: (*service).to_string(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
        }
    }

    // Reflection on both, each listing what it serves.
    let data = grpcurl(&["-plaintext", &s.grpc_addr.to_string(), "list"]);
    for svc in [
        "envoy.service.ratelimit.v3.RateLimitService",
        "sluice.v1.KeyService",
        "grpc.health.v1.Health",
    ] {
        assert!(data.contains(svc), "{data}");
    }
    assert!(!data.contains("sluice.v1.AdminService"), "{data}");
    let admin = grpcurl(&["-plaintext", &admin_addr.to_string(), "list"]);
    for svc in ["sluice.v1.AdminService", "grpc.health.v1.Health"] {
        assert!(admin.contains(svc), "{admin}");
    }
    assert!(!admin.contains("RateLimitService"), "{admin}");
    assert!(!admin.contains("KeyService"), "{admin}");
    let out = grpcurl(&[
        "-plaintext",
        "-H",
        &format!("authorization: Bearer {tok}"),
        &admin_addr.to_string(),
        "sluice.v1.AdminService/ListPlans",
    ]);
    assert!(out.starts_with('{'), "{out}");
}

#[test]
fn an_empty_admin_address_turns_the_admin_api_off() {
    let s = Sluice::start(CONFIG, &["--admin-grpc-addr", ""]);
    assert_eq!(s.admin_addr, None);
    let data = grpcurl(&["-plaintext", &s.grpc_addr.to_string(), "list"]);
    assert!(!data.contains("AdminService"), "{data}");
    // The same through the environment.
    let s = Sluice::start_with(
        CONFIG,
        Opts {
            env: &[("SLUICE_ADMIN_GRPC_ADDR", "")],
            ..Opts::default()
        },
    );
    assert_eq!(s.admin_addr, None);
}

#[test]
fn defaults_are_loopback_8082_for_the_server_and_the_cli() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("[default: 127.0.0.1:8082]"), "{help}");
    let out = Command::new(BIN)
        .args(["plans", "list", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("[default: http://127.0.0.1:8082]"), "{help}");
}

#[test]
fn an_admin_listener_beyond_loopback_without_tls_is_warned_about() {
    let warning = "admin API listens beyond loopback without TLS";
    let s = Sluice::start(CONFIG, &["--admin-grpc-addr", "0.0.0.0:0"]);
    assert!(
        s.startup
            .iter()
            .any(|l| l.contains("WARN") && l.contains(warning)),
        "{:#?}",
        s.startup
    );
    drop(s);
    let s = Sluice::start(CONFIG, &["--admin-grpc-addr", "127.0.0.1:0"]);
    assert!(!s.startup.iter().any(|l| l.contains(warning)));
}
