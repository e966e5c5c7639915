//! The key store at start-up, through the real binary: a fresh SQLite
//! store is private from its first byte, passwords in database URLs never
//! reach the output, and a start that cannot succeed says why in one line
//! and exits non-zero.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::db::{Kind, TestDb, postgres_admin_url};
use crate::support::{BIN, Opts, Sluice};

const CONFIG: &str =
    "domain: ks\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n";

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
