//! Start-up, health, reflection presence and graceful shutdown.

use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::support::{OK, Sluice, call, desc, req};

const CONFIG: &str = "domain: life\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1000}\n";

#[tokio::test]
async fn health_is_serving_once_loaded() {
    let s = Sluice::start(CONFIG, &[]);
    let mut h = HealthClient::new(s.channel().await);
    for service in ["", "envoy.service.ratelimit.v3.RateLimitService"] {
        let r = h
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
}

#[tokio::test]
async fn invalid_config_at_start_exits_nonzero_with_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(&f, "domain: ''\ndescriptors:\n  - key: ''\n  - bogus: 1\n").unwrap();
    let out = std::process::Command::new(crate::support::BIN)
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("domain"), "{err}");
    assert!(err.contains("unknown key 'bogus'"), "{err}");
}

#[tokio::test]
async fn sigterm_drains_in_flight_and_refuses_new_work() {
    let mut s = Sluice::start(CONFIG, &["--drain-timeout", "5"]);
    let mut c = s.client().await;
    let mut h = HealthClient::new(s.channel().await);
    assert_eq!(
        call(&mut c, req("life", vec![desc(&[("k", "v")])]))
            .await
            .overall_code,
        OK
    );

    // Keep a stream of calls going while SIGTERM arrives: every call either
    // succeeds or is refused cleanly; none hangs.
    let mut busy = c.clone();
    let load = tokio::spawn(async move {
        let mut ok = 0;
        let mut refused = 0;
        for _ in 0..200 {
            match tokio::time::timeout(
                Duration::from_secs(5),
                busy.should_rate_limit(req("life", vec![desc(&[("k", "v")])])),
            )
            .await
            {
                Ok(Ok(_)) => ok += 1,
                Ok(Err(_)) => refused += 1,
                Err(_) => panic!("a call hung during shutdown"),
            }
        }
        (ok, refused)
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.terminate();
    let status = tokio::task::spawn_blocking(move || {
        let st = s.wait_exit(Duration::from_secs(8));
        (st, s)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit status {:?}", status.0);
    let (ok, refused) = load.await.unwrap();
    assert_eq!(ok + refused, 200);
    assert!(ok >= 1);
    // The process is gone: health cannot answer SERVING any more.
    let after = h
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(
        after
            .map(|r| r.into_inner().status != ServingStatus::Serving as i32)
            .unwrap_or(true)
    );
}
