//! Overload protection through the real binary: the bound on decision
//! calls in flight (`--max-concurrent-requests`) refuses past it at once,
//! over gRPC, `/json` and `/auth`, while health still answers; a call's
//! deadline (`grpc-timeout`, else `--request-timeout`) frees its slot and a
//! call past its deadline is not decided; all metered.

use std::time::{Duration, Instant};

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::support::split_call::SplitCall;
use crate::support::{OK, Sluice, call, desc, req};

const CONFIG: &str = "domain: load\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1000}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_concurrency_bound_calls_are_refused_at_once_and_deadlines_free_slots() {
    let s = Sluice::start(
        CONFIG,
        &["--max-concurrent-requests", "1", "--request-timeout", "2"],
    );
    let mut c = s.client().await;
    let r = req("load", vec![desc(&[("k", "v")])]);
    assert_eq!(call(&mut c, r.clone()).await.overall_code, OK);

    // A call whose message never comes holds the one slot until its
    // grpc-timeout (800 ms) passes.
    let held = SplitCall::open_with(s.grpc_addr, &[("grpc-timeout", "800m")]).await;
    holding(&s).await;
    let opened = Instant::now();
    let err = c.should_rate_limit(r.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        err.message(),
        "too many concurrent requests: 1 in flight is the limit (--max-concurrent-requests)"
    );
    let json = reqwest::Client::new()
        .post(s.http("/json"))
        .body(r#"{"domain":"load","descriptors":[{"entries":[{"key":"k","value":"v"}]}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 503);
    assert_eq!(json.headers()["retry-after"], "1");
    assert!(
        json.text()
            .await
            .unwrap()
            .contains("--max-concurrent-requests"),
        "the 503 names the bound"
    );
    let auth = reqwest::get(s.http("/auth/x")).await.unwrap();
    assert_eq!(auth.status(), 503);
    assert!(
        auth.headers()["x-sluice-problem"]
            .to_str()
            .unwrap()
            .contains("OVERLOADED")
    );
    // Probes are not counted against the bound.
    let mut h = HealthClient::new(s.channel().await);
    let status = h
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    assert_eq!(reqwest::get(s.http("/readyz")).await.unwrap().status(), 200);
    assert!(
        opened.elapsed() < Duration::from_millis(800),
        "the checks above ran past the held call's deadline; they prove nothing"
    );

    // Its deadline passes: sluice answers it DEADLINE_EXCEEDED, and the
    // slot is free again.
    let (code, _) = held.answer().await.unwrap();
    assert_eq!(code, "4", "DEADLINE_EXCEEDED");
    assert_eq!(call(&mut c, r.clone()).await.overall_code, OK);

    // No grpc-timeout: --request-timeout (2 s) bounds it instead.
    let held = SplitCall::open(s.grpc_addr).await;
    holding(&s).await;
    let opened = Instant::now();
    assert_eq!(
        c.should_rate_limit(r.clone()).await.unwrap_err().code(),
        tonic::Code::ResourceExhausted
    );
    let (code, _) = held.answer().await.unwrap();
    assert_eq!(code, "4");
    assert!(opened.elapsed() >= Duration::from_millis(1500));
    assert_eq!(call(&mut c, r).await.overall_code, OK);

    // A call whose deadline has already passed is not decided: its
    // descriptor's counter is untouched.
    let fresh = req("load", vec![desc(&[("k", "fresh")])]);
    let mut late = tonic::Request::new(fresh.clone());
    late.metadata_mut().insert(
        "grpc-timeout",
        tonic::metadata::MetadataValue::from_static("0n"),
    );
    let err = c.should_rate_limit(late).await.unwrap_err();
    // Answered before its message was read, the stream is reset under the
    // client's send at times, which the client reports as CANCELLED.
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{err:?}"
    );
    let first = call(&mut c, fresh).await;
    assert_eq!(first.overall_code, OK);
    assert_eq!(
        first.statuses[0].limit_remaining, 999,
        "the late call was counted"
    );

    let metrics = s.metrics().await;
    for line in [
        "sluice_requests_shed_total{reason=\"concurrency\"} 4",
        "sluice_requests_shed_total{reason=\"deadline\"} 3",
        "sluice_requests_abandoned_total 0",
        "sluice_requests_in_flight 0",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}

/// Waits (2 s at most) until sluice has admitted the held call: its
/// headers were read before the PONG, but the call may be admitted a
/// moment later on another task.
async fn holding(s: &Sluice) {
    for _ in 0..100 {
        if s.metrics().await.contains("sluice_requests_in_flight 1") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the held call was never admitted");
}
