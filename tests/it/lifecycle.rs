//! Start-up, health, reflection presence and graceful shutdown.

use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::support::split_call::SplitCall;
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

/// Every service gRPC health reports on.
const SERVICES: [&str; 4] = [
    "",
    "envoy.service.ratelimit.v3.RateLimitService",
    "sluice.v1.KeyService",
    "sluice.v1.AdminService",
];

async fn health_of(h: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    h.check(HealthCheckRequest {
        service: service.to_string(),
    })
    .await
    .map(|r| r.into_inner().status)
    .unwrap_or(-1)
}

async fn readyz(s: &Sluice) -> u16 {
    reqwest::get(s.http("/readyz"))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// On SIGTERM: NOT_SERVING (every service) and /readyz 503 at once, while
/// calls on existing and new connections, gRPC and /json, are still
/// answered for the whole shutdown delay; then a clean exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_not_ready_and_keeps_answering_through_the_delay() {
    let mut s = Sluice::start(CONFIG, &["--shutdown-delay", "5", "--drain-timeout", "5"]);
    let mut c = s.client().await;
    let mut h = HealthClient::new(s.channel().await);
    assert_eq!(
        call(&mut c, req("life", vec![desc(&[("k", "v")])]))
            .await
            .overall_code,
        OK
    );
    for service in SERVICES {
        assert_eq!(
            health_of(&mut h, service).await,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    assert_eq!(readyz(&s).await, 200);

    s.terminate();
    let signalled = std::time::Instant::now();
    let not_ready = crate::support::eventually(Duration::from_secs(2), || {
        let mut h = h.clone();
        let s = &s;
        async move {
            if readyz(s).await != 503 {
                return false;
            }
            for service in SERVICES {
                if health_of(&mut h, service).await != ServingStatus::NotServing as i32 {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert!(not_ready, "health and readiness did not turn at once");

    // Still answering: the existing connection, a new one, and /json.
    for _ in 0..50 {
        assert_eq!(
            call(&mut c, req("life", vec![desc(&[("k", "v")])]))
                .await
                .overall_code,
            OK
        );
    }
    let mut fresh = s.client().await;
    assert_eq!(
        call(&mut fresh, req("life", vec![desc(&[("k", "new")])]))
            .await
            .overall_code,
        OK
    );
    let json = reqwest::Client::new()
        .post(s.http("/json"))
        .body(r#"{"domain":"life","descriptors":[{"entries":[{"key":"k","value":"v"}]}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 200);
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "the checks above ran past the shutdown delay; they prove nothing"
    );

    let status = tokio::task::spawn_blocking(move || {
        let st = s.wait_exit(Duration::from_secs(15));
        (st, s)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit status {:?}", status.0);
    // Gone: nothing answers SERVING any more.
    assert_ne!(health_of(&mut h, "").await, ServingStatus::Serving as i32);
}

/// Health does not follow the shared store (its failure mode answers while
/// it is down), and nothing turns health back to SERVING during the
/// shutdown delay: Redis stops answering (breaker open, still SERVING),
/// SIGTERM, Redis comes back and the breaker closes, and health stays
/// NOT_SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_recovery_during_the_delay_does_not_turn_health_back_on() {
    let redis = crate::support::redis::RedisServer::start();
    let url = redis.url();
    let s = Sluice::start(
        CONFIG,
        &[
            "--redis-url",
            &url,
            "--failure-mode",
            "allow",
            "--redis-timeout",
            "50",
            "--shutdown-delay",
            "8",
        ],
    );
    let c = s.client().await;
    let h = HealthClient::new(s.channel().await);
    let r = req("life", vec![desc(&[("k", "v")])]);
    redis.pause();
    let down = crate::support::eventually(Duration::from_secs(10), || {
        let (mut c, r, s) = (c.clone(), r.clone(), &s);
        async move {
            let _ = c.should_rate_limit(r).await;
            s.metrics().await.contains("sluice_store_breaker_state 1")
        }
    })
    .await;
    assert!(down, "the breaker did not open");
    assert_eq!(
        health_of(&mut h.clone(), "").await,
        ServingStatus::Serving as i32,
        "health does not follow the shared store"
    );

    s.terminate();
    redis.resume();
    let recovered = crate::support::eventually(Duration::from_secs(5), || {
        let (mut c, r, s) = (c.clone(), r.clone(), &s);
        async move {
            let _ = c.should_rate_limit(r).await;
            s.metrics().await.contains("sluice_store_breaker_state 0")
        }
    })
    .await;
    assert!(recovered, "the breaker did not close again");
    // The health task polls every 500 ms: give it time to misbehave.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut h = h.clone();
    for service in SERVICES {
        assert_eq!(
            health_of(&mut h, service).await,
            ServingStatus::NotServing as i32,
            "{service:?}"
        );
    }
    assert_eq!(readyz(&s).await, 503);
}

/// A call whose headers reached sluice before SIGTERM and whose message
/// arrives 300 ms after it is answered, with the shutdown delay at 0 so
/// the call spans the drain itself.
#[tokio::test]
async fn call_open_at_sigterm_is_answered() {
    let mut s = Sluice::start(CONFIG, &["--shutdown-delay", "0", "--drain-timeout", "5"]);
    let call = SplitCall::open(s.grpc_addr).await;
    s.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = call.finish(&req("life", vec![desc(&[("k", "v")])])).await;
    let (status, response) = answer.unwrap();
    assert_eq!(status, "0");
    assert_eq!(response.unwrap().overall_code, OK);
    let exit = tokio::task::spawn_blocking(move || s.wait_exit(Duration::from_secs(8)))
        .await
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}
