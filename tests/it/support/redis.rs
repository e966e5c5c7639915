//! Real Redis servers for the integration tests: a standalone server, a
//! sentinel set (master, replica, three sentinels) and a six-node cluster.
//! Every process listens on 127.0.0.1 only, has its own directory, persists
//! nothing (`--save '' --appendonly no`) and logs to `redis.log` there. Every
//! wait is bounded; a server that does not come up fails the test with its
//! log (tests never skip). The binaries (`redis-server`, `redis-sentinel`,
//! `redis-cli`) are installed by `scripts/test.sh`.
//!
//! # Process lifetime
//!
//! A Redis process must not outlive the test binary, even when the binary
//! panics, aborts, is killed with SIGKILL, or exits without running the
//! destructors of statics (the [`RedisCluster::shared`] cluster lives in a
//! static). So each Redis process is started by a small `bash` wrapper that
//! is its parent and reads its own stdin, a pipe whose only writer is the
//! test process (Rust opens pipes close-on-exec, so no other child holds it):
//!
//! ```text
//! redis-server ARGS </dev/null >>redis.log 2>&1 &   # $! is redis's pid
//! echo $!; read cmd                                  # blocks until told, or until EOF
//! [ "$cmd" = term ] && kill -TERM $! || kill -KILL $!; wait $!
//! ```
//!
//! When the test process ends for any reason the kernel closes the pipe, the
//! wrapper reads EOF and kills Redis with SIGKILL. Dropping a fixture closes
//! the pipe the same way; `stop()` writes `term` for a graceful SIGTERM. The
//! wrapper reaps Redis only after it is told to, so the pid the test process
//! uses for SIGSTOP/SIGCONT (`pause`/`resume`) can never have been reused
//! (pid_max is 32768 here). No `unsafe` (the crate forbids it, so no
//! `prctl(PR_SET_PDEATHSIG)`), no pid files. The only leftover of a test
//! process is the shared cluster's directory (a few KiB under the target
//! dir's tmp/), which the next test process removes.
//!
//! # Which fixture
//!
//! - [`RedisServer::start`]: one server per test; `stop`/`kill`/`start_again`
//!   (same port) and `pause`/`resume` for outage tests.
//! - [`RedisSentinel::start`]: one per test (about 5–6 s to start; a failover
//!   after `kill_master` takes about 2–3 s).
//! - [`RedisCluster::shared`]: one cluster per test process (about 6–7 s for
//!   the first caller), for tests that only read and write their own keys.
//!   It is `&'static` and immutable, so it cannot be stopped by mistake.
//! - [`RedisCluster::start`]: a cluster of its own (about 6–7 s), for tests
//!   that kill, pause or restart nodes.
//!
//! Everything blocks (threads sleep while waiting): from an async test call
//! the fixtures before starting async work, or through `spawn_blocking`.
//!
//! # Ports
//!
//! Ports are drawn at random from 15000..=22767 and checked by binding both
//! the port and port + 10000 (a cluster node's bus port) on 127.0.0.1, then
//! released. That range and its bus ports stay below Linux's ephemeral range
//! (32768..=60999), so an outgoing connection of some other test can never
//! sit on a port while its server is down for an outage test and make
//! `start_again` fail. A port is never handed out twice in one process; a
//! race with another process is caught from the log ("Address already in
//! use") and retried on a new port.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// The sentinel service (master) name of [`RedisSentinel`].
pub const SENTINEL_SERVICE: &str = "sluice-master";

/// How long a server gets to answer PING after it is started.
const START_LIMIT: Duration = Duration::from_secs(10);
/// How long one `redis-cli` call may take before it is killed.
const CLI_LIMIT: Duration = Duration::from_secs(5);
/// How often waits poll.
const POLL: Duration = Duration::from_millis(50);

const PORT_LO: u16 = 15000;
const PORT_HI: u16 = 22767;
const BUS_OFFSET: u16 = 10000;

// --------------------------------------------------------------------------
// Helpers: bounded commands, redis-cli, ports, logs.

/// Runs `cmd` (stdin closed, stdout and stderr captured) and kills it if it
/// has not finished within `limit`.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let mut readers = Vec::new();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        readers.push(std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut stream = stream;
            let _ = stream.read_to_end(&mut buf);
            buf
        }));
    }
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?} did not finish within {limit:?}"));
            }
            Err(e) => return Err(format!("waiting for {cmd:?}: {e}")),
        }
    };
    let mut outs = readers.into_iter().map(|r| r.join().unwrap_or_default());
    Ok(Output {
        status,
        stdout: outs.next().unwrap_or_default(),
        stderr: outs.next().unwrap_or_default(),
    })
}

/// `redis-cli -h 127.0.0.1 -p PORT ARGS...`, bounded by `limit`; `Ok(stdout)`
/// when it exits 0 (`-e`: a Redis error reply is a failure too).
pub fn redis_cli_within(port: u16, args: &[&str], limit: Duration) -> Result<String, String> {
    let out = run_bounded(
        Command::new("redis-cli")
            .args(["-e", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args),
        limit,
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "redis-cli -p {port} {args:?}: {}; {}{}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// [`redis_cli_within`] with a 5 s limit.
pub fn redis_cli(port: u16, args: &[&str]) -> Result<String, String> {
    redis_cli_within(port, args, CLI_LIMIT)
}

fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A loopback port (and its cluster bus port, +10000) that is free now and
/// was not handed out before in this process. See the module docs.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let span = u64::from(PORT_HI - PORT_LO + 1);
        let port = PORT_LO + u16::try_from(random_u64() % span).unwrap_or(0);
        let mut ports = handed_out().lock().unwrap_or_else(|e| e.into_inner());
        if ports.contains(&port) {
            continue;
        }
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + BUS_OFFSET) {
            ports.insert(port);
            return port;
        }
    }
    panic!("no free loopback port pair in {PORT_LO}..={PORT_HI} (+{BUS_OFFSET}) after 1000 tries");
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}

fn fixture_base() -> PathBuf {
    let base = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let _ = std::fs::create_dir_all(&base);
    base
}

/// A fresh directory for one fixture under the target dir's tmp (or the
/// system temp dir), removed when the fixture is dropped.
fn fixture_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(fixture_base())
        .expect("create a fixture directory")
}

/// The directory of the shared cluster, `redis-shared-PID-*`: it is never
/// dropped, so each test process first removes those of processes that no
/// longer exist.
fn shared_dir() -> tempfile::TempDir {
    let base = fixture_base();
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("redis-shared-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if let Some(pid) = pid
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    fixture_dir(&format!("redis-shared-{}-", std::process::id()))
}

/// Polls `f` every 50 ms until it returns `Ok`, for at most `limit`; panics
/// with `what` and the last error otherwise.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    let mut tries = 0u32;
    loop {
        tries += 1;
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("{what}: not reached within {limit:?} ({tries} tries); last: {e}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// `field:value` lines of INFO or CLUSTER INFO.
fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|l| {
        let (k, v) = l.trim().split_once(':')?;
        (k == name).then(|| v.to_string())
    })
}

/// Alternating key/value lines of a map reply printed by redis-cli.
fn pairs(out: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].to_string(), c[1].to_string()))
        .collect()
}

fn pair<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

// --------------------------------------------------------------------------
// One Redis process under its wrapper.

const WRAPPER: &str = r#"log=$1; shift
"$@" </dev/null >>"$log" 2>&1 &
r=$!
echo "$r"
if IFS= read -r cmd && [ "$cmd" = term ]; then kill -TERM "$r" 2>/dev/null; else kill -KILL "$r" 2>/dev/null; fi
wait "$r"
"#;

struct Running {
    wrapper: Child,
    stdin: ChildStdin,
    pid: u32,
    term_sent: bool,
}

/// One redis-server or redis-sentinel process, restartable on its port.
struct Proc {
    program: &'static str,
    args: Vec<String>,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
    running: Option<Running>,
}

enum StartError {
    /// The port was taken between `free_port` and the server's bind.
    PortTaken(String),
    Other(String),
}

impl Proc {
    /// Starts `program` with the arguments `make_args(port, dir)` builds, on a
    /// fresh port, in `dir`; retries on a new port when the port was taken.
    fn start(
        program: &'static str,
        dir: PathBuf,
        mut make_args: impl FnMut(u16, &Path) -> Vec<String>,
    ) -> Proc {
        std::fs::create_dir_all(&dir).expect("create the server directory");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut p = Proc {
                program,
                args: make_args(port, &dir),
                port,
                log: dir.join("redis.log"),
                dir: dir.clone(),
                running: None,
            };
            match p.try_launch() {
                Ok(()) => return p,
                Err(StartError::PortTaken(log)) => {
                    p.kill();
                    let _ = std::fs::remove_file(&p.log);
                    last = log;
                }
                Err(StartError::Other(msg)) => {
                    p.kill();
                    panic!("{msg}")
                }
            }
        }
        panic!("{program} could not bind a port in 5 tries; last log:\n{last}");
    }

    fn name(&self) -> String {
        format!("{} on 127.0.0.1:{}", self.program, self.port)
    }

    fn spawn(&mut self) -> Result<(), String> {
        assert!(self.running.is_none(), "{} is already running", self.name());
        let mut wrapper = Command::new("bash")
            .arg("-c")
            .arg(WRAPPER)
            .arg("redis-wrapper")
            .arg(&self.log)
            .arg(self.program)
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start bash for {}: {e}", self.name()))?;
        let stdin = wrapper.stdin.take().expect("wrapper stdin");
        let stdout = wrapper.stdout.take().expect("wrapper stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
        let Ok(pid) = line.trim().parse::<u32>() else {
            drop(stdin);
            let _ = wrapper.kill();
            let _ = wrapper.wait();
            return Err(format!(
                "the wrapper of {} printed no pid ({line:?})",
                self.name()
            ));
        };
        self.running = Some(Running {
            wrapper,
            stdin,
            pid,
            term_sent: false,
        });
        Ok(())
    }

    /// Spawns and waits (bounded) until the process answers PING.
    fn try_launch(&mut self) -> Result<(), StartError> {
        self.spawn().map_err(StartError::Other)?;
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if !self.is_running() {
                let log = tail(&self.log, 60);
                return Err(if log.contains("Address already in use") {
                    StartError::PortTaken(log)
                } else {
                    StartError::Other(format!("{} exited at start; log:\n{log}", self.name()))
                });
            }
            if redis_cli_within(self.port, &["PING"], Duration::from_secs(2))
                .is_ok_and(|out| out.trim() == "PONG")
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StartError::Other(format!(
                    "{} did not answer PING within {START_LIMIT:?}; log:\n{}",
                    self.name(),
                    tail(&self.log, 60)
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Starts again on the same port with the same arguments and directory.
    fn relaunch(&mut self) {
        if self.running.is_some() {
            assert!(!self.is_running(), "{} is still running", self.name());
            self.kill(); // reap the wrapper of a server that died by itself
        }
        match self.try_launch() {
            Ok(()) => {}
            Err(StartError::PortTaken(log) | StartError::Other(log)) => {
                self.kill();
                panic!("{} did not start again:\n{log}", self.name())
            }
        }
    }

    /// Whether the server process is alive. Its wrapper reaps it only when
    /// told to, so a server that died by itself is a zombie until then
    /// (state `Z` in /proc/PID/stat) and its pid cannot have been reused.
    fn is_running(&self) -> bool {
        let Some(r) = self.running.as_ref() else {
            return false;
        };
        std::fs::read_to_string(format!("/proc/{}/stat", r.pid)).is_ok_and(|stat| {
            // "PID (COMM) STATE ...": COMM may contain spaces or parens.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
    }

    fn signal(&self, sig: &str) {
        let r = self
            .running
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name()));
        let out = run_bounded(
            Command::new("kill").args([sig, &r.pid.to_string()]),
            CLI_LIMIT,
        )
        .unwrap_or_else(|e| panic!("kill {sig} {}: {e}", self.name()));
        assert!(
            out.status.success(),
            "kill {sig} {}: {}",
            self.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Tells the wrapper to send SIGTERM (once), without waiting.
    fn request_term(&mut self) {
        let Some(r) = self.running.as_mut() else {
            return;
        };
        if r.term_sent {
            return;
        }
        // A paused process would not handle SIGTERM. The pid is still ours:
        // the wrapper has not been told anything yet, so it has not reaped it.
        let _ = run_bounded(
            Command::new("kill").args(["-CONT", &r.pid.to_string()]),
            CLI_LIMIT,
        );
        let _ = r.stdin.write_all(b"term\n");
        let _ = r.stdin.flush();
        r.term_sent = true;
    }

    /// SIGTERM (graceful); SIGKILL if it has not exited within 10 s.
    fn stop(&mut self) {
        self.request_term();
        let Some(mut r) = self.running.take() else {
            return;
        };
        if !wait_child(&mut r.wrapper, Duration::from_secs(10)) {
            // The wrapper is still in `wait`, so the pid is still unreaped.
            let _ = run_bounded(
                Command::new("kill").args(["-KILL", &r.pid.to_string()]),
                CLI_LIMIT,
            );
            let _ = r.wrapper.kill();
            let _ = r.wrapper.wait();
        }
    }

    /// SIGKILL, through the wrapper (closing its stdin).
    fn kill(&mut self) {
        let Some(mut r) = self.running.take() else {
            return;
        };
        drop(r.stdin);
        if !wait_child(&mut r.wrapper, Duration::from_secs(10)) {
            let _ = run_bounded(
                Command::new("kill").args(["-KILL", &r.pid.to_string()]),
                CLI_LIMIT,
            );
            let _ = r.wrapper.kill();
            let _ = r.wrapper.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
            .unwrap_or_else(|e| panic!("{}: {e}; log:\n{}", self.name(), tail(&self.log, 30)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_child(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn server_args(port: u16, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        &dir.to_string_lossy(),
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    args.extend(extra.iter().map(|s| (*s).to_string()));
    args
}

// --------------------------------------------------------------------------
// Standalone.

/// A standalone redis-server on 127.0.0.1, killed on drop.
pub struct RedisServer {
    proc: Proc,
    _dir: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits (10 s at most) for
    /// it to answer PING.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// [`start`](Self::start) with extra `redis-server` arguments, e.g.
    /// `&["--requirepass", "secret"]` or `&["--maxmemory", "1mb"]`.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = fixture_dir("redis-");
        let mut server = RedisServer::start_in(dir.path().to_path_buf(), extra);
        server._dir = Some(dir);
        server
    }

    fn start_in(dir: PathBuf, extra: &[&str]) -> RedisServer {
        RedisServer {
            proc: Proc::start("redis-server", dir, |port, dir| {
                server_args(port, dir, extra)
            }),
            _dir: None,
        }
    }

    pub fn port(&self) -> u16 {
        self.proc.port
    }

    pub fn addr(&self) -> SocketAddr {
        addr(self.proc.port)
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.proc.port)
    }

    /// Graceful stop (SIGTERM; SIGKILL after 10 s). The port stays reserved
    /// for [`start_again`](Self::start_again).
    pub fn stop(&mut self) {
        self.proc.stop();
    }

    /// SIGKILL. The port stays reserved for [`start_again`](Self::start_again).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts the server again on the same port (empty: nothing persists)
    /// and waits for PING.
    pub fn start_again(&mut self) {
        self.proc.relaunch();
    }

    /// SIGSTOP: the port still accepts connections, nothing is answered.
    pub fn pause(&self) {
        self.proc.signal("-STOP");
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.proc.signal("-CONT");
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// `redis-cli -p PORT ARGS...` (5 s at most); panics with the server log
    /// on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        self.proc.cli(args)
    }

    /// The last `lines` lines of the server's log.
    pub fn log(&self, lines: usize) -> String {
        tail(&self.proc.log, lines)
    }
}

// --------------------------------------------------------------------------
// Sentinel.

/// One master, one replica and three sentinels monitoring the master as
/// [`SENTINEL_SERVICE`] (quorum 2, down-after 1 s, failover-timeout 2 s).
/// Everything is killed on drop.
pub struct RedisSentinel {
    /// The data servers: `[0]` starts as master, `[1]` as its replica.
    pub servers: Vec<RedisServer>,
    sentinels: Vec<Proc>,
    _dir: tempfile::TempDir,
}

impl RedisSentinel {
    /// Starts everything and waits (30 s at most) until every sentinel knows
    /// the master, the replica (online, link ok) and the two other sentinels.
    pub fn start() -> RedisSentinel {
        let dir = fixture_dir("redis-sentinel-");
        let master = RedisServer::start_in(dir.path().join("master"), &[]);
        let master_port = master.port().to_string();
        let replica = RedisServer::start_in(
            dir.path().join("replica"),
            &["--replicaof", "127.0.0.1", &master_port],
        );
        let sentinels = (0..3)
            .map(|i| {
                Proc::start(
                    "redis-sentinel",
                    dir.path().join(format!("sentinel{i}")),
                    |port, dir| {
                        let conf = dir.join("sentinel.conf");
                        let text = format!(
                            "port {port}\n\
                             bind 127.0.0.1\n\
                             daemonize no\n\
                             dir {dir}\n\
                             sentinel resolve-hostnames no\n\
                             sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {master_port} 2\n\
                             sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
                             sentinel failover-timeout {SENTINEL_SERVICE} 2000\n\
                             sentinel parallel-syncs {SENTINEL_SERVICE} 1\n",
                            dir = dir.display()
                        );
                        std::fs::write(&conf, text).expect("write sentinel.conf");
                        vec![conf.to_string_lossy().into_owned()]
                    },
                )
            })
            .collect();
        let s = RedisSentinel {
            servers: vec![master, replica],
            sentinels,
            _dir: dir,
        };
        s.wait_ready(Duration::from_secs(30));
        s
    }

    /// Waits until the replica replicates and every sentinel sees the
    /// master up, one replica up and two other sentinels.
    pub fn wait_ready(&self, limit: Duration) {
        let master = self.master_addr();
        let master_port = master.port().to_string();
        wait_for("sentinel set ready", limit, || {
            for server in &self.servers {
                let role = redis_cli(server.port(), &["INFO", "replication"])?;
                if server.addr() != master
                    && info_field(&role, "master_link_status").as_deref() != Some("up")
                {
                    return Err(format!("replica {} not linked: {role}", server.addr()));
                }
            }
            for s in &self.sentinels {
                let m = pairs(&redis_cli(
                    s.port,
                    &["SENTINEL", "MASTER", SENTINEL_SERVICE],
                )?);
                let want = [
                    ("flags", "master"),
                    ("port", master_port.as_str()),
                    ("num-slaves", "1"),
                    ("num-other-sentinels", "2"),
                ];
                for (k, v) in want {
                    if pair(&m, k) != Some(v) {
                        return Err(format!("sentinel {}: {k} is {:?}", s.port, pair(&m, k)));
                    }
                }
                let r = pairs(&redis_cli(
                    s.port,
                    &["SENTINEL", "REPLICAS", SENTINEL_SERVICE],
                )?);
                if pair(&r, "flags") != Some("slave")
                    || pair(&r, "master-link-status") != Some("ok")
                {
                    return Err(format!("sentinel {}: replica not ok: {r:?}", s.port));
                }
            }
            Ok(())
        });
    }

    /// fred's URL for this sentinel set:
    /// `redis-sentinel://127.0.0.1:S1?sentinelServiceName=sluice-master&node=127.0.0.1:S2&node=127.0.0.1:S3`.
    pub fn url(&self) -> String {
        sentinel_url(&self.sentinel_addrs())
    }

    pub fn sentinel_addrs(&self) -> Vec<SocketAddr> {
        self.sentinels.iter().map(|s| addr(s.port)).collect()
    }

    /// The current master, as the first sentinel that answers reports it.
    pub fn master_addr(&self) -> SocketAddr {
        let mut errors = String::new();
        for s in &self.sentinels {
            match redis_cli(
                s.port,
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE],
            ) {
                Ok(out) => {
                    let mut lines = out.lines();
                    if let (Some(host), Some(port)) = (lines.next(), lines.next())
                        && let Ok(a) = format!("{host}:{port}").parse()
                    {
                        return a;
                    }
                    let _ = writeln!(errors, "sentinel {}: {out:?}", s.port);
                }
                Err(e) => {
                    let _ = writeln!(errors, "{e}");
                }
            }
        }
        panic!("no sentinel reports the master:\n{errors}")
    }

    fn server_mut(&mut self, a: SocketAddr) -> &mut RedisServer {
        self.servers
            .iter_mut()
            .find(|s| s.addr() == a)
            .unwrap_or_else(|| panic!("{a} is not a server of this sentinel set"))
    }

    /// Kills (SIGKILL) the current master and returns its address.
    pub fn kill_master(&mut self) -> SocketAddr {
        let master = self.master_addr();
        self.server_mut(master).kill();
        master
    }

    /// Waits until every sentinel reports a master other than `old` and
    /// that server says it is a master; returns it.
    pub fn wait_new_master(&self, old: SocketAddr, limit: Duration) -> SocketAddr {
        wait_for("sentinel failover", limit, || {
            let mut seen = None;
            for s in &self.sentinels {
                let out = redis_cli(
                    s.port,
                    &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE],
                )?;
                let lines: Vec<&str> = out.lines().collect();
                let a: SocketAddr = lines
                    .get(..2)
                    .and_then(|l| format!("{}:{}", l[0], l[1]).parse().ok())
                    .ok_or_else(|| format!("sentinel {}: {out:?}", s.port))?;
                if a == old || seen.is_some_and(|b| b != a) {
                    return Err(format!("sentinel {} reports {a}", s.port));
                }
                seen = Some(a);
            }
            let new = seen.ok_or("no sentinel")?;
            let role = redis_cli(new.port(), &["ROLE"])?;
            if role.lines().next() == Some("master") {
                Ok(new)
            } else {
                Err(format!("{new} has role {role:?}"))
            }
        })
    }

    /// Starts a killed server again on its port; the sentinels turn it into
    /// a replica of the current master.
    pub fn start_again(&mut self, a: SocketAddr) {
        self.server_mut(a).start_again();
    }
}

/// fred's sentinel URL (`redis-sentinel` scheme, the first sentinel as host,
/// the others as `node` parameters, the service as `sentinelServiceName`).
pub fn sentinel_url(sentinels: &[SocketAddr]) -> String {
    let mut url = format!(
        "redis-sentinel://{}?sentinelServiceName={SENTINEL_SERVICE}",
        sentinels[0]
    );
    for s in &sentinels[1..] {
        let _ = write!(url, "&node={s}");
    }
    url
}

/// fred's cluster URL (`redis-cluster` scheme, the first node as host, the
/// others as `node` parameters).
pub fn cluster_url(nodes: &[SocketAddr]) -> String {
    let mut url = format!("redis-cluster://{}", nodes[0]);
    for (i, n) in nodes[1..].iter().enumerate() {
        let _ = write!(url, "{}node={n}", if i == 0 { '?' } else { '&' });
    }
    url
}

// --------------------------------------------------------------------------
// Cluster.

/// One line of CLUSTER NODES.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub id: String,
    pub addr: SocketAddr,
    pub flags: Vec<String>,
    /// The master's id, for a replica.
    pub master_id: Option<String>,
    pub connected: bool,
    /// Slot fields (ranges or single slots); empty for replicas.
    pub slots: Vec<String>,
}

impl ClusterNode {
    pub fn is_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    /// Flagged `fail`, `fail?`, `noaddr` or `handshake`.
    pub fn is_failed(&self) -> bool {
        self.flags
            .iter()
            .any(|f| matches!(f.as_str(), "fail" | "fail?" | "noaddr" | "handshake"))
    }
}

/// Parses CLUSTER NODES output.
pub fn parse_cluster_nodes(out: &str) -> Result<Vec<ClusterNode>, String> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return Err(format!("bad CLUSTER NODES line {l:?}"));
            }
            let host_port = f[1].split(['@', ',']).next().unwrap_or_default();
            Ok(ClusterNode {
                id: f[0].to_string(),
                addr: host_port
                    .parse()
                    .map_err(|e| format!("bad address in {l:?}: {e}"))?,
                flags: f[2].split(',').map(str::to_string).collect(),
                master_id: (f[3] != "-").then(|| f[3].to_string()),
                connected: f[7] == "connected",
                slots: f[8..].iter().map(|s| (*s).to_string()).collect(),
            })
        })
        .collect()
}

/// Six redis-server processes in cluster mode (three masters with one
/// replica each, `cluster-node-timeout` 1000 ms), created with
/// `redis-cli --cluster create`. Killed on drop.
///
/// Tests that only read and write use [`RedisCluster::shared`], one cluster
/// per test process, each test with its own keys (its own domain or key
/// prefix); tests that kill, pause or restart nodes start their own.
pub struct RedisCluster {
    nodes: Vec<Proc>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster and waits (60 s at most) until
    /// every node reports `cluster_state:ok` and sees three masters, each
    /// with one linked replica.
    pub fn start() -> RedisCluster {
        RedisCluster::start_in(fixture_dir("redis-cluster-"))
    }

    fn start_in(dir: tempfile::TempDir) -> RedisCluster {
        let nodes: Vec<Proc> = (0..6)
            .map(|i| {
                Proc::start(
                    "redis-server",
                    dir.path().join(format!("node{i}")),
                    |port, dir| {
                        server_args(
                            port,
                            dir,
                            &[
                                "--cluster-enabled",
                                "yes",
                                "--cluster-config-file",
                                "nodes.conf",
                                "--cluster-node-timeout",
                                "1000",
                            ],
                        )
                    },
                )
            })
            .collect();
        let cluster = RedisCluster { nodes, _dir: dir };
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for a in cluster.addrs() {
            create.arg(a.to_string());
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = run_bounded(&mut create, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("[OK] All 16384 slots covered"),
            "redis-cli --cluster create failed ({}):\n{text}\n{}",
            out.status,
            cluster.logs()
        );
        cluster.wait_healthy(Duration::from_secs(60));
        cluster
    }

    /// One cluster for the whole test process, started by the first caller
    /// and shared by every test after it. It lives in a static and is never
    /// dropped: its processes die with the test process (module docs). Use
    /// it only to read and write keys of your own; never stop its nodes.
    /// If it fails to start, every caller fails with the same message.
    pub fn shared() -> &'static RedisCluster {
        static SHARED: OnceLock<Result<RedisCluster, String>> = OnceLock::new();
        let result = SHARED.get_or_init(|| {
            std::panic::catch_unwind(|| RedisCluster::start_in(shared_dir())).map_err(|e| {
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_string()))
                    .unwrap_or_else(|| "(panic without a message)".to_string())
            })
        });
        match result {
            Ok(c) => c,
            Err(msg) => panic!("the shared Redis cluster did not start: {msg}"),
        }
    }

    /// All six node addresses, in start order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| addr(n.port)).collect()
    }

    /// fred's URL for this cluster:
    /// `redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&node=...` (all six).
    pub fn url(&self) -> String {
        cluster_url(&self.addrs())
    }

    /// CLUSTER NODES as seen by the first node that answers.
    pub fn cluster_nodes(&self) -> Vec<ClusterNode> {
        let mut errors = String::new();
        for n in &self.nodes {
            match redis_cli(n.port, &["CLUSTER", "NODES"]).and_then(|o| parse_cluster_nodes(&o)) {
                Ok(nodes) => return nodes,
                Err(e) => {
                    let _ = writeln!(errors, "{e}");
                }
            }
        }
        panic!("no cluster node answers CLUSTER NODES:\n{errors}")
    }

    /// Addresses of the masters that serve slots and are not failed, sorted.
    pub fn masters(&self) -> Vec<SocketAddr> {
        let mut m: Vec<SocketAddr> = self
            .cluster_nodes()
            .into_iter()
            .filter(|n| n.is_master() && !n.is_failed() && !n.slots.is_empty())
            .map(|n| n.addr)
            .collect();
        m.sort();
        m
    }

    /// Addresses of the replicas that are not failed, sorted.
    pub fn replicas(&self) -> Vec<SocketAddr> {
        let mut r: Vec<SocketAddr> = self
            .cluster_nodes()
            .into_iter()
            .filter(|n| !n.is_master() && !n.is_failed())
            .map(|n| n.addr)
            .collect();
        r.sort();
        r
    }

    fn node_mut(&mut self, a: SocketAddr) -> &mut Proc {
        self.nodes
            .iter_mut()
            .find(|n| addr(n.port) == a)
            .unwrap_or_else(|| panic!("{a} is not a node of this cluster"))
    }

    /// `redis-cli -p PORT ARGS...` on one node (no `-c`: no redirects).
    pub fn cli(&self, a: SocketAddr, args: &[&str]) -> String {
        self.nodes
            .iter()
            .find(|n| addr(n.port) == a)
            .unwrap_or_else(|| panic!("{a} is not a node of this cluster"))
            .cli(args)
    }

    /// SIGKILL one node. Its replica takes over after about 1–3 s if it was
    /// a master ([`wait_ok`](Self::wait_ok)).
    pub fn kill_node(&mut self, a: SocketAddr) {
        self.node_mut(a).kill();
    }

    /// Starts a stopped or killed node again on its port with its
    /// nodes.conf; it rejoins (a former master comes back as a replica).
    pub fn start_node_again(&mut self, a: SocketAddr) {
        self.node_mut(a).relaunch();
    }

    /// SIGSTOP one node.
    pub fn pause_node(&self, a: SocketAddr) {
        self.nodes
            .iter()
            .find(|n| addr(n.port) == a)
            .unwrap_or_else(|| panic!("{a} is not a node of this cluster"))
            .signal("-STOP");
    }

    /// SIGCONT one node.
    pub fn resume_node(&self, a: SocketAddr) {
        self.nodes
            .iter()
            .find(|n| addr(n.port) == a)
            .unwrap_or_else(|| panic!("{a} is not a node of this cluster"))
            .signal("-CONT");
    }

    /// Stops every node (SIGTERM, all at once; SIGKILL after 10 s). Ports
    /// and nodes.conf files are kept for [`start_all_again`](Self::start_all_again).
    pub fn stop_all(&mut self) {
        for n in &mut self.nodes {
            n.request_term();
        }
        for n in &mut self.nodes {
            n.stop();
        }
    }

    /// Starts every node that is not running again on its port with its
    /// nodes.conf and waits (60 s at most) until the cluster is healthy.
    pub fn start_all_again(&mut self) {
        for n in &mut self.nodes {
            if !n.is_running() {
                n.relaunch();
            }
        }
        self.wait_healthy(Duration::from_secs(60));
    }

    /// Waits until every running node reports `cluster_state:ok` and sees
    /// three masters serving slots, all of them running (so after
    /// [`kill_node`](Self::kill_node) of a master this waits for the
    /// failover). Returns those masters, sorted.
    pub fn wait_ok(&self, limit: Duration) -> Vec<SocketAddr> {
        self.wait_state(limit, false)
    }

    /// [`wait_ok`](Self::wait_ok), and every master has exactly one live,
    /// connected replica whose replication link is up.
    pub fn wait_healthy(&self, limit: Duration) -> Vec<SocketAddr> {
        self.wait_state(limit, true)
    }

    fn wait_state(&self, limit: Duration, replicas: bool) -> Vec<SocketAddr> {
        let live: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.port)
            .collect();
        let what = if replicas {
            "cluster healthy"
        } else {
            "cluster ok"
        };
        let check = || -> Result<Vec<SocketAddr>, String> {
            let mut agreed: Option<Vec<SocketAddr>> = None;
            for &port in &live {
                let info = redis_cli(port, &["CLUSTER", "INFO"])?;
                if info_field(&info, "cluster_state").as_deref() != Some("ok") {
                    return Err(format!("node {port}: cluster_state is not ok"));
                }
                let nodes = parse_cluster_nodes(&redis_cli(port, &["CLUSTER", "NODES"])?)?;
                let masters: Vec<&ClusterNode> = nodes
                    .iter()
                    .filter(|n| n.is_master() && !n.is_failed() && !n.slots.is_empty())
                    .collect();
                if masters.len() != 3 {
                    return Err(format!("node {port} sees {} masters", masters.len()));
                }
                if let Some(m) = masters.iter().find(|m| !live.contains(&m.addr.port())) {
                    return Err(format!("node {port} sees master {} that is down", m.addr));
                }
                if replicas {
                    for m in &masters {
                        let reps: Vec<&ClusterNode> = nodes
                            .iter()
                            .filter(|n| {
                                n.master_id.as_deref() == Some(m.id.as_str())
                                    && !n.is_failed()
                                    && (n.connected || n.flags.iter().any(|f| f == "myself"))
                            })
                            .collect();
                        if reps.len() != 1 {
                            return Err(format!(
                                "node {port}: master {} has {} replicas",
                                m.addr,
                                reps.len()
                            ));
                        }
                    }
                }
                let mut addrs: Vec<SocketAddr> = masters.iter().map(|m| m.addr).collect();
                addrs.sort();
                if agreed.as_ref().is_some_and(|a| *a != addrs) {
                    return Err(format!("node {port} sees other masters: {addrs:?}"));
                }
                agreed = Some(addrs);
            }
            let masters = agreed.ok_or("no node is running")?;
            if replicas {
                for &port in &live {
                    if masters.contains(&addr(port)) {
                        continue;
                    }
                    let info = redis_cli(port, &["INFO", "replication"])?;
                    if info_field(&info, "master_link_status").as_deref() != Some("up") {
                        return Err(format!("replica {port}: replication link not up"));
                    }
                }
            }
            Ok(masters)
        };
        let deadline = Instant::now() + limit;
        loop {
            match check() {
                Ok(m) => return m,
                Err(e) if Instant::now() >= deadline => {
                    panic!(
                        "{what}: not reached within {limit:?}; last: {e}\n{}",
                        self.logs()
                    )
                }
                Err(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// The last lines of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            let _ = writeln!(s, "--- {} ---\n{}", n.name(), tail(&n.log, 25));
        }
        s
    }
}
