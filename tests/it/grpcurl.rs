//! Reflection, checked with the real grpcurl (installed by the test
//! command): `list` and `describe` work with no proto files.

use std::process::Command;

use crate::support::{Sluice, tool};

const CONFIG: &str =
    "domain: g\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1}\n";

fn grpcurl(args: &[&str]) -> String {
    let out = Command::new(tool("grpcurl")).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "grpcurl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn list_describe_and_call_through_reflection() {
    let s = Sluice::start(CONFIG, &[]);
    let addr = s.grpc_addr.to_string();
    let list = grpcurl(&["-plaintext", &addr, "list"]);
    for svc in [
        "envoy.service.ratelimit.v3.RateLimitService",
        "grpc.health.v1.Health",
        "sluice.v1.KeyService",
    ] {
        assert!(list.contains(svc), "{list}");
    }
    // The admin API has its own listener (tests/it/admin_listener.rs).
    assert!(!list.contains("sluice.v1.AdminService"), "{list}");
    let desc = grpcurl(&[
        "-plaintext",
        &addr,
        "describe",
        "envoy.service.ratelimit.v3.RateLimitRequest",
    ]);
    assert!(desc.contains("hits_addend"), "{desc}");
    let body = r#"{"domain":"g","descriptors":[{"entries":[{"key":"k","value":"v"}]}]}"#;
    let out = grpcurl(&[
        "-plaintext",
        "-d",
        body,
        &addr,
        "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    ]);
    assert!(out.contains("\"overallCode\": \"OK\""), "{out}");
    let out = grpcurl(&[
        "-plaintext",
        "-d",
        body,
        &addr,
        "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    ]);
    assert!(out.contains("OVER_LIMIT"), "{out}");
}
