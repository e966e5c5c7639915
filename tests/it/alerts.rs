//! The alert rules (deploy/prometheus/sluice-rules.yaml) and the dashboard
//! (deploy/grafana/sluice.json), checked with the real tools from Debian's
//! `prometheus` package (installed by the test command): `promtool check
//! rules` and `promtool test rules`, then a real Prometheus server scraping
//! a real sluice under load while the test stops Redis. The store-degraded
//! alert must go pending, then firing; every dashboard query, every
//! recording rule and every metric an alert reads must return data from
//! the live server; the latency histogram's exemplars must name traces a
//! real OTLP receiver got.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::otlp::Receiver;
use crate::support::redis::{RedisServer, free_port};
use crate::support::{Opts, Sluice, desc, req, tool};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

const RULES: &str = "deploy/prometheus/sluice-rules.yaml";
const RULE_TESTS: &str = "deploy/prometheus/sluice-rules.test.yaml";
const DASHBOARD: &str = "deploy/grafana/sluice.json";

fn promtool(args: &[&str]) -> String {
    let out = Command::new(tool("promtool"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn promtool_checks_and_tests_every_rule() {
    let out = promtool(&["check", "rules", RULES]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["test", "rules", RULE_TESTS]);
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert of the rules file has a unit test and a runbook.
    let rules = std::fs::read_to_string(root().join(RULES)).unwrap();
    let tests = std::fs::read_to_string(root().join(RULE_TESTS)).unwrap();
    let runbooks = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for a in alerts {
        assert!(
            tests.contains(&format!("alertname: {a}")),
            "{a} has no promtool test"
        );
        assert!(
            runbooks.contains(&format!("### {a}")),
            "{a} has no runbook in docs/operations.md"
        );
        assert!(
            rules.contains(&format!("docs/operations.md#{}", a.to_lowercase())),
            "{a} has no runbook_url"
        );
    }
}

/// The queries of the dashboard, with Grafana's variables filled in as a
/// viewer of this one job would have them.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join(DASHBOARD)).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap_or("").to_string();
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$job", "sluice")
                .replace("$instance", ".*");
            assert!(!expr.contains('$'), "unfilled variable in {expr}");
            out.push((title.clone(), expr));
        }
    }
    assert!(out.len() >= 15, "{out:?}");
    out
}

/// The recording rules' expressions, and every metric the alerts read
/// (through recording rules or directly).
fn rule_queries() -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(root().join(RULES)).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut recorded = Vec::new();
    let mut metrics = Vec::new();
    for group in doc["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let expr = rule["expr"].as_str().unwrap().to_string();
            if rule.get("record").is_some() {
                recorded.push(expr.clone());
            }
            let mut rest = expr.as_str();
            while let Some(i) = rest.find("sluice_").or_else(|| rest.find("process_")) {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                if !metrics.contains(&name) {
                    metrics.push(name);
                }
            }
        }
    }
    (recorded, metrics)
}

struct Prometheus {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `target` every second, evaluates the rules every second.
    async fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules: PathBuf = root().join(RULES);
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        );
        let path = dir.path().join("prometheus.yml");
        std::fs::write(&path, config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--enable-feature=exemplar-storage")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/-/ready", p.url)).await
                && r.status() == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 30 s:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> serde_json::Value {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .query(query)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["status"], "success", "{path} {query:?}: {v}");
        v["data"].clone()
    }

    /// The result vector of an instant query.
    async fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        self.api("/api/v1/query", &[("query", expr)]).await["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The state of `alert` (pending, firing), if it is active.
    async fn alert_state(&self, alert: &str) -> Option<String> {
        let data = self.api("/api/v1/alerts", &[]).await;
        data["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == alert)
            .and_then(|a| a["state"].as_str().map(String::from))
    }
}

const CONFIG: &str = "domain: obs\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1000000, name: plenty}\n  - key: hot\n    rate_limit: {unit: minute, requests_per_unit: 1, name: tiny}\n";

/// Calls of every kind, about 50 a second, until `stop` (bounded by
/// `limit` whatever happens).
async fn load(s: &Sluice, stop: Arc<AtomicBool>, limit: Duration) -> tokio::task::JoinHandle<()> {
    use sluice::grpc::pb::sluice::v1::admin_service_client::AdminServiceClient;
    use sluice::grpc::pb::sluice::v1::key_service_client::KeyServiceClient;
    use sluice::grpc::pb::sluice::v1::{ListPlansRequest, ValidateKeyRequest};
    let mut rls = s.client().await;
    let mut keys = KeyServiceClient::new(s.channel().await);
    let mut admin = AdminServiceClient::new(s.admin_channel().await);
    tokio::spawn(async move {
        let deadline = Instant::now() + limit;
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let _ = rls
                .should_rate_limit(req("obs", vec![desc(&[("k", "v")])]))
                .await;
            let _ = rls
                .should_rate_limit(req("obs", vec![desc(&[("hot", "x")])]))
                .await;
            if i.is_multiple_of(5) {
                let _ = keys
                    .validate_key(ValidateKeyRequest {
                        key: "sk_live_not_a_key".into(),
                        ..ValidateKeyRequest::default()
                    })
                    .await;
                let _ = admin.list_plans(ListPlansRequest::default()).await;
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_only_prometheus_fires_the_store_alert_and_every_query_has_data() {
    let mut redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    // A key store too, so its metrics (read by the key-store and usage
    // alerts and the dashboard) are exported.
    let db = crate::support::db::TestDb::new(crate::support::db::Kind::Sqlite).await;
    let s = Sluice::start_with(
        CONFIG,
        Opts {
            args: &[
                "--redis-url",
                &redis.url(),
                "--failure-mode",
                "allow",
                "--otel-endpoint",
                &receiver.grpc_url(),
                "--database-url",
                &db.url,
            ],
            env: &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_BSP_SCHEDULE_DELAY", "200"),
                ("SLUICE_JWT_SECRET", crate::keys::SECRET),
                ("SLUICE_KEY_SECRET", crate::keys::KEY_SECRET),
            ],
            ..Opts::default()
        },
    );
    let prom = Prometheus::start(&s.http_addr.to_string()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let driver = load(&s, stop.clone(), Duration::from_secs(240)).await;

    // A rejected reload, then a good one: both counters move.
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::write(&s.config_path, "domain: obs\ndescriptors: [oops").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::write(&s.config_path, format!("{CONFIG}# reloaded\n")).unwrap();

    // Every dashboard query, every recording rule and every metric an
    // alert reads returns data from the live server.
    let dashboard = dashboard_queries();
    let (recorded, metrics) = rule_queries();
    let mut missing = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        missing.clear();
        for (title, expr) in &dashboard {
            if prom.query(expr).await.is_empty() {
                missing.push(format!("dashboard panel {title:?}: {expr}"));
            }
        }
        for expr in &recorded {
            if prom.query(expr).await.is_empty() {
                missing.push(format!("recording rule: {expr}"));
            }
        }
        for m in &metrics {
            if prom
                .query(&format!("{m}{{job=\"sluice\"}}"))
                .await
                .is_empty()
            {
                missing.push(format!("metric read by a rule: {m}"));
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(
        missing.is_empty(),
        "queries without data:\n{}\nprometheus log:\n{}",
        missing.join("\n"),
        prom.log()
    );
    // The reloads were seen.
    assert!(
        !prom
            .query("sluice_config_load_error_total > 0")
            .await
            .is_empty()
    );

    // Exemplars: the latency buckets point at traces the receiver got.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let data = prom
        .api(
            "/api/v1/query_exemplars",
            &[
                ("query", "sluice_rpc_duration_seconds_bucket"),
                ("start", &(now - 300).to_string()),
                ("end", &(now + 10).to_string()),
            ],
        )
        .await;
    let ids: Vec<String> = data
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["labels"]["trace_id"].as_str().map(String::from))
        .collect();
    assert!(!ids.is_empty(), "no exemplars: {data}");
    let got = receiver.spans();
    assert!(
        ids.iter()
            .any(|id| got.iter().any(|span| &span.trace_id == id)),
        "no exemplar names a received trace: {ids:?}"
    );

    // Redis goes away: the store-degraded alert goes pending, then firing
    // once its `for: 1m` has passed.
    let healthy = prom.alert_state("SluiceCounterStoreDegraded").await;
    assert_eq!(healthy, None, "alerting before Redis stopped");
    tokio::task::spawn_blocking(move || {
        redis.stop();
        redis
    })
    .await
    .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    while Instant::now() < deadline {
        let state = prom.alert_state("SluiceCounterStoreDegraded").await;
        if let Some(st) = &state
            && seen.last() != Some(st)
        {
            seen.push(st.clone());
        }
        if state.as_deref() == Some("firing") {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        seen,
        vec!["pending".to_string(), "firing".to_string()],
        "store alert states; sluice metrics:\n{}",
        s.metrics().await
    );
    // Decisions went on throughout (failure mode allow).
    let mut client = s.client().await;
    let r = client
        .should_rate_limit(req("obs", vec![desc(&[("k", "v")])]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.overall_code, crate::support::OK);
    stop.store(true, Ordering::Relaxed);
    let _ = driver.await;
}
