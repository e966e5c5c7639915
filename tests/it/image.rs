//! The container image (Dockerfile, scripts/image.sh), checked from
//! outside, since `podman run` cannot run here: its config (user,
//! entrypoint, ports, volume), its files (a static binary, CA
//! certificates, no shell, everything root's but the state volume), and
//! its root filesystem, unpacked from `podman save`, run for real: the
//! image's entrypoint and command as uid 65532 with that directory as its
//! root (`unshare --root --wd`), so it sees only the image's files plus
//! what a container runtime adds (/dev's null, zero, random and urandom,
//! /etc/hosts, /etc/resolv.conf, the rules mount). It serves and answers health; the default SQLite store lands
//! in the volume; and the static binary resolves names that only the
//! hosts file (a Redis Cluster seed) or a DNS server on loopback (the
//! PostgreSQL host, the probe's Service name, through Kubernetes-style
//! search domains and ndots:5) can answer.
//!
//! The image is named by SLUICE_IT_IMAGE (scripts/test.sh builds it with
//! scripts/image.sh first). Needs root: the rootfs keeps its owners, and
//! the DNS server binds port 53 on a loopback address.

use std::collections::BTreeSet;
use std::fs;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::support::db::{Kind, TestDb, postgres_admin_url};
use crate::support::redis::{RedisCluster, free_port, run_bounded};
use crate::support::{OK, call, desc, req};

const RULES: &str = "\
domain: edge
descriptors:
  - key: generic_key
    value: limited
    rate_limit: {unit: minute, requests_per_unit: 5}
";

fn image() -> String {
    std::env::var("SLUICE_IT_IMAGE").unwrap_or_else(|_| {
        panic!(
            "SLUICE_IT_IMAGE is not set: build the image with scripts/image.sh and name it \
             there (scripts/test.sh does both)"
        )
    })
}

fn sh(cmd: &mut Command) -> String {
    let out = run_bounded(cmd, Duration::from_secs(120)).unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_root() {
    let uid = sh(Command::new("id").arg("-u"));
    assert_eq!(
        uid.trim(),
        "0",
        "the image test needs root (owners in the unpacked image, port 53 for the DNS server)"
    );
}

/// The image's config (`podman image inspect`).
fn config(image: &str) -> Value {
    let out = sh(Command::new("podman").args([
        "image",
        "inspect",
        image,
        "--format",
        "{{json .Config}}",
    ]));
    serde_json::from_str(&out).unwrap()
}

/// The image's layers, unpacked in order into `dir/rootfs`.
fn unpack(image: &str, dir: &Path) -> PathBuf {
    let archive = dir.join("image.tar");
    sh(Command::new("podman")
        .args(["save", "--format", "oci-archive", "-o"])
        .arg(&archive)
        .arg(image));
    let oci = dir.join("oci");
    fs::create_dir(&oci).unwrap();
    sh(Command::new("tar")
        .arg("xf")
        .arg(&archive)
        .arg("-C")
        .arg(&oci));
    let blob = |digest: &str| {
        oci.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let index: Value = serde_json::from_slice(&fs::read(oci.join("index.json")).unwrap()).unwrap();
    let manifest: Value = serde_json::from_slice(
        &fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let root = dir.join("rootfs");
    fs::create_dir(&root).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        sh(Command::new("tar")
            .arg("xf")
            .arg(blob(layer["digest"].as_str().unwrap()))
            .arg("-C")
            .arg(&root));
    }
    root
}

/// Every path under `root`, relative, with its metadata.
fn tree(root: &Path) -> Vec<(String, fs::Metadata)> {
    fn go(root: &Path, dir: &Path, out: &mut Vec<(String, fs::Metadata)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let meta = fs::symlink_metadata(&p).unwrap();
            let rel = format!("/{}", p.strip_prefix(root).unwrap().display());
            let is_dir = meta.is_dir();
            out.push((rel, meta));
            if is_dir {
                go(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    go(root, root, &mut out);
    out
}

#[test]
fn image_config_and_files() {
    assert_root();
    let image = image();
    let c = config(&image);
    assert_eq!(c["User"], "65532:65532");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/sluice"]));
    assert_eq!(c["WorkingDir"], "/var/lib/sluice");
    let volumes: Vec<&String> = c["Volumes"].as_object().unwrap().keys().collect();
    assert_eq!(volumes, ["/var/lib/sluice"]);
    let ports: BTreeSet<&str> = c["ExposedPorts"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(ports, BTreeSet::from(["8080/tcp", "8081/tcp", "8082/tcp"]));
    let cmd: Vec<&str> = c["Cmd"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(cmd[0], "serve");

    let dir = tempfile::tempdir().unwrap();
    let root = unpack(&image, dir.path());
    let files = tree(&root);
    let names: BTreeSet<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for must in [
        "/sluice",
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/nsswitch.conf",
        "/var/lib/sluice",
        "/tmp",
    ] {
        assert!(names.contains(must), "{must} missing: {names:?}");
    }
    // Nothing to exec but sluice: no shell, no busybox, no bin directories.
    for (name, meta) in &files {
        let base = name.rsplit('/').next().unwrap();
        assert!(
            !["sh", "bash", "busybox", "ash", "dash"].contains(&base),
            "{name} in the image"
        );
        assert!(
            !name.starts_with("/bin") && !name.starts_with("/usr"),
            "{name} in the image"
        );
        if meta.is_file() && meta.mode() & 0o111 != 0 {
            assert_eq!(name, "/sluice", "another executable: {name}");
        }
        // Root's and not writable by the process, but the volume and /tmp.
        if name == "/var/lib/sluice" {
            assert_eq!((meta.uid(), meta.gid()), (65532, 65532), "{name}");
        } else {
            assert_eq!(meta.uid(), 0, "{name} is not root's");
            let world_writable = meta.mode() & 0o002 != 0;
            assert!(!world_writable || name == "/tmp", "{name} is writable");
        }
    }
    assert!(
        fs::metadata(root.join("etc/ssl/certs/ca-certificates.crt"))
            .unwrap()
            .len()
            > 10_000
    );
    // Statically linked: no program interpreter, no shared libraries.
    let elf = sh(Command::new("readelf")
        .args(["-l", "-d"])
        .arg(root.join("sluice")));
    assert!(!elf.contains("INTERP"), "dynamically linked:\n{elf}");
    assert!(!elf.contains("(NEEDED)"), "needs shared libraries:\n{elf}");
}

// === a DNS server on loopback ===

/// Answers A queries for `names` with 127.0.0.1, NXDOMAIN for everything
/// else (and no records for other types of known names); records every
/// question asked. Bound to port 53 of a loopback address of its own.
struct Dns {
    addr: Ipv4Addr,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Dns {
    fn start(names: &[&str]) -> Dns {
        let (socket, addr) = (0..50)
            .find_map(|_| {
                let n = free_port();
                let addr = Ipv4Addr::new(127, 53, (n >> 8) as u8, (n & 0xff) as u8);
                UdpSocket::bind((addr, 53)).ok().map(|s| (s, addr))
            })
            .expect("bind a DNS server on port 53 of a loopback address");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (asked, stop) = (asked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some((name, reply)) = answer(&buf[..n], &names) {
                        asked.lock().unwrap().push(name);
                        let _ = socket.send_to(&reply, peer);
                    }
                }
            })
        };
        Dns {
            addr,
            asked,
            stop,
            thread: Some(thread),
        }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reply to one query: (the question's name with its type, reply).
fn answer(q: &[u8], names: &[String]) -> Option<(String, Vec<u8>)> {
    if q.len() < 12 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    while *q.get(i)? != 0 {
        let len = usize::from(q[i]);
        labels.push(String::from_utf8_lossy(q.get(i + 1..i + 1 + len)?).to_ascii_lowercase());
        i += 1 + len;
    }
    let question_end = i + 5;
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let name = labels.join(".");
    let known = names.contains(&name);
    let a = known && qtype == 1;
    let mut r = Vec::with_capacity(64);
    r.extend_from_slice(&q[0..2]); // id
    r.extend_from_slice(&[0x81, if known { 0x80 } else { 0x83 }]); // QR RD RA, NOERROR/NXDOMAIN
    r.extend_from_slice(&[0, 1, 0, u8::from(a), 0, 0, 0, 0]);
    r.extend_from_slice(q.get(12..question_end)?);
    if a {
        // Name (pointer to the question), A, IN, TTL 5, 4 bytes, 127.0.0.1.
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 127, 0, 0, 1]);
    }
    Some((format!("{name} {qtype}"), r))
}

// === the image's root filesystem, run ===

/// The unpacked image with what a container runtime adds: /etc/hosts,
/// /etc/resolv.conf (Kubernetes style, pointing at `dns`) and the rules.
struct Rootfs {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: Value,
}

impl Rootfs {
    fn new(dns: &Dns) -> Rootfs {
        assert_root();
        let image = image();
        let dir = tempfile::tempdir().unwrap();
        let root = unpack(&image, dir.path());
        fs::write(
            root.join("etc/hosts"),
            "127.0.0.1 localhost\n127.0.0.1 redis-0.redis.data.svc\n",
        )
        .unwrap();
        fs::write(
            root.join("etc/resolv.conf"),
            format!(
                "search edge.svc.cluster.local svc.cluster.local cluster.local\nnameserver {}\noptions ndots:5 timeout:1 attempts:2\n",
                dns.addr
            ),
        )
        .unwrap();
        // The device nodes every container runtime creates (sluice reads
        // /dev/urandom when the getrandom call is not available to it).
        fs::create_dir_all(root.join("dev")).unwrap();
        for (name, minor) in [
            ("null", "3"),
            ("zero", "5"),
            ("random", "8"),
            ("urandom", "9"),
        ] {
            sh(Command::new("mknod")
                .args(["-m", "666"])
                .arg(root.join("dev").join(name))
                .args(["c", "1", minor]));
        }
        fs::create_dir_all(root.join("etc/sluice/rules")).unwrap();
        fs::write(root.join("etc/sluice/rules/edge.yaml"), RULES).unwrap();
        // The test root's own directory must be enterable by the process.
        fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        Rootfs {
            _dir: dir,
            root,
            config: config(&image),
        }
    }

    /// A command run as the image's user, inside its root, in its working
    /// directory, with only the image's environment plus `env`.
    fn command(&self, args: &[String], env: &[(&str, &str)]) -> Command {
        let user = self.config["User"].as_str().unwrap();
        let (uid, gid) = user.split_once(':').unwrap();
        let mut cmd = Command::new("unshare");
        cmd.arg(format!("--root={}", self.root.display()))
            .arg(format!(
                "--wd={}",
                self.config["WorkingDir"].as_str().unwrap()
            ))
            .args(["--setuid", uid, "--setgid", gid])
            .args(args)
            .env_clear();
        for e in self.config["Env"].as_array().into_iter().flatten() {
            let (k, v) = e.as_str().unwrap().split_once('=').unwrap();
            cmd.env(k, v);
        }
        cmd.envs(env.iter().copied());
        cmd
    }

    /// The entrypoint and command, with `extra` serve flags.
    fn serve(&self, extra: &[String], env: &[(&str, &str)]) -> Served {
        let mut args: Vec<String> = Vec::new();
        for v in [&self.config["Entrypoint"], &self.config["Cmd"]] {
            args.extend(
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string()),
            );
        }
        let (grpc, http, admin) = (free_port(), free_port(), free_port());
        args.extend([
            format!("--grpc-addr=127.0.0.1:{grpc}"),
            format!("--http-addr=127.0.0.1:{http}"),
            format!("--admin-grpc-addr=127.0.0.1:{admin}"),
        ]);
        args.extend(extra.iter().cloned());
        let log = self
            .root
            .parent()
            .unwrap()
            .join(format!("sluice-{grpc}.log"));
        let child = self
            .command(&args, env)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Served {
            child,
            grpc,
            http,
            log,
        }
    }
}

struct Served {
    child: Child,
    grpc: u16,
    http: u16,
    log: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (60 s at most) for /healthz, then checks gRPC health and one
    /// decision from outside.
    async fn check(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("http://127.0.0.1:{}/healthz", self.http);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                panic!("sluice exited ({s}):\n{}", self.log());
            }
            if reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no /healthz within 60 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let channel =
            tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", self.grpc))
                .unwrap()
                .connect()
                .await
                .unwrap();
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving);
        let mut rls = sluice::grpc::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient::new(channel);
        let r = call(
            &mut rls,
            req("edge", vec![desc(&[("generic_key", "limited")])]),
        )
        .await;
        assert_eq!(r.overall_code, OK);
        assert_eq!(
            r.statuses[0]
                .current_limit
                .as_ref()
                .unwrap()
                .requests_per_unit,
            5
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn image_runs_read_only_with_state_in_its_volume() {
    let dns = Dns::start(&["sluice.edge.svc.cluster.local"]);
    let fs_ = Rootfs::new(&dns);
    let before: BTreeSet<String> = tree(&fs_.root).into_iter().map(|(n, _)| n).collect();
    let mut s = fs_.serve(&[], &[]);
    s.check().await;
    // The default key store: SQLite and its secrets in the volume.
    let data = fs_.root.join("var/lib/sluice/sluice-data");
    for f in ["sluice.db", "key-secret", "jwt-secret"] {
        assert!(data.join(f).exists(), "{f} not in the volume:\n{}", s.log());
    }
    // Nothing written anywhere else.
    for (name, _) in tree(&fs_.root) {
        assert!(
            before.contains(&name) || name.starts_with("/var/lib/sluice/"),
            "{name} written outside the volume"
        );
    }

    // The helm test's probe from the same image, by Service name: only
    // the DNS server knows sluice.edge.svc (through the search domains).
    let probe = fs_
        .command(
            &[
                "/sluice".into(),
                "probe".into(),
                format!("--addr=http://sluice.edge.svc:{}", s.grpc),
                "--domain=edge".into(),
                "--descriptor=generic_key=limited".into(),
            ],
            &[],
        )
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&probe.stdout),
        String::from_utf8_lossy(&probe.stderr)
    );
    assert!(probe.status.success(), "probe: {out}");
    assert!(
        out.contains("health SERVING") && out.contains("domain edge: OK"),
        "{out}"
    );
    assert!(
        dns.asked()
            .iter()
            .any(|q| q == "sluice.edge.svc.cluster.local 1"),
        "the probe's name did not go through DNS: {:?}",
        dns.asked()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn image_resolves_redis_and_postgres_by_name() {
    let cluster = RedisCluster::shared();
    let db = TestDb::new(Kind::Postgres).await;
    let dns = Dns::start(&["postgres.db.svc.cluster.local"]);
    let fs_ = Rootfs::new(&dns);
    // The Redis seed by a name only /etc/hosts knows; the other nodes as
    // the cluster announces them (by IP).
    let seed_port = cluster.masters()[0].port();
    let redis_url = format!("redis-cluster://redis-0.redis.data.svc:{seed_port}");
    // PostgreSQL by a name only the DNS server knows (via cluster.local).
    let admin = postgres_admin_url();
    let pg_host = admin.split('@').nth(1).unwrap().split('/').next().unwrap();
    let (_, pg_port) = pg_host.rsplit_once(':').unwrap_or((pg_host, "5432"));
    let db_name = db.url.rsplit('/').next().unwrap();
    let userinfo = admin
        .split("://")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap();
    let db_url = format!("postgres://{userinfo}@postgres.db.svc:{pg_port}/{db_name}");
    let prefix = format!("image{}", std::process::id());
    let mut s = fs_.serve(
        &[
            format!("--redis-url={redis_url}"),
            format!("--redis-key-prefix={prefix}"),
            "--redis-timeout=250".into(),
            format!("--database-url={db_url}"),
        ],
        &[(
            "SLUICE_KEY_SECRET",
            "image-test-key-secret-0123456789abcdef",
        )],
    );
    s.check().await;
    let log = s.log();
    assert!(log.contains("counters in Redis"), "{log}");
    assert!(log.contains("key store ready"), "{log}");
    assert!(
        dns.asked()
            .iter()
            .any(|q| q == "postgres.db.svc.cluster.local 1"),
        "PostgreSQL's name did not go through DNS: {:?}",
        dns.asked()
    );
    // The cluster really holds the counter.
    let pattern = format!("{prefix}:*");
    let keys: usize = cluster
        .masters()
        .iter()
        .map(|m| {
            cluster
                .cli(*m, &["KEYS", &pattern])
                .lines()
                .filter(|l| !l.is_empty())
                .count()
        })
        .sum();
    assert_eq!(keys, 1, "counters under {pattern}");
}
