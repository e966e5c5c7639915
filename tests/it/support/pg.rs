//! A PostgreSQL server of a test's own, on a free loopback port, that the
//! test starts and stops (a database coming up late, going away): never
//! the shared server the other key-store tests use. `initdb` and
//! `postgres` come from Debian's postgresql package (scripts/test.sh
//! installs it); as root they run as the `postgres` user, as initdb
//! requires.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::free_port;

/// A stopped or running PostgreSQL instance; killed and removed on drop.
pub struct PgInstance {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    versions.sort();
    if let Some(p) = versions.pop() {
        return p;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for p in std::env::split_paths(&paths) {
            if p.join(name).exists() {
                return p.join(name);
            }
        }
    }
    panic!(
        "{name} not found (/usr/lib/postgresql/*/bin or PATH): run scripts/test.sh, which installs postgresql"
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program args...`, as the `postgres` user when we are root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl PgInstance {
    /// A new cluster (trust authentication, user `postgres`), not started.
    pub fn init() -> PgInstance {
        let dir = tempfile::Builder::new()
            .prefix("sluice-pg-")
            .tempdir()
            .unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success(), "chown postgres {}", dir.path().display());
        }
        let out = as_postgres(&pg_bin("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(dir.path().join("data"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        PgInstance {
            dir,
            port: free_port(),
            child: None,
        }
    }

    /// Before [`start`](Self::start): `ssl = on` with `cert`/`key` (PEM),
    /// and TCP connections only over TLS (`hostssl`; `hostnossl` is
    /// rejected). With `client_ca`, clients must also present a
    /// certificate issued by it (`clientcert=verify-ca`).
    pub fn enable_tls(&self, cert: &str, key: &str, client_ca: Option<&str>) {
        let data = self.dir.path().join("data");
        let write = |name: &str, text: &str| {
            let p = data.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            if is_root() {
                assert!(
                    Command::new("chown")
                        .arg("postgres:postgres")
                        .arg(&p)
                        .status()
                        .unwrap()
                        .success()
                );
            }
        };
        write("server.crt", cert);
        write("server.key", key);
        let mut conf =
            "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n".to_string();
        let mut hostssl = "hostssl all all 127.0.0.1/32 trust".to_string();
        if let Some(ca) = client_ca {
            write("client-ca.crt", ca);
            conf.push_str("ssl_ca_file = 'client-ca.crt'\n");
            hostssl.push_str(" clientcert=verify-ca");
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
        write(
            "pg_hba.conf",
            &format!("local all all trust\n{hostssl}\nhostnossl all all 127.0.0.1/32 reject\n"),
        );
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits (30 s at most) until it accepts
    /// connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.path().join("log")).unwrap();
        let child = as_postgres(&pg_bin("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .arg("-k")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(pg_bin("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-t", "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL on port {} did not start within 30 s: {}",
                self.port,
                std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server at once (SIGQUIT: immediate shutdown) and waits
    /// for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The postmaster's pid, as the postgres user when run through runuser.
        let pid_file = self.dir.path().join("data/postmaster.pid");
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_string))
        {
            let _ = Command::new("kill").args(["-QUIT", &pid]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        self.stop();
    }
}
