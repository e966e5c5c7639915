//! Self-tests of the Redis fixtures (support/redis.rs): real servers come up
//! on loopback, answer, fail over, stop and come back as the fixtures promise,
//! and fred accepts (and connects with) the URLs they hand out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fred::prelude::*;

use crate::support::redis::{
    RedisCluster, RedisSentinel, RedisServer, SENTINEL_SERVICE, cluster_url, redis_cli,
    redis_cli_within, sentinel_url,
};

fn ping(port: u16) -> Result<String, String> {
    redis_cli_within(port, &["PING"], Duration::from_secs(1)).map(|s| s.trim().to_string())
}

/// Connects with fred to `url`, writes `key` and reads it back (20 s at most).
fn fred_roundtrip(url: &str, key: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = Config::from_url(url).unwrap_or_else(|e| panic!("fred rejects {url}: {e}"));
        let client = Builder::from_config(config).build().unwrap();
        let work = async {
            client.init().await?;
            let () = client.set(key, "v1", None, None, false).await?;
            let got: String = client.get(key).await?;
            client.quit().await?;
            Ok::<_, Error>(got)
        };
        let got = tokio::time::timeout(Duration::from_secs(20), work)
            .await
            .unwrap_or_else(|_| panic!("fred on {url}: no answer within 20 s"))
            .unwrap_or_else(|e| panic!("fred on {url}: {e}"));
        assert_eq!(got, "v1");
    });
}

fn role(port: u16) -> String {
    redis_cli(port, &["ROLE"])
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn redis_fixtures_standalone_stops_restarts_and_pauses() {
    let t0 = Instant::now();
    let mut r = RedisServer::start();
    eprintln!("standalone up in {:?}", t0.elapsed());
    let port = r.port();
    assert_eq!(r.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(r.addr(), SocketAddr::from(([127, 0, 0, 1], port)));
    assert_eq!(ping(port).unwrap(), "PONG");
    assert_eq!(r.cli(&["CONFIG", "GET", "save"]), "save\n\n");
    assert_eq!(r.cli(&["CONFIG", "GET", "appendonly"]), "appendonly\nno\n");
    assert_eq!(r.cli(&["CONFIG", "GET", "bind"]), "bind\n127.0.0.1\n");
    r.cli(&["SET", "selftest:k", "v"]);

    // Graceful stop, then the same port again, empty.
    r.stop();
    assert!(!r.is_running());
    assert!(ping(port).is_err(), "answers after stop()");
    r.start_again();
    assert_eq!(r.port(), port);
    assert_eq!(ping(port).unwrap(), "PONG");
    assert_eq!(r.cli(&["GET", "selftest:k"]).trim(), "");

    // SIGKILL, then again.
    r.kill();
    assert!(ping(port).is_err(), "answers after kill()");
    r.start_again();
    assert_eq!(ping(port).unwrap(), "PONG");

    // Paused: connections are accepted, nothing is answered.
    r.pause();
    let t = Instant::now();
    assert!(redis_cli_within(port, &["PING"], Duration::from_millis(500)).is_err());
    assert!(t.elapsed() < Duration::from_secs(3));
    r.resume();
    assert_eq!(ping(port).unwrap(), "PONG");

    fred_roundtrip(&r.url(), "selftest:standalone");

    // A fixture dropped while paused still dies (SIGKILL works on stopped
    // processes) and frees its port.
    r.pause();
    drop(r);
    assert!(ping(port).is_err(), "answers after drop");
}

#[test]
fn redis_fixtures_urls_parse_as_fred_configs() {
    let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let url = sentinel_url(&[a(1), a(2), a(3)]);
    assert_eq!(
        url,
        "redis-sentinel://127.0.0.1:1?sentinelServiceName=sluice-master&node=127.0.0.1:2&node=127.0.0.1:3"
    );
    match Config::from_url(&url).unwrap().server {
        ServerConfig::Sentinel {
            hosts,
            service_name,
            ..
        } => {
            assert_eq!(service_name, SENTINEL_SERVICE);
            let mut ports: Vec<u16> = hosts.iter().map(|h| h.port).collect();
            ports.sort_unstable();
            assert_eq!(ports, [1, 2, 3]);
        }
        other => panic!("not a sentinel config: {other:?}"),
    }

    let url = cluster_url(&[a(1), a(2), a(3)]);
    assert_eq!(
        url,
        "redis-cluster://127.0.0.1:1?node=127.0.0.1:2&node=127.0.0.1:3"
    );
    match Config::from_url(&url).unwrap().server {
        ServerConfig::Clustered { hosts, .. } => {
            let mut ports: Vec<u16> = hosts.iter().map(|h| h.port).collect();
            ports.sort_unstable();
            assert_eq!(ports, [1, 2, 3]);
        }
        other => panic!("not a cluster config: {other:?}"),
    }
}

#[test]
fn redis_fixtures_shared_cluster_is_ok_with_three_masters() {
    let t0 = Instant::now();
    let c = RedisCluster::shared();
    eprintln!("shared cluster ready after {:?}", t0.elapsed());
    assert!(std::ptr::eq(c, RedisCluster::shared()));
    assert_eq!(c.addrs().len(), 6);
    for a in c.addrs() {
        let info = c.cli(a, &["CLUSTER", "INFO"]);
        assert!(info.contains("cluster_state:ok"), "{a}: {info}");
    }
    let masters = c.masters();
    assert_eq!(masters.len(), 3, "{masters:?}");
    assert_eq!(c.replicas().len(), 3);
    let nodes = c.cluster_nodes();
    for m in nodes.iter().filter(|n| n.is_master()) {
        let replicas = nodes
            .iter()
            .filter(|n| n.master_id.as_deref() == Some(m.id.as_str()))
            .count();
        assert_eq!(replicas, 1, "master {} has {replicas} replicas", m.addr);
    }
    // redis-cli in cluster mode follows redirects to the slot's master.
    let port = c.addrs()[0].port().to_string();
    redis_cli(c.addrs()[0].port(), &["-c", "SET", "selftest:{a}", "1"]).unwrap();
    let got = redis_cli(c.addrs()[0].port(), &["-c", "GET", "selftest:{a}"]).unwrap();
    assert_eq!(got.trim(), "1", "via node {port}");
    fred_roundtrip(&c.url(), "selftest:{shared}");
}

#[test]
fn redis_fixtures_sentinel_reports_master_and_promotes_replica() {
    let t0 = Instant::now();
    let mut s = RedisSentinel::start();
    eprintln!("sentinel set ready after {:?}", t0.elapsed());
    let (first, second) = (s.servers[0].addr(), s.servers[1].addr());
    assert_eq!(s.master_addr(), first);
    assert_eq!(role(first.port()), "master");
    assert_eq!(role(second.port()), "slave");
    assert!(s.url().starts_with("redis-sentinel://127.0.0.1:"));
    assert!(
        s.url()
            .contains("?sentinelServiceName=sluice-master&node=127.0.0.1:")
    );
    fred_roundtrip(&s.url(), "selftest:sentinel");

    let killed = s.kill_master();
    assert_eq!(killed, first);
    let t = Instant::now();
    let new = s.wait_new_master(killed, Duration::from_secs(15));
    eprintln!("sentinel failover took {:?}", t.elapsed());
    assert_eq!(new, second);
    assert_eq!(s.master_addr(), second);

    // The old master comes back on its port and is made a replica.
    s.start_again(killed);
    let deadline = Instant::now() + Duration::from_secs(20);
    while role(killed.port()) != "slave" {
        assert!(
            Instant::now() < deadline,
            "old master not turned into a replica within 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    fred_roundtrip(&s.url(), "selftest:sentinel:after");
}

#[test]
fn redis_fixtures_cluster_fails_over_and_restarts() {
    let t0 = Instant::now();
    let mut c = RedisCluster::start();
    eprintln!("own cluster ready after {:?}", t0.elapsed());
    let masters = c.masters();
    assert_eq!(masters.len(), 3);

    // Kill a master: its replica takes over.
    let victim = masters[0];
    c.kill_node(victim);
    let t = Instant::now();
    let after = c.wait_ok(Duration::from_secs(15));
    eprintln!("cluster failover took {:?}", t.elapsed());
    assert_eq!(after.len(), 3);
    assert!(!after.contains(&victim), "{after:?}");

    // It comes back as a replica.
    c.start_node_again(victim);
    c.wait_healthy(Duration::from_secs(30));
    assert!(c.replicas().contains(&victim));

    // Full outage and back, same ports, same nodes.conf.
    c.stop_all();
    for a in c.addrs() {
        assert!(ping(a.port()).is_err(), "{a} answers after stop_all()");
    }
    let t = Instant::now();
    c.start_all_again();
    eprintln!("cluster restart took {:?}", t.elapsed());
    assert_eq!(c.masters().len(), 3);
    fred_roundtrip(&c.url(), "selftest:{own}");
}

#[test]
#[should_panic(expected = "exited at start")]
fn redis_fixtures_fail_fast_with_the_log_when_redis_cannot_start() {
    let _ = RedisServer::start_with(&["--no-such-option", "1"]);
}

#[test]
#[should_panic(expected = "could not bind a port in 5 tries")]
fn redis_fixtures_retry_when_the_port_is_taken() {
    // The last --port wins, so every try binds this taken port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let _ = RedisServer::start_with(&["--port", &port]);
}
