//! Exactness under concurrency: many real gRPC clients on one key admit
//! exactly the limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::support::{OK, Sluice, avoid_minute_boundary, desc, req};

const CONFIG: &str = r#"
domain: conc
descriptors:
  - key: k
    rate_limit: {unit: hour, requests_per_unit: 250}
  - key: multi
    rate_limits:
      - {unit: hour, requests_per_unit: 300}
      - {unit: day, requests_per_unit: 120}
  - key: bucket
    rate_limit: {unit: hour, requests_per_unit: 1, algorithm: token_bucket, burst: 90}
"#;

async fn admitted(s: &Sluice, key: &str, clients: usize, per_client: usize) -> usize {
    let admitted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        // One connection per client.
        let mut c = s.client().await;
        let admitted = admitted.clone();
        let r = req("conc", vec![desc(&[(key, "shared")])]);
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_client {
                let resp = c.should_rate_limit(r.clone()).await.unwrap().into_inner();
                if resp.overall_code == OK {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    admitted.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_the_limit_is_admitted() {
    avoid_minute_boundary(5).await;
    let s = Sluice::start(CONFIG, &[]);
    assert_eq!(admitted(&s, "k", 32, 25).await, 250);
    assert_eq!(admitted(&s, "multi", 32, 10).await, 120);
    assert_eq!(admitted(&s, "bucket", 32, 10).await, 90);
}
