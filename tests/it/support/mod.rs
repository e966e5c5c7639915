//! Test support: start the real binary, wait for its listening line, and
//! give tests a gRPC client and an HTTP base URL. Every wait is bounded.

#![allow(dead_code)]

pub mod certs;
pub mod db;
pub mod otlp;
pub mod pg;
pub mod proxy;
pub mod redis;
pub mod split_call;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice::grpc::pb::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry,
};
use sluice::grpc::pb::envoy::service::ratelimit::v3::{
    RateLimitRequest, RateLimitResponse, rate_limit_service_client::RateLimitServiceClient,
};
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A running sluice process, killed on drop.
pub struct Sluice {
    pub child: Child,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The admin listener, unless turned off with `--admin-grpc-addr ""`.
    pub admin_addr: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// Log lines up to and including "sluice listening".
    pub startup: Vec<String>,
    pub logs: mpsc::Receiver<String>,
}

/// Options for [`Sluice::start_with`].
#[derive(Default)]
pub struct Opts<'a> {
    pub args: &'a [&'a str],
    pub env: &'a [(&'a str, &'a str)],
    /// Write the config as a directory with this file name instead of a file.
    pub as_dir: bool,
    /// Start under this umask (octal, e.g. "022") instead of the test's.
    pub umask: Option<&'a str>,
    /// How long to wait for "sluice listening" (default 20 s).
    pub start_within: Option<Duration>,
}

impl Sluice {
    /// Starts sluice on `config` (YAML text) with extra `args`.
    pub fn start(config: &str, args: &[&str]) -> Sluice {
        Sluice::start_with(
            config,
            Opts {
                args,
                ..Opts::default()
            },
        )
    }

    pub fn start_with(config: &str, opts: Opts<'_>) -> Sluice {
        let dir = tempfile::tempdir().unwrap();
        let config_path = if opts.as_dir {
            let d = dir.path().join("config");
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("config.yaml"), config).unwrap();
            d
        } else {
            let f = dir.path().join("config.yaml");
            std::fs::write(&f, config).unwrap();
            f
        };
        Sluice::start_on_path(dir, config_path, &opts)
    }

    /// Starts sluice on an existing config path kept in `dir`.
    pub fn start_on_path(dir: tempfile::TempDir, config_path: PathBuf, opts: &Opts<'_>) -> Sluice {
        let mut cmd = match opts.umask {
            None => Command::new(BIN),
            Some(mask) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", &format!("umask {mask} && exec \"$0\" \"$@\""), BIN]);
                sh
            }
        };
        let store = if opts.args.contains(&"--redis-url") {
            Vec::new()
        } else {
            store_args()
        };
        // Keys live in a SQLite file of this test's own unless told otherwise.
        let db = if opts.args.contains(&"--database-url") {
            Vec::new()
        } else {
            vec![
                "--database-url".to_string(),
                format!("sqlite://{}/data/sluice.db", dir.path().display()),
            ]
        };
        // An admin listener of this test's own, unless the test picks one.
        let admin = if opts.args.contains(&"--admin-grpc-addr")
            || opts.env.iter().any(|(k, _)| *k == "SLUICE_ADMIN_GRPC_ADDR")
        {
            Vec::new()
        } else {
            vec!["--admin-grpc-addr", "127.0.0.1:0"]
        };
        cmd.arg("serve")
            .args(&store)
            .args(&db)
            .arg("--config")
            .arg(&config_path)
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(&admin)
            .args(if opts.args.contains(&"--log-format") {
                Vec::new()
            } else {
                // TEST_LOG_LEVEL=sluice=debug (with TEST_LOG=1) to see more.
                let level = std::env::var("TEST_LOG_LEVEL").unwrap_or_else(|_| "info".to_owned());
                vec![
                    "--log-format".to_owned(),
                    "text".to_owned(),
                    "--log-level".to_owned(),
                    level,
                ]
            })
            .args(opts.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Tests stop sluice often: no shutdown delay unless a test asks for
        // one (a `--shutdown-delay` argument wins over this).
        cmd.env("SLUICE_SHUTDOWN_DELAY", "0");
        for (k, v) in opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start sluice");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("TEST_LOG").is_some() {
                        eprintln!("[sluice] {line}");
                    }
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let limit = opts.start_within.unwrap_or(Duration::from_secs(20));
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if line.contains("sluice listening") {
                        let grpc_addr = field(&line, "grpc_addr=").parse().unwrap();
                        let http_addr = field(&line, "http_addr=").parse().unwrap();
                        let admin_addr = match field(&line, "admin_grpc_addr=") {
                            "off" => None,
                            a => Some(a.parse().unwrap()),
                        };
                        return Sluice {
                            child,
                            grpc_addr,
                            http_addr,
                            admin_addr,
                            dir,
                            config_path,
                            startup: {
                                seen.push(line);
                                seen
                            },
                            logs: rx,
                        };
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "sluice did not start within {limit:?}; output:\n{}",
                        seen.join("\n")
                    );
                }
            }
        }
    }

    pub async fn client(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::new(self.channel().await)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc_addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap()
    }

    /// A channel to the admin listener.
    pub async fn admin_channel(&self) -> Channel {
        let addr = self.admin_addr.expect("the admin listener is on");
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap()
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.http("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(ok.success());
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) until the PostgreSQL key-change listener is
    /// listening. It drops everything cached when it connects (changes made
    /// while it was not listening are unknown), and under load its first
    /// connect can come after a test's first lookup: a test that needs a
    /// cached entry to stay waits for it first. (With Redis configured, the
    /// Redis listener's line says "on Redis" and is skipped.)
    pub fn wait_key_listener(&self) {
        while self
            .wait_log("listening for key changes", Duration::from_secs(10))
            .contains("on Redis")
        {}
    }

    /// Waits (bounded) for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line containing {needle:?} within {limit:?}"),
            }
        }
    }

    pub fn config_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what sluice said (the lines no step of the
        // test read), so a failure seen once in CI carries its cause.
        if std::thread::panicking() && std::env::var_os("TEST_LOG").is_none() {
            let unread: Vec<String> = self.logs.try_iter().collect();
            let skip = unread.len().saturating_sub(200);
            eprintln!(
                "---- sluice on {} (start-up, then the last {} unread lines) ----\n{}\n...\n{}",
                self.grpc_addr,
                unread.len() - skip,
                self.startup.join("\n"),
                unread[skip..].join("\n")
            );
        }
    }
}

/// Whether this run of the suite keeps counters in Redis
/// (`SLUICE_IT_STORE=redis-cluster`, set by scripts/test.sh for its second
/// pass) rather than in memory.
pub fn on_redis() -> bool {
    std::env::var("SLUICE_IT_STORE").is_ok_and(|v| v == "redis-cluster")
}

/// Extra `serve` arguments for the store under test: none for memory; for
/// Redis, the run's shared 3+3 cluster and a key prefix of this process's
/// own, so tests never see each other's counters.
fn store_args() -> Vec<String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    if !on_redis() {
        return Vec::new();
    }
    let cluster = redis::RedisCluster::shared();
    let prefix = format!(
        "it{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    vec![
        "--redis-url".into(),
        cluster.url(),
        "--redis-key-prefix".into(),
        prefix,
        // Debug builds under a loaded CI machine: generous, still bounded.
        "--redis-timeout".into(),
        "250".into(),
    ]
}

/// A field of a log line: `name=value` (text) or `"name":"value"` (JSON).
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    if let Some(start) = line.find(name) {
        return line[start + name.len()..]
            .split_whitespace()
            .next()
            .unwrap();
    }
    let key = format!("\"{}\":\"", name.trim_end_matches('='));
    let start = line.find(&key).unwrap() + key.len();
    line[start..].split('"').next().unwrap()
}

/// A descriptor from `key=value` pairs.
pub fn desc(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).to_string(),
                value: (*v).to_string(),
            })
            .collect(),
        limit: None,
        hits_addend: None,
    }
}

/// A request for `domain` with `descriptors`.
pub fn req(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors,
        hits_addend: 0,
    }
}

pub const OK: i32 = 1;
pub const OVER: i32 = 2;

/// Sends one request and returns the response.
pub async fn call(
    client: &mut RateLimitServiceClient<Channel>,
    r: RateLimitRequest,
) -> RateLimitResponse {
    client.should_rate_limit(r).await.unwrap().into_inner()
}

/// Overall codes of `n` identical calls.
pub async fn codes(
    client: &mut RateLimitServiceClient<Channel>,
    r: &RateLimitRequest,
    n: usize,
) -> Vec<i32> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(call(client, r.clone()).await.overall_code);
    }
    out
}

/// Polls `f` every 50 ms until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Seconds left in the current epoch-aligned window of `unit_secs`.
pub fn secs_left_in_window(unit_secs: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    unit_secs - now % unit_secs
}

/// Waits until at least `need` seconds are left in the current minute, so a
/// per-minute test cannot straddle a window boundary.
pub async fn avoid_minute_boundary(need: u64) {
    let left = secs_left_in_window(60);
    if left < need {
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
}

/// Path of a tool installed by the test command (scripts/test.sh) into
/// `.venv/bin`, or found on PATH.
pub fn tool(name: &str) -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".venv/bin")
        .join(name);
    if venv.exists() {
        return venv;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for p in std::env::split_paths(&paths) {
            let c = p.join(name);
            if c.exists() {
                return c;
            }
        }
    }
    panic!("{name} not found in .venv/bin or PATH: run scripts/test.sh, which installs it");
}

/// The value of one sample (`name` or `name{labels}`, exactly as written)
/// in Prometheus text, 0 when absent.
pub fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name).then(|| v.parse::<f64>().ok())?
        })
        .map_or(0, |v| v as u64)
}

/// One sample of `s`'s `/metrics`, 0 when absent.
pub async fn metric(s: &Sluice, name: &str) -> u64 {
    sample(&s.metrics().await, name)
}

/// `on_both!(f)`: tests `f(Kind)` on SQLite and on PostgreSQL, as
/// `f::sqlite` and `f::postgres`.
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                super::$name(crate::support::db::Kind::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                super::$name(crate::support::db::Kind::Postgres).await;
            }
        }
    };
}
pub(crate) use on_both;
