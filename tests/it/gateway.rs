//! API keys at the gateway through real proxies, with the shipped examples
//! as they are (only their ports rewritten to free ones):
//!
//! * a real Envoy (examples/envoy/envoy-authz.yaml) whose ext_authz filter
//!   asks sluice's `Check` (examples/config/gateway.yaml), in front of the
//!   example's stand-in upstream, which echoes what it received;
//! * a real nginx (examples/nginx/nginx.conf) whose `auth_request` asks
//!   `/auth`, passing the identity on with `auth_request_set`.
//!
//! Both: a valid key → 200 and the upstream sees the identity and not the
//! key; missing, unknown, revoked → 401; a route's missing scope → 403;
//! the plan used up → 429 with Retry-After; a revocation made on another
//! replica refused within 1 s; sluice stopped → refused, never let through.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice::grpc::pb::sluice::v1 as pb;

use crate::envoy::{Envoy, get, start_envoy_with};
use crate::keys::{Admin, create_key, create_plan, limit, start_config};
use crate::support::db::{Kind, TestDb};
use crate::support::{Sluice, avoid_minute_boundary};

fn example(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// Two replicas on one PostgreSQL database: A for the admin calls, B
/// behind the proxy, so a revocation has to travel (LISTEN/NOTIFY).
struct Replicas {
    _a: Sluice,
    b: Sluice,
    admin: Admin,
    _db: TestDb,
}

async fn replicas() -> Replicas {
    let db = TestDb::new(Kind::Postgres).await;
    let config = example("examples/config/gateway.yaml");
    let a = start_config(&db, &config, &[]);
    let b = start_config(&db, &config, &[]);
    let admin = Admin::new(&a, "all").await;
    Replicas {
        _a: a,
        b,
        admin,
        _db: db,
    }
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

async fn problem_code(r: reqwest::Response) -> String {
    assert_eq!(header(&r, "content-type"), Some("application/problem+json"));
    let v: serde_json::Value = r.json().await.unwrap();
    v["code"].as_str().unwrap().to_string()
}

/// Polls `status` until it is `want`, at most `limit`; how long it took.
async fn until_status<F, Fut>(limit: Duration, want: u16, mut status: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if status().await == want {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// A GET through the proxy listening on `port`.
async fn fetch(port: u16, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(5));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

/// What both proxies must do, in front of replica B. Returns the first
/// key's id and another valid key (with plenty left) for what follows.
async fn the_gateway_contract(r: &mut Replicas, front: u16) -> (String, String) {
    create_plan(&mut r.admin, "starter", vec![limit(3, pb::Unit::Minute)]).await;
    create_plan(&mut r.admin, "roomy", vec![limit(1000, pb::Unit::Minute)]).await;
    let (key, secret) = create_key(&mut r.admin, "starter", &["read"]).await;

    // A valid key: the upstream gets the identity (not the client's forged
    // one) and never the key; the client gets rate-limit headers.
    let res = fetch(
        front,
        "/orders?page=2",
        &[("x-api-key", &secret), ("x-sluice-key-id", "forged")],
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-upstream-key-id"), Some(key.id.as_str()));
    assert_eq!(header(&res, "x-upstream-owner"), Some("acme"));
    assert_eq!(header(&res, "x-upstream-plan"), Some("starter"));
    assert_eq!(header(&res, "x-upstream-scopes"), Some("read"));
    assert_eq!(header(&res, "x-upstream-api-key"), None);
    assert_eq!(header(&res, "x-upstream-path"), Some("/orders?page=2"));
    assert!(
        header(&res, "ratelimit").unwrap().contains(";r=2;"),
        "{res:?}"
    );
    assert!(header(&res, "ratelimit-policy").is_some());
    assert_eq!(res.text().await.unwrap(), "upstream ok");

    // As a bearer token: authorization is not passed on either.
    let bearer = format!("Bearer {secret}");
    let res = fetch(front, "/orders", &[("authorization", &bearer)]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-upstream-authorization"), None);
    assert_eq!(header(&res, "x-upstream-key-id"), Some(key.id.as_str()));

    // No key, an unknown one: 401 with a challenge and a problem body.
    let res = fetch(front, "/orders", &[]).await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        header(&res, "www-authenticate"),
        Some("Bearer realm=\"api\"")
    );
    assert_eq!(problem_code(res).await, "MISSING");
    let res = fetch(front, "/orders", &[("x-api-key", "sk_live_nonesuch")]).await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        header(&res, "www-authenticate"),
        Some("Bearer realm=\"api\", error=\"invalid_token\"")
    );
    assert_eq!(problem_code(res).await, "NOT_FOUND");

    // /admin's route requires the admin scope: 403, nothing charged.
    let res = fetch(front, "/admin/users", &[("x-api-key", &secret)]).await;
    assert_eq!(res.status(), 403);
    assert_eq!(problem_code(res).await, "INSUFFICIENT_SCOPE");

    // The plan's third request, then 429 with Retry-After.
    assert_eq!(
        fetch(front, "/orders", &[("x-api-key", &secret)])
            .await
            .status(),
        200
    );
    let res = fetch(front, "/orders", &[("x-api-key", &secret)]).await;
    assert_eq!(res.status(), 429);
    let wait: u64 = header(&res, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait));
    assert!(
        header(&res, "ratelimit").unwrap().contains(";r=0;"),
        "{res:?}"
    );
    assert_eq!(problem_code(res).await, "RATE_LIMITED");

    // A key revoked on replica A is refused by B, through the proxy,
    // within 1 s (B had it cached as valid).
    let (other, other_secret) = create_key(&mut r.admin, "roomy", &["read", "admin"]).await;
    let k = [("x-api-key", other_secret.as_str())];
    assert_eq!(fetch(front, "/admin/users", &k).await.status(), 200);
    assert_eq!(fetch(front, "/orders", &k).await.status(), 200);
    let req = r.admin.req(pb::RevokeKeyRequest {
        id: other.id.clone(),
        reason: String::new(),
    });
    r.admin.client.revoke_key(req).await.unwrap();
    let took = until_status(Duration::from_secs(1), 401, || async {
        fetch(front, "/orders", &k).await.status().as_u16()
    })
    .await;
    assert!(
        took.is_some(),
        "the proxy still let the revoked key through after 1 s"
    );
    eprintln!("revocation reached the proxy's answers after {took:?}");
    assert_eq!(
        problem_code(fetch(front, "/orders", &k).await).await,
        "REVOKED"
    );

    let (_, fresh_secret) = create_key(&mut r.admin, "roomy", &["read"]).await;
    (key.id, fresh_secret)
}

/// Stops replica B; the proxy must then refuse with 503, never let through.
async fn refused_without_sluice(r: Replicas, front: u16, secret: &str) {
    let Replicas { b, _a, .. } = r;
    drop(b);
    let refused = until_status(Duration::from_secs(15), 503, || async {
        fetch(front, "/orders", &[("x-api-key", secret)])
            .await
            .status()
            .as_u16()
    })
    .await;
    assert!(
        refused.is_some(),
        "the proxy did not refuse with sluice stopped"
    );
    for _ in 0..5 {
        let s = fetch(front, "/orders", &[("x-api-key", secret)])
            .await
            .status();
        assert_eq!(s, 503);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_authenticates_limits_and_identifies() {
    avoid_minute_boundary(30).await;
    let mut r = replicas().await;
    let envoy: Envoy = start_envoy_with(
        "examples/envoy/envoy-authz.yaml",
        r.b.config_dir(),
        &[r.b.grpc_addr.port()],
        &[],
    )
    .await;
    let (key_id, secret) = the_gateway_contract(&mut r, envoy.front).await;
    assert_eq!(
        get(&envoy, "/orders", &[("x-api-key", &secret)])
            .await
            .status(),
        200
    );

    // Envoy's access log has the identity from the dynamic metadata (Envoy
    // writes its access logs out every 10 s by default).
    let log_file = r.b.config_dir().join("envoy.out");
    let line = format!("GET /orders?page=2 200 key_id={key_id} owner=acme plan=starter");
    let logged = crate::support::eventually(Duration::from_secs(15), || {
        let log_file = log_file.clone();
        let line = line.clone();
        async move { std::fs::read_to_string(&log_file).is_ok_and(|l| l.contains(&line)) }
    })
    .await;
    assert!(
        logged,
        "{line:?} not in {}",
        std::fs::read_to_string(&log_file).unwrap_or_default()
    );

    refused_without_sluice(r, envoy.front, &secret).await;
}

/// A real nginx from examples/nginx/ (nginx.conf and sluice-auth.conf),
/// its ports rewritten, under a prefix of its own; stopped on drop.
struct Nginx {
    child: std::process::Child,
    front: u16,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM: the master stops its workers (KILL would orphan them).
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The nginx binary: on PATH, else where Debian's package puts it.
fn nginx_bin() -> std::path::PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|p| p.join("nginx"))
        .find(|p| p.exists());
    on_path
        .or_else(|| Some(std::path::PathBuf::from("/usr/sbin/nginx")).filter(|p| p.exists()))
        .expect("nginx not found: run scripts/test.sh, which installs Debian's nginx")
}

async fn start_nginx(sluice_http: u16) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tmp")).unwrap();
    let (front, upstream) = (crate::envoy::free_port(), crate::envoy::free_port());
    for name in ["nginx.conf", "sluice-auth.conf"] {
        let text = example(&format!("examples/nginx/{name}"))
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{sluice_http}"))
            .replace("127.0.0.1:10000", &format!("127.0.0.1:{front}"))
            .replace("127.0.0.1:10001", &format!("127.0.0.1:{upstream}"));
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let log = std::fs::File::create(dir.path().join("nginx.log")).unwrap();
    let child = std::process::Command::new(nginx_bin())
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start nginx");
    let nginx = Nginx { child, front, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", front))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "nginx not listening within 10 s:\n{}",
            std::fs::read_to_string(nginx.dir.path().join("nginx.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nginx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_authenticates_limits_and_identifies() {
    avoid_minute_boundary(30).await;
    let mut r = replicas().await;
    let nginx = start_nginx(r.b.http_addr.port()).await;
    let (_, secret) = the_gateway_contract(&mut r, nginx.front).await;
    refused_without_sluice(r, nginx.front, &secret).await;
}
