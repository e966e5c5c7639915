//! Usage counts are written exactly once, on SQLite and on a real
//! PostgreSQL. Through the repository: the same batch (flush id) written
//! twice counts once, two batches add up, a batch of more rows than one
//! statement takes is written whole, pruned ids are forgotten. Through the
//! real binary: flushes failing while `usage_daily` is renamed away, and a
//! flush whose COMMIT succeeded but whose answer was lost (a proxy cuts
//! the connection right after it), leave every request counted once.

use std::time::Duration;

use sluice::grpc::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use sluice::grpc::pb::sluice::v1 as pb;
use sluice::keys::repo::{Applied, Repository, USAGE_ROWS_PER_STATEMENT, UsageDelta};
use sqlx::Connection as _;

use crate::keys::{Admin, create_key, create_plan, limit, start_config};
use crate::support::db::{Kind, TestDb};
use crate::support::proxy::{Mode, Proxy};
use crate::support::{OK, Sluice, codes, desc, eventually, metric, on_both, req, sample};

// === the repository ===

const DAY: &str = "2026-12-02";
const NOW: i64 = 1_800_000_000_000;
const DAY_MS: i64 = 86_400_000;

async fn repo(db: &TestDb) -> Repository {
    let r = Repository::connect(&db.url, 2).await.unwrap();
    r.migrate().await.unwrap();
    r
}

fn delta(key: &str, admitted: u64, limited: u64) -> UsageDelta {
    UsageDelta {
        key_id: key.into(),
        day: DAY.into(),
        admitted,
        limited,
    }
}

/// (rows, admitted, limited) of `DAY`.
async fn totals(r: &Repository) -> (usize, u64, u64) {
    let rows = r.usage("", DAY, DAY, ("", ""), 1_000_000).await.unwrap();
    (
        rows.len(),
        rows.iter().map(|d| d.admitted).sum(),
        rows.iter().map(|d| d.limited).sum(),
    )
}

on_both!(the_same_batch_twice_counts_once);
async fn the_same_batch_twice_counts_once(kind: Kind) {
    let db = TestDb::new(kind).await;
    let r = repo(&db).await;
    let batch = [delta("k1", 3, 1), delta("k2", 1, 0)];
    let written = r.add_usage("flush-a", NOW, &batch, &[]).await.unwrap();
    assert_eq!(written, Applied::Written);
    // A retry of a batch that was written (its answer lost): skipped.
    let again = r.add_usage("flush-a", NOW, &batch, &[]).await.unwrap();
    assert_eq!(again, Applied::AlreadyApplied);
    assert_eq!(totals(&r).await, (2, 4, 1));
    // Another batch adds up.
    let other = r.add_usage("flush-b", NOW, &batch, &[]).await.unwrap();
    assert_eq!(other, Applied::Written);
    assert_eq!(totals(&r).await, (2, 8, 2));
    r.close().await;
}

on_both!(a_batch_over_one_statement_is_written_whole);
async fn a_batch_over_one_statement_is_written_whole(kind: Kind) {
    let db = TestDb::new(kind).await;
    let r = repo(&db).await;
    let n = USAGE_ROWS_PER_STATEMENT * 2 + 7;
    let mut batch: Vec<UsageDelta> = (0..n).map(|i| delta(&format!("k{i:05}"), 1, 2)).collect();
    // One key and day twice: summed (PostgreSQL would refuse an upsert
    // meeting one row twice).
    batch.push(delta("k00000", 1, 0));
    let last_used: Vec<(String, i64)> = (0..n).map(|i| (format!("k{i:05}"), NOW)).collect();
    assert_eq!(
        r.add_usage("big", NOW, &batch, &last_used).await.unwrap(),
        Applied::Written
    );
    assert_eq!(totals(&r).await, (n, n as u64 + 1, 2 * n as u64));
    r.close().await;
}

on_both!(pruned_flush_ids_are_forgotten);
async fn pruned_flush_ids_are_forgotten(kind: Kind) {
    let db = TestDb::new(kind).await;
    let r = repo(&db).await;
    let batch = [delta("k", 1, 0)];
    assert_eq!(
        r.add_usage("old", NOW - 2 * DAY_MS, &batch, &[])
            .await
            .unwrap(),
        Applied::Written
    );
    assert_eq!(
        r.add_usage("new", NOW, &batch, &[]).await.unwrap(),
        Applied::Written
    );
    assert_eq!(r.prune_flushes(NOW - DAY_MS).await.unwrap(), 1);
    assert_eq!(
        r.add_usage("new", NOW, &batch, &[]).await.unwrap(),
        Applied::AlreadyApplied
    );
    assert_eq!(
        r.add_usage("old", NOW, &batch, &[]).await.unwrap(),
        Applied::Written
    );
    assert_eq!(totals(&r).await, (1, 3, 0));
    r.close().await;
}

// === through the binary ===

const CONFIG: &str = "\
domain: gateway
api_key:
  descriptor_key: x-api-key
  on_invalid: deny
descriptors:
  - key: path
    rate_limit: {unit: minute, requests_per_unit: 1000}
";

const FLUSHED: &str = "sluice_usage_flushes_total{outcome=\"ok\"}";
const FAILED: &str = "sluice_usage_flushes_total{outcome=\"error\"}";

/// `sluice_usage_flush_lag_seconds`.
async fn lag(s: &Sluice) -> f64 {
    let text = s.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix("sluice_usage_flush_lag_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sluice_usage_flush_lag_seconds in\n{text}"))
}

/// A key on a plan of 1000 an hour: (id, secret).
async fn a_key(s: &Sluice) -> (String, String) {
    let mut a = Admin::new(s, "all").await;
    create_plan(&mut a, "p", vec![limit(1000, pb::Unit::Hour)]).await;
    let (key, secret) = create_key(&mut a, "p", &[]).await;
    (key.id, secret)
}

fn keyed(secret: &str) -> RateLimitRequest {
    req("gateway", vec![desc(&[("x-api-key", secret)])])
}

/// (admitted, limited) of `key_id`, all days, as GetUsage reads them.
async fn usage_of(a: &Admin, key_id: &str) -> (u64, u64) {
    let r = a.req(pb::GetUsageRequest {
        key_id: key_id.into(),
        ..Default::default()
    });
    let days = a
        .client
        .clone()
        .get_usage(r)
        .await
        .unwrap()
        .into_inner()
        .days;
    days.iter()
        .fold((0, 0), |t, d| (t.0 + d.admitted, t.1 + d.limited))
}

const WAIT: Duration = Duration::from_secs(10);

on_both!(failed_flushes_count_every_request_once);
async fn failed_flushes_count_every_request_once(kind: Kind) {
    let db = TestDb::new(kind).await;
    let s = start_config(&db, CONFIG, &[]);
    let (key_id, secret) = a_key(&s).await;
    let a = Admin::new(&s, "all").await;
    let mut rls = s.client().await;
    let r = keyed(&secret);
    assert_eq!(codes(&mut rls, &r, 5).await, vec![OK; 5]);
    assert!(eventually(WAIT, || async { usage_of(&a, &key_id).await == (5, 0) }).await);

    // The table goes away: a flush fails and holds its batch; requests
    // after that wait beside it while the next flushes fail too.
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    sqlx::query("ALTER TABLE usage_daily RENAME TO usage_daily_away")
        .execute(&mut c)
        .await
        .unwrap();
    let failed = metric(&s, FAILED).await;
    assert_eq!(codes(&mut rls, &r, 7).await, vec![OK; 7]);
    assert!(eventually(WAIT, || async { metric(&s, FAILED).await > failed }).await);
    let failed = metric(&s, FAILED).await;
    assert_eq!(codes(&mut rls, &r, 4).await, vec![OK; 4]);
    assert!(eventually(WAIT, || async { metric(&s, FAILED).await > failed }).await);

    // Back: everything is written, once.
    sqlx::query("ALTER TABLE usage_daily_away RENAME TO usage_daily")
        .execute(&mut c)
        .await
        .unwrap();
    assert!(
        eventually(WAIT, || async {
            lag(&s).await == 0.0 && usage_of(&a, &key_id).await == (16, 0)
        })
        .await,
        "{:?}\n{}",
        usage_of(&a, &key_id).await,
        s.metrics().await
    );
    // Later flushes add nothing.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(usage_of(&a, &key_id).await, (16, 0));
    let k = a.req(pb::GetKeyRequest { id: key_id });
    let key = a.client.clone().get_key(k).await.unwrap().into_inner();
    assert!(key.last_used_at.is_some(), "{key:?}");
    c.close().await.unwrap();
}

/// The defect: a batch whose COMMIT went through but whose answer was lost
/// was merged back and written again, counting its requests twice (and
/// again at every flush while answers were lost).
#[tokio::test(flavor = "multi_thread")]
async fn a_flush_whose_commit_answer_is_lost_counts_once() {
    let db = TestDb::new(Kind::Postgres).await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    // In clear, for the proxy to see the COMMIT.
    let url = format!("{}?sslmode=disable", proxy.url_for(&db.url));
    let s = start_config(&db, CONFIG, &["--database-url", url.as_str()]);
    let (key_id, secret) = a_key(&s).await;
    let a = Admin::new(&s, "all").await;
    let mut rls = s.client().await;
    let r = keyed(&secret);
    // The key is cached, its first request written.
    assert_eq!(codes(&mut rls, &r, 1).await, vec![OK]);
    assert!(
        eventually(WAIT, || async {
            metric(&s, FLUSHED).await >= 1 && usage_of(&a, &key_id).await == (1, 0)
        })
        .await
    );
    let (flushed, failed) = (metric(&s, FLUSHED).await, metric(&s, FAILED).await);

    proxy.set(Mode::LoseCommitAnswer);
    assert_eq!(codes(&mut rls, &r, 9).await, vec![OK; 9]);
    // Each batch commits, and its flush fails as far as sluice can tell;
    // retried under its id, it is found written, which takes no COMMIT:
    // a flush succeeds and nothing waits.
    assert!(
        eventually(WAIT, || async {
            let m = s.metrics().await;
            sample(&m, FAILED) > failed && sample(&m, FLUSHED) > flushed && lag(&s).await == 0.0
        })
        .await,
        "{}",
        s.metrics().await
    );
    proxy.set(Mode::Forward);
    assert!(
        eventually(WAIT, || async { usage_of(&a, &key_id).await == (10, 0) }).await,
        "{:?}",
        usage_of(&a, &key_id).await
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(usage_of(&a, &key_id).await, (10, 0));
}
