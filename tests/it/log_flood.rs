//! Per-request error logs are aggregated during an outage: with the key
//! store broken under sluice, a burst of ValidateKey calls that each fail
//! logs the first failure, then at most one line per 10 s that carries how
//! many times it happened, never one line per request.

use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use sluice::grpc::pb::sluice::v1 as pb;
use sluice::grpc::pb::sluice::v1::key_service_client::KeyServiceClient;
use sqlx::Connection as _;

use crate::support::Sluice;

const CONFIG: &str = "\
domain: d
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 10}
";

const LINE: &str = "key request failed";

/// The log lines holding [`LINE`] that arrive within `quiet` of each other.
fn drain(s: &Sluice, quiet: Duration) -> Vec<String> {
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match s.logs.recv_timeout(quiet) {
            Ok(l) if l.contains(LINE) => lines.push(l),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return lines,
        }
        assert!(Instant::now() < deadline, "the log never went quiet");
    }
}

/// The `occurrences=N` of a line.
fn occurrences(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("occurrences="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no occurrences= in {line}"))
}

async fn validate_unknown(c: &mut KeyServiceClient<tonic::transport::Channel>, i: usize) {
    let e = c
        .validate_key(pb::ValidateKeyRequest {
            key: format!("sk_live_flood{i:06}"),
            ..pb::ValidateKeyRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn key_store_failures_are_logged_once_per_window_with_a_count() {
    let s = Sluice::start(
        CONFIG,
        &[
            "--failed-validations-per-minute",
            "0",
            "--key-store-failure-mode",
            "deny",
            "--key-cache-size",
            "0",
        ],
    );
    let db = format!("sqlite://{}/data/sluice.db", s.dir.path().display());
    let mut conn = sqlx::SqliteConnection::connect(&db).await.unwrap();
    sqlx::query("ALTER TABLE key_secrets RENAME TO key_secrets_away")
        .execute(&mut conn)
        .await
        .unwrap();

    // 200 failing calls, 10 at a time.
    let channel = s.channel().await;
    let mut tasks = Vec::new();
    for t in 0..10 {
        let mut c = KeyServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                validate_unknown(&mut c, t * 100 + i).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let burst = drain(&s, Duration::from_millis(500));
    assert!(
        (1..=3).contains(&burst.len()),
        "{} lines for 200 failures:\n{}",
        burst.len(),
        burst.join("\n")
    );
    assert!(burst[0].contains("first occurrence"), "{}", burst[0]);

    // Past the window, the next failure's line counts every failure since
    // the previous line: all 201 are accounted for.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    validate_unknown(&mut KeyServiceClient::new(channel), 999_999).await;
    let after = drain(&s, Duration::from_millis(500));
    assert_eq!(after.len(), 1, "{after:#?}");
    assert!(after[0].contains("times in the last"), "{}", after[0]);
    let total: u64 = burst.iter().chain(&after).map(|l| occurrences(l)).sum();
    assert_eq!(total, 201, "{burst:#?}\n{after:#?}");
    assert!(occurrences(&after[0]) > 1, "{}", after[0]);

    sqlx::query("ALTER TABLE key_secrets_away RENAME TO key_secrets")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}
