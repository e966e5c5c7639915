//! Start-up, through the real binary: a fresh SQLite store is private
//! from its first byte, passwords in database URLs never reach the output,
//! replicas starting together on one fresh SQLite file all start, a start
//! that cannot succeed says why in one line and exits non-zero, and a
//! PostgreSQL or Redis that comes up after sluice is waited for.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::db::{Kind, TestDb, postgres_admin_url};
use crate::support::pg::PgInstance;
use crate::support::redis::{RedisServer, free_port};
use crate::support::{BIN, Opts, Sluice, call, desc, req};

const CONFIG: &str =
    "domain: ks\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 1}\n";

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Runs `sluice ARGS` to its exit (bounded by `limit`), under umask 022;
/// returns its status and every line it printed.
fn run_to_exit(args: &[&str], env: &[(&str, &str)], limit: Duration) -> (ExitStatus, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let file = std::fs::File::create(&out).unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "umask 022 && exec \"$0\" \"$@\"", BIN])
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "sluice {args:?} did not exit within {limit:?}; output:\n{}",
                std::fs::read_to_string(&out).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&out).unwrap();
    (status, text.lines().map(str::to_string).collect())
}

/// The shared PostgreSQL's URL for database `db`, its password moved into
/// the query string (`?password=`), where the old redactor missed it.
fn url_with_query_password(db: &str) -> (String, String) {
    let admin = postgres_admin_url();
    let (scheme, rest) = admin.split_once("://").unwrap();
    let (userinfo, hostpath) = rest.split_once('@').unwrap();
    let (user, password) = userinfo.split_once(':').unwrap();
    let host = hostpath.split_once('/').unwrap().0;
    (
        format!("{scheme}://{user}@{host}/{db}?password={password}"),
        password.to_string(),
    )
}

#[cfg(unix)]
#[test]
fn memory_only_a_fresh_sqlite_store_is_private_from_the_start() {
    let root = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/a/b/sluice.db", root.path().display());
    let s = Sluice::start_with(
        CONFIG,
        Opts {
            args: &["--database-url", &url],
            umask: Some("022"),
            ..Opts::default()
        },
    );
    let a = root.path().join("a");
    let b = a.join("b");
    assert_eq!(mode(&a), 0o700, "{}", a.display());
    assert_eq!(mode(&b), 0o700, "{}", b.display());
    for f in [
        "sluice.db",
        "sluice.db-wal",
        "sluice.db-shm",
        "key-secret",
        "jwt-secret",
    ] {
        assert_eq!(mode(&b.join(f)), 0o600, "{f}");
    }
    drop(s);

    // `sluice migrate` creates a fresh store the same way.
    let url = format!("sqlite://{}/m/n/keys.db", root.path().display());
    let (status, out) = run_to_exit(
        &["migrate", "--database-url", &url],
        &[],
        Duration::from_secs(30),
    );
    assert!(status.success(), "{out:?}");
    let n = root.path().join("m/n");
    assert_eq!(mode(&root.path().join("m")), 0o700);
    assert_eq!(mode(&n), 0o700);
    assert_eq!(mode(&n.join("keys.db")), 0o600);
}

#[tokio::test]
async fn memory_only_a_password_in_the_database_url_query_is_never_shown() {
    let db = TestDb::new(Kind::Postgres).await;
    let name = db.url.rsplit('/').next().unwrap().to_string();
    let (url, password) = url_with_query_password(&name);
    let mut s = Sluice::start_with(
        CONFIG,
        Opts {
            args: &["--database-url", &url],
            env: &[(
                "SLUICE_KEY_SECRET",
                "it-key-hashing-secret-0123456789abcdef",
            )],
            ..Opts::default()
        },
    );
    let ready = s
        .startup
        .iter()
        .find(|l| l.contains("key store ready"))
        .cloned()
        .unwrap_or_else(|| panic!("no 'key store ready' line in {:?}", s.startup));
    assert!(ready.contains("password=***"), "{ready}");
    for line in &s.startup {
        assert!(!line.contains(&format!("password={password}")), "{line}");
    }
    s.terminate();
    s.wait_exit(Duration::from_secs(20));

    // A start that fails shows the URL too: redacted there as well.
    let config = s.config_path.to_str().unwrap().to_string();
    let (status, out) = run_to_exit(
        &[
            "serve",
            "--config",
            &config,
            "--database-url",
            "postgres://sluice@127.0.0.1:1/x?sslmode=disable&password=hunter2-hunter2",
        ],
        &[],
        Duration::from_secs(60),
    );
    assert!(!status.success());
    for line in &out {
        assert!(!line.contains("hunter2"), "{line}");
    }
}

const KEY_SECRET: &str = "it-key-hashing-secret-0123456789abcdef";

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_default()
}

#[test]
fn memory_only_replicas_starting_together_on_a_fresh_sqlite_file_all_start() {
    const ROUNDS: usize = 6;
    const REPLICAS: usize = 4;
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let root = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/shared/sluice.db", root.path().display());
        let started: Vec<Result<Sluice, String>> = std::thread::scope(|scope| {
            let replicas: Vec<_> = (0..REPLICAS)
                .map(|_| {
                    scope.spawn(|| {
                        Sluice::start_with(
                            CONFIG,
                            Opts {
                                args: &["--database-url", &url],
                                ..Opts::default()
                            },
                        )
                    })
                })
                .collect();
            replicas
                .into_iter()
                .map(|r| r.join().map_err(|e| panic_text(e.as_ref())))
                .collect()
        });
        for (i, r) in started.iter().enumerate() {
            if let Err(e) = r {
                failures.push(format!("round {round}, replica {i}: {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} replicas failed to start:\n{}",
        failures.len(),
        ROUNDS * REPLICAS,
        failures.join("\n")
    );
}

/// The lines a failed start printed that are not log lines: its error.
fn error_lines(out: &[String]) -> Vec<&String> {
    out.iter().filter(|l| l.starts_with("sluice: ")).collect()
}

fn assert_one_clear_line(status: ExitStatus, out: &[String], needles: &[&str]) {
    assert!(!status.success(), "{out:?}");
    let errors = error_lines(out);
    assert_eq!(errors.len(), 1, "one error line expected: {out:?}");
    for n in needles {
        assert!(errors[0].contains(n), "{n:?} not in {:?}", errors[0]);
    }
}

#[tokio::test]
async fn memory_only_a_start_that_cannot_succeed_exits_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let config = config.to_str().unwrap();
    let base = |db: &str| -> Vec<String> {
        [
            "serve",
            "--config",
            config,
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--admin-grpc-addr",
            "127.0.0.1:0",
            "--database-url",
            db,
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect()
    };
    let run = |args: Vec<String>, extra: &[&str], env: &[(&str, &str)]| {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        run_to_exit(&all, env, Duration::from_secs(60))
    };
    let key = [("SLUICE_KEY_SECRET", KEY_SECRET)];

    // Unreachable: retried for --startup-wait, then given up, saying so.
    let closed = format!("postgres://postgres@127.0.0.1:{}/postgres", free_port());
    let (status, out) = run(base(&closed), &["--startup-wait", "1"], &key);
    assert_one_clear_line(
        status,
        &out,
        &[
            "cannot open the key store",
            "Connection refused",
            "--startup-wait 1",
        ],
    );

    // Refused credentials are not worth waiting for, whatever the wait.
    let admin = postgres_admin_url();
    let (_, rest) = admin.split_once('@').unwrap();
    let host = rest.split_once('/').unwrap().0;
    let wrong = format!("postgres://sluice_it_no_such_role:x@{host}/postgres");
    let t = Instant::now();
    let (status, out) = run(base(&wrong), &["--startup-wait", "120"], &key);
    assert_one_clear_line(
        status,
        &out,
        &["cannot open the key store", "sluice_it_no_such_role"],
    );
    assert!(t.elapsed() < Duration::from_secs(60), "retried a refusal");

    // A secret too short: refused before anything is connected.
    let t = Instant::now();
    let (status, out) = run(
        base(&closed),
        &["--startup-wait", "120"],
        &[("SLUICE_KEY_SECRET", "short")],
    );
    assert_one_clear_line(status, &out, &["SLUICE_KEY_SECRET", "at least 32"]);
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "waited for the database first"
    );
    let sqlite = format!("sqlite://{}/db/sluice.db", dir.path().display());
    let (status, out) = run(base(&sqlite), &[], &[("SLUICE_JWT_SECRET", "short")]);
    assert_one_clear_line(status, &out, &["SLUICE_JWT_SECRET", "at least 32"]);

    // A database migrated by a newer sluice: the migration is refused.
    let (status, out) = run_to_exit(
        &["migrate", "--database-url", &sqlite],
        &[],
        Duration::from_secs(30),
    );
    assert!(status.success(), "{out:?}");
    let file = dir.path().join("db/sluice.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (29991231000000, 'from the future', 1, x'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let t = Instant::now();
    let (status, out) = run(base(&sqlite), &["--startup-wait", "120"], &[]);
    assert_one_clear_line(
        status,
        &out,
        &["cannot migrate the key store", "29991231000000"],
    );
    assert!(t.elapsed() < Duration::from_secs(60), "retried a refusal");
}

/// Starts sluice in a thread (it waits up to 20 s for "sluice listening"),
/// lets the dependency stay down for `down`, then runs `bring_up`.
fn start_before<T>(args: Vec<String>, down: Duration, bring_up: impl FnOnce() -> T) -> (Sluice, T) {
    std::thread::scope(|scope| {
        let sluice = scope.spawn(|| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Sluice::start_with(
                CONFIG,
                Opts {
                    args: &args,
                    env: &[("SLUICE_KEY_SECRET", KEY_SECRET)],
                    start_within: Some(Duration::from_secs(60)),
                    ..Opts::default()
                },
            )
        });
        std::thread::sleep(down);
        let up = bring_up();
        let s = sluice
            .join()
            .unwrap_or_else(|e| panic!("sluice did not wait: {}", panic_text(e.as_ref())));
        (s, up)
    })
}

#[tokio::test]
async fn memory_only_a_postgres_that_starts_after_sluice_is_waited_for() {
    let mut pg = PgInstance::init();
    let url = pg.url();
    // Longer than the pool's own 5 s connect timeout.
    let (s, ()) = start_before(
        vec![
            "--database-url".into(),
            url,
            "--startup-wait".into(),
            "60".into(),
        ],
        Duration::from_secs(7),
        || pg.start(),
    );
    assert!(
        s.startup
            .iter()
            .any(|l| l.contains("the key store is not reachable yet")),
        "{:?}",
        s.startup
    );
    drop(s);
    pg.stop();
}

#[tokio::test]
async fn memory_only_a_redis_that_starts_after_sluice_is_waited_for() {
    let mut redis = RedisServer::start();
    redis.stop();
    let url = redis.url();
    let (s, ()) = start_before(
        vec![
            "--redis-url".into(),
            url,
            "--redis-timeout".into(),
            "250".into(),
            "--startup-wait".into(),
            "60".into(),
        ],
        Duration::from_secs(3),
        || redis.start_again(),
    );
    assert!(
        s.startup
            .iter()
            .any(|l| l.contains("Redis is not reachable yet")),
        "{:?}",
        s.startup
    );
    // Counting in that Redis.
    let mut c = s.client().await;
    let r = req("ks", vec![desc(&[("k", "late")])]);
    assert_eq!(
        call(&mut c, r.clone()).await.overall_code,
        crate::support::OK
    );
    assert_eq!(call(&mut c, r).await.overall_code, crate::support::OVER);
}
