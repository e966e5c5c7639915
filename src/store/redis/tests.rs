//! The Redis store against real `redis-server` processes that each test
//! starts on a free loopback port (never the system Redis), and kills at
//! the end: parity with the memory store and the Rust algorithms,
//! all-or-nothing, check-only, expiry, script reloads, concurrency, odd
//! descriptors, timeouts and outages, passwords and redaction.
//!
//! Needs `redis-server` on PATH (Debian: `apt-get install redis-server`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use fred::prelude::{HashesInterface, KeysInterface, ServerInterface};
use fred::types::{ClusterHash, CustomCommand, InfoKind};

use super::*;
use crate::core::clock::{Clock as _, SystemClock};
use crate::core::key::{self, Part};
use crate::core::unit::Unit;
use crate::store::memory::{DEFAULT_MAX_COUNTERS, MemoryStore};

// ---------------------------------------------------------------- harness

/// A `redis-server` of our own on a free loopback port; killed on drop.
struct Server {
    child: Child,
    port: u16,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

impl Server {
    fn start() -> Server {
        Server::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Server {
        let port = free_port();
        let mut args = vec![
            "--port".to_owned(),
            port.to_string(),
            "--bind".to_owned(),
            "127.0.0.1".to_owned(),
            "--save".to_owned(),
            String::new(),
            "--appendonly".to_owned(),
            "no".to_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (Debian: apt-get install redis-server)");
        let server = Server { child, port };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 64];
                // A reply of any kind (+PONG, or -NOAUTH with a password)
                // means the server is serving.
                if s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig}");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        self.kill();
    }
}

/// The expiry jitter of the test stores.
const JITTER_MS: i64 = 200;

fn options(server: &Server) -> RedisOptions {
    RedisOptions {
        // Generous: debug builds on a 2-core machine under parallel tests.
        command_timeout: Duration::from_secs(2),
        expiry_jitter: Duration::from_millis(JITTER_MS.unsigned_abs()),
        ..RedisOptions::new(server.url())
    }
}

async fn store(server: &Server) -> RedisStore {
    RedisStore::connect(options(server))
        .await
        .expect("connect to the test redis")
}

/// A plain client for looking at what the store wrote.
async fn inspector(server: &Server) -> Client {
    let config = Config::from_url(&server.url()).expect("url");
    let client = Builder::from_config(config).build().expect("client");
    client.init().await.expect("inspector connects");
    client
}

async fn raw<R: fred::types::FromValue>(client: &Client, cmd: &'static str, args: Vec<&str>) -> R {
    client
        .custom(
            CustomCommand::new_static(cmd, ClusterHash::Random, false),
            args,
        )
        .await
        .expect("raw command")
}

async fn all_keys(client: &Client) -> Vec<String> {
    raw(client, "KEYS", vec!["*"]).await
}

async fn hash(client: &Client, key: &str) -> HashMap<String, String> {
    client.hgetall(key).await.expect("HGETALL")
}

/// The Redis server's time, µs since the epoch.
async fn redis_now_us(client: &Client) -> u64 {
    let t: Vec<String> = raw(client, "TIME", vec![]).await;
    t[0].parse::<u64>().expect("secs") * 1_000_000 + t[1].parse::<u64>().expect("micros")
}

async fn reads_processed(client: &Client) -> u64 {
    let info: String = client.info(Some(InfoKind::Stats)).await.expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("total_reads_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_reads_processed in INFO stats")
}

fn fixed(rpu: u32, unit: Unit, index: usize) -> LimitSpec {
    LimitSpec::new(rpu, unit, Algorithm::FixedWindow, None, index)
}

fn sliding(rpu: u32, unit: Unit, index: usize) -> LimitSpec {
    LimitSpec::new(rpu, unit, Algorithm::SlidingWindow, None, index)
}

fn bucket(rpu: u32, unit: Unit, burst: u32, index: usize) -> LimitSpec {
    LimitSpec::new(rpu, unit, Algorithm::TokenBucket, Some(burst), index)
}

const SEC: u64 = 1_000_000_000;

/// A limit over any window, with an offset.
fn windowed(alg: Algorithm, rpu: u32, window_ns: u64, offset_ns: u64, index: usize) -> LimitSpec {
    LimitSpec::with_window(rpu, window_ns, offset_ns, alg, None, index)
}

fn check<'a>(key: &'a [u8], limits: &'a [LimitSpec], hits: u64) -> Check<'a> {
    Check {
        key,
        limits,
        hits,
        policy: ChargePolicy::for_limits(limits),
    }
}

async fn one(store: &RedisStore, c: Check<'_>) -> Outcome {
    let mut o = store.check(&[c]).await.expect("redis answers");
    o.remove(0)
}

/// Sleeps past the end of the current `unit` window when it ends within
/// `margin`, so a sequence of checks stays inside one window.
async fn stay_inside_window(unit: Unit, margin: Duration) {
    stay_inside_windows(&[fixed(1, unit, 0)], margin).await;
}

/// The same for the windows of every limit (offsets included).
async fn stay_inside_windows(limits: &[LimitSpec], margin: Duration) {
    let now = SystemClock::default().now_ns();
    let left = limits
        .iter()
        .map(|l| l.window_start(now) + l.window_ns() - now)
        .filter(|left| u128::from(*left) < margin.as_nanos())
        .max();
    if let Some(left) = left {
        tokio::time::sleep(Duration::from_nanos(left + 50_000_000)).await;
    }
}

// ---------------------------------------------------------------- parity

struct Case {
    name: &'static str,
    limits: Vec<LimitSpec>,
    policy: ChargePolicy,
}

fn parity_cases() -> Vec<Case> {
    let case = |name, limits: Vec<LimitSpec>| Case {
        name,
        policy: ChargePolicy::for_limits(&limits),
        limits,
    };
    vec![
        case("fixed, always", vec![fixed(5, Unit::Day, 0)]),
        Case {
            name: "fixed, all-or-nothing",
            limits: vec![fixed(5, Unit::Day, 0)],
            policy: ChargePolicy::AllOrNothing,
        },
        case("sliding", vec![sliding(6, Unit::Day, 0)]),
        case("bucket", vec![bucket(10, Unit::Day, 5, 0)]),
        case("bucket, burst above rate", vec![bucket(2, Unit::Day, 7, 0)]),
        case(
            "fixed + fixed",
            vec![fixed(4, Unit::Hour, 0), fixed(6, Unit::Day, 1)],
        ),
        case(
            "mixed",
            vec![
                fixed(8, Unit::Day, 0),
                sliding(5, Unit::Week, 1),
                bucket(10, Unit::Day, 6, 2),
            ],
        ),
        case("zero limit", vec![fixed(0, Unit::Day, 0)]),
        case("zero bucket", vec![bucket(0, Unit::Day, 0, 0)]),
        case("year bucket", vec![bucket(1000, Unit::Year, 1000, 0)]),
        case(
            "fixed 90 s",
            vec![windowed(Algorithm::FixedWindow, 5, 90 * SEC, 0, 0)],
        ),
        case(
            "sliding 90 s",
            vec![windowed(Algorithm::SlidingWindow, 6, 90 * SEC, 0, 0)],
        ),
        case(
            "bucket 90 s",
            vec![LimitSpec::with_window(
                9,
                90 * SEC,
                0,
                Algorithm::TokenBucket,
                Some(5),
                0,
            )],
        ),
        case(
            "fixed 90 s, offset 37 s",
            vec![windowed(Algorithm::FixedWindow, 5, 90 * SEC, 37 * SEC, 0)],
        ),
        case(
            "sliding 1 h, offset 1234.567 s",
            vec![windowed(
                Algorithm::SlidingWindow,
                6,
                3_600 * SEC,
                1_234_567 * 1_000_000,
                0,
            )],
        ),
        case("quota period", vec![quota_period_limit(8, 2)]),
        case(
            "plan: 90 s + hour + quota",
            vec![
                windowed(Algorithm::FixedWindow, 9, 90 * SEC, 0, 0),
                windowed(Algorithm::SlidingWindow, 6, 3_600 * SEC, 0, 1),
                quota_period_limit(7, 2),
            ],
        ),
    ]
}

/// A monthly-quota-like limit: a fixed window of 31 days offset so that it
/// started 5 days and 1 ms ago (as an API key's quota period is built).
fn quota_period_limit(rpu: u32, index: usize) -> LimitSpec {
    let len = 31 * 86_400 * SEC;
    let now = SystemClock::default().now_ns();
    let start = (now - 5 * 86_400 * SEC) / 1_000_000 * 1_000_000 - 1_000_000;
    let spec = windowed(Algorithm::FixedWindow, rpu, len, start % len, index);
    assert_eq!(spec.window_start(now), start);
    spec
}

const HITS: [u64; 14] = [1, 1, 0, 2, 3, 0, 1, 1, 10, 1, 0, 2, 1, 1];

/// The same sequence of checks through the memory store (system clock) and
/// Redis gives the same verdicts; resets agree to within the time between
/// the two calls.
async fn parity_run(batched: bool, general_only: bool) {
    let server = Server::start();
    let redis = store(&server).await;
    redis.set_batched(batched);
    redis.set_general_only(general_only);
    let memory = MemoryStore::new(Arc::new(SystemClock::default()), DEFAULT_MAX_COUNTERS);
    stay_inside_window(Unit::Hour, Duration::from_secs(10)).await;
    for case in parity_cases() {
        stay_inside_windows(&case.limits, Duration::from_secs(3)).await;
        let key = format!("parity/{}", case.name);
        for (step, &hits) in HITS.iter().enumerate() {
            let c = Check {
                key: key.as_bytes(),
                limits: &case.limits,
                hits,
                policy: case.policy,
            };
            let r = one(&redis, c).await;
            let m = memory.check(&[c]).await.expect("memory").remove(0);
            let at = format!(
                "{} step {step} (hits {hits}): redis {r:?} memory {m:?}",
                case.name
            );
            assert_eq!(r.admitted, m.admitted, "{at}");
            assert_eq!(r.verdicts.len(), m.verdicts.len(), "{at}");
            for (rv, mv) in r.verdicts.iter().zip(&m.verdicts) {
                assert_eq!(rv.admitted, mv.admitted, "{at}");
                assert_eq!(rv.used_before, mv.used_before, "{at}");
                assert_eq!(rv.remaining, mv.remaining, "{at}");
                assert!(rv.reset_ns.abs_diff(mv.reset_ns) < 500_000_000, "{at}");
            }
        }
    }
    assert_eq!(redis.redis_stats().mismatches, 0);
}

#[tokio::test]
async fn same_verdicts_as_the_memory_store() {
    parity_run(true, false).await;
}

#[tokio::test]
async fn same_verdicts_one_call_per_check() {
    parity_run(false, false).await;
}

#[tokio::test]
async fn same_verdicts_through_the_general_script() {
    parity_run(false, true).await;
}

/// Property: a batch mixing fixed windows, sliding windows, token buckets
/// and multi-limit checks, with the same key several times in one batch,
/// decides every check exactly as the memory store does on the same
/// sequence (each batch one script call). Random batches from a seeded
/// generator, 150 of them.
#[tokio::test]
async fn mixed_batches_decide_like_the_memory_store() {
    let server = Server::start();
    let redis = store(&server).await;
    let memory = MemoryStore::new(Arc::new(SystemClock::default()), DEFAULT_MAX_COUNTERS);
    let cases = parity_cases();
    stay_inside_window(Unit::Hour, Duration::from_secs(20)).await;
    let all: Vec<LimitSpec> = cases.iter().flat_map(|c| c.limits.clone()).collect();
    stay_inside_windows(&all, Duration::from_secs(8)).await;
    let keys: Vec<String> = (0..6).map(|i| format!("mixed/{i}")).collect();
    let mut rng = Rng(0xba7c4);
    let mut checked = 0usize;
    for round in 0..150 {
        let n = 1 + usize::try_from(rng.next() % 12).unwrap_or(0);
        let picks: Vec<(usize, usize, u64)> = (0..n)
            .map(|_| {
                let case = usize::try_from(rng.next()).unwrap_or(0) % cases.len();
                let key = usize::try_from(rng.next()).unwrap_or(0) % keys.len();
                (case, key, rng.pick(&HITS))
            })
            .collect();
        // One key per (case, key): a case's limits always meet their own
        // state, as with one rule per descriptor.
        let names: Vec<String> = picks
            .iter()
            .map(|(case, key, _)| format!("{}/{}", keys[*key], cases[*case].name))
            .collect();
        let checks: Vec<Check<'_>> = picks
            .iter()
            .zip(&names)
            .map(|((case, _, hits), name)| Check {
                key: name.as_bytes(),
                limits: &cases[*case].limits,
                hits: *hits,
                policy: cases[*case].policy,
            })
            .collect();
        let commands = redis.redis_stats().commands;
        let r = redis.check(&checks).await.expect("redis answers");
        assert_eq!(
            redis.redis_stats().commands,
            commands + 1,
            "one call per batch"
        );
        let m = memory.check(&checks).await.expect("memory answers");
        for (i, (rv, mv)) in r.iter().zip(&m).enumerate() {
            let at = format!(
                "round {round} check {i} {:?}: redis {rv:?} memory {mv:?}",
                picks[i]
            );
            assert_eq!(rv.admitted, mv.admitted, "{at}");
            for (a, b) in rv.verdicts.iter().zip(&mv.verdicts) {
                assert_eq!(
                    (a.admitted, a.used_before, a.remaining),
                    (b.admitted, b.used_before, b.remaining),
                    "{at}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 500, "{checked}");
    assert_eq!(redis.redis_stats().mismatches, 0);
}

/// A tiny deterministic generator for the state fuzz below.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::try_from(self.next() % items.len() as u64).unwrap_or(0)]
    }
}

fn crafted_count(rng: &mut Rng, rpu: u32) -> u64 {
    let r = u64::from(rpu);
    rng.pick(&[
        0,
        1,
        r.saturating_sub(1),
        r,
        r + 1,
        r * 3,
        1 << 53,
        (1 << 53) + 1,
        1 << 60,
        u64::MAX - 1,
        u64::MAX,
    ])
}

/// What the script should have left in the hash for `state`.
fn encoded(state: &LimitState) -> HashMap<String, String> {
    let pairs: Vec<(&str, String)> = match state {
        LimitState::Fixed(s) => vec![
            ("s", (s.window_start / 1_000).to_string()),
            ("c", s.count.to_string()),
        ],
        LimitState::Sliding(s) => vec![
            ("s", (s.window_start / 1_000).to_string()),
            ("p", s.previous.to_string()),
            ("c", s.current.to_string()),
        ],
        LimitState::Bucket(s) => vec![("t", s.tat.to_string())],
    };
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// The general script, deciding at an instant the test chooses (the last
/// two ARGV: seconds, microseconds) instead of the server's `TIME`, so
/// boundaries can be hit to the nanosecond.
const AT_INSTANT_MAIN: &str = r#"
local s, us = ARGV[#ARGV - 1], ARGV[#ARGV]
local at = {
  s = s,
  us_part = us,
  us = tonumber(s) * 1000000 + tonumber(us),
  ns = big(string.format('%s%06d000', s, tonumber(us))),
}
return decide(#KEYS, function(i, t, hits, jitter)
  local spec = spec_at(i)
  return EVALUATORS[spec.alg](spec, t, hits, jitter)
end, at)
"#;

/// The batch script with the same instant in place of `TIME` (ARGV[2],
/// ARGV[3]: seconds, microseconds): `now` is defined again after lib.lua.
const AT_INSTANT_BATCH_PRELUDE: &str = r#"
local function now()
  local s, us = ARGV[2], ARGV[3]
  return {
    s = s,
    us_part = us,
    us = tonumber(s) * 1000000 + tonumber(us),
    ns = big(string.format('%s%06d000', s, tonumber(us))),
  }
end
"#;

/// The test scripts that decide at chosen instants.
struct Instants {
    single: Script,
    batch: Script,
}

/// Which script a check goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// The single-check scripts (per-check mode).
    Single,
    /// The batch script, as the only check of a batch.
    Batch,
}

/// One check through a batch script, straight (no dispatcher): the
/// script's time and the check's entry.
async fn batch_call(
    redis: &RedisStore,
    script: &Script,
    c: &Check<'_>,
    at_us: Option<u64>,
) -> (u64, batch::Raw) {
    let mut blob = Vec::new();
    let _ = rmp::encode::write_array_len(&mut blob, 1);
    batch::encode_check(&mut blob, &redis.keys, &Tag::of(c.key), c, redis.jitter());
    let mut args = vec![Value::Bytes(blob.into())];
    if let Some(us) = at_us {
        args.push(Value::from((us / 1_000_000).to_string()));
        args.push(Value::from((us % 1_000_000).to_string()));
    }
    let client = redis.client().expect("connected");
    let v: Value = client
        .evalsha(script.sha1().clone(), Vec::<fred::types::Key>::new(), args)
        .await
        .expect("batch script runs");
    let bytes = match v {
        Value::Bytes(b) => b,
        Value::String(s) => s.into_inner(),
        other => panic!("batch reply {other:?}"),
    };
    let (now, mut raws) = batch::decode(&bytes, 1).expect("batch reply decodes");
    (now, raws.remove(0))
}

/// Crafted hash fields for each limit of a check.
type Fields = Vec<(String, String)>;

fn fields(pairs: &[(&str, u128)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.to_string()))
        .collect()
}

/// Writes `crafted` under the check's keys, runs the check (at the server's
/// time, or at `at_us` through the instant script), and asserts the script
/// decided and wrote exactly what the Rust algorithms do at the time it
/// reports. Returns the Rust outcome and whether it charged.
#[allow(clippy::too_many_arguments)]
async fn run_and_compare(
    redis: &RedisStore,
    inspect: &Client,
    instants: &Instants,
    via: Via,
    c: &Check<'_>,
    crafted: &[Fields],
    at_us: Option<u64>,
    what: &str,
) -> (Outcome, bool) {
    let what = &format!("{what} via {via:?}");
    let keys = redis.keys_of(c);
    let mut before = Vec::new();
    for (k, f) in keys.iter().zip(crafted) {
        let _: i64 = inspect.del(k.as_str()).await.expect("DEL");
        if !f.is_empty() {
            let _: () = inspect.hset(k.as_str(), f.clone()).await.expect("HSET");
        }
        before.push(hash(inspect, k).await);
    }
    let client = redis.client().expect("connected");
    let mismatches = redis.redis_stats().mismatches;
    let mut parsed = if via == Via::Batch {
        let script = match at_us {
            None => &redis.dispatcher.script,
            Some(_) => &instants.batch,
        };
        let (now, raw) = batch_call(redis, script, c, at_us).await;
        let batch::Raw::Done {
            charged,
            admitted,
            states,
        } = raw
        else {
            panic!("{what}: batch entry {raw:?}");
        };
        let _ = redis
            .outcome_of(c, now, charged, admitted, &states)
            .expect("entry parses");
        Reply {
            now,
            charged,
            admitted,
            states: states_of(c, &states).expect("states"),
        }
    } else {
        let reply: Vec<Value> = match at_us {
            None => redis
                .eval(client, redis.script_for(c.limits), c)
                .await
                .expect("script runs"),
            Some(us) => {
                let mut args = redis.args(c);
                args.push(Value::from((us / 1_000_000).to_string()));
                args.push(Value::from((us % 1_000_000).to_string()));
                client
                    .evalsha(instants.single.sha1().clone(), keys.clone(), args)
                    .await
                    .expect("instant script runs")
            }
        };
        let _ = redis.outcome(c, &reply).expect("reply parses");
        parse_reply(c, &reply).expect("reply parses")
    };
    if let Some(us) = at_us {
        assert_eq!(parsed.now, us * 1_000, "{what}");
    }
    let at = format!("{what}: {c:?} before {before:?} reply {parsed:?}");
    assert_eq!(redis.redis_stats().mismatches, mismatches, "{at}");
    let (outcome, wrote) = decide_at(c, &mut parsed.states, parsed.now);
    assert_eq!(wrote, parsed.charged, "{at}");
    assert_eq!(outcome.admitted, parsed.admitted, "{at}");
    for ((limit, k), (state, old)) in c
        .limits
        .iter()
        .zip(&keys)
        .zip(parsed.states.iter().zip(&before))
    {
        let now_hash = hash(inspect, k).await;
        let never_fills = limit.algorithm == Algorithm::TokenBucket
            && (limit.requests_per_unit == 0 || limit.burst == 0);
        if wrote && !never_fills {
            assert_eq!(now_hash, encoded(state), "{at}: {k}");
            // Kept until its state stops mattering (the Rust algorithms'
            // `expires_at`), rounded up to the ms, plus at most the jitter.
            let ttl: i64 = inspect.pttl(k.as_str()).await.expect("PTTL");
            let keep_ms = state
                .expires_at(limit)
                .saturating_sub(parsed.now)
                .div_ceil(1_000_000);
            let keep_ms = i64::try_from(keep_ms).unwrap_or(i64::MAX);
            assert!(
                ttl > keep_ms - 250 && ttl <= keep_ms + JITTER_MS,
                "{at}: {k} expires in {ttl} ms, should be {keep_ms} + jitter"
            );
        } else {
            assert_eq!(&now_hash, old, "{at}: {k} changed without a charge");
        }
    }
    (outcome, wrote)
}

async fn instant_script(redis: &RedisStore) -> Instants {
    let single = Script::from_lua(format!("{}{AT_INSTANT_MAIN}", include_str!("lua/lib.lua")));
    let batch = Script::from_lua(format!(
        "#!lua flags=allow-cross-slot-keys\n{}{AT_INSTANT_BATCH_PRELUDE}{}",
        include_str!("lua/lib.lua"),
        include_str!("lua/batch.lua")
    ));
    for script in [&single, &batch] {
        script
            .load(redis.client().expect("connected"))
            .await
            .expect("load the instant scripts");
    }
    Instants { single, batch }
}

fn interval_of(limit: &LimitSpec) -> u128 {
    if limit.requests_per_unit == 0 {
        1
    } else {
        u128::from((limit.window_ns() / u64::from(limit.requests_per_unit)).max(1))
    }
}

/// Random states written straight into Redis (around window boundaries,
/// at and past the limits, near u64::MAX, TATs far beyond 2^53 ns), random
/// hits and policies, every script, at the server's time: the script makes
/// the same admit and charge decision as the Rust algorithms at the time it
/// reports, and writes exactly the state they compute.
#[tokio::test]
async fn scripts_decide_and_write_exactly_what_the_algorithms_do() {
    let server = Server::start();
    let redis = store(&server).await;
    let inspect = inspector(&server).await;
    let instant = instant_script(&redis).await;
    let mut rng = Rng(0x5eed);
    // (window, offset): unit windows, and custom ones with and without
    // offsets (whole ms, as `with_window` makes them).
    let windows = [
        (Unit::Second.nanos(), 0),
        (Unit::Minute.nanos(), 0),
        (Unit::Day.nanos(), 0),
        (Unit::Year.nanos(), 0),
        (90 * SEC, 0),
        (90 * SEC, 37 * SEC),
        (1_500_000_000, 700_000_000),
        (31 * 86_400 * SEC, 1_234_567_891 * 1_000_000),
    ];
    let rates = [0u32, 1, 3, 7, 10, 1000, 100_000, u32::MAX];
    let mut seen = HashMap::<(Algorithm, bool, bool), u32>::new();
    for iteration in 0..600u32 {
        redis.set_general_only(iteration % 2 == 1);
        let n = if rng.next().is_multiple_of(3) {
            1 + usize::try_from(rng.next() % 3).unwrap_or(0)
        } else {
            1
        };
        let limits: Vec<LimitSpec> = (0..n)
            .map(|i| {
                let (window, offset) = rng.pick(&windows);
                let rpu = rng.pick(&rates);
                let (alg, burst) = match rng.next() % 3 {
                    0 => (Algorithm::FixedWindow, None),
                    1 => (Algorithm::SlidingWindow, None),
                    _ => (
                        Algorithm::TokenBucket,
                        Some(rng.pick(&[0, 1, rpu, rpu.saturating_mul(2), u32::MAX])),
                    ),
                };
                LimitSpec::with_window(rpu, window, offset, alg, burst, i)
            })
            .collect();
        let key = format!("fuzz/{iteration}");
        let hits = {
            let top = u64::from(limits[0].requests_per_unit);
            rng.pick(&[0, 1, 2, top, top + 1, 1 << 53, (1 << 53) + 1, u64::MAX])
        };
        let policy = rng.pick(&[ChargePolicy::Always, ChargePolicy::AllOrNothing]);
        let c = Check {
            key: key.as_bytes(),
            limits: &limits,
            hits,
            policy,
        };

        // Craft each limit's state relative to the server's clock.
        let now_us = redis_now_us(&inspect).await;
        let mut crafted = Vec::new();
        for limit in &limits {
            let w_us = limit.window_ns() / 1_000;
            let start = limit.window_start(now_us * 1_000) / 1_000;
            let rpu = limit.requests_per_unit;
            crafted.push(match limit.algorithm {
                Algorithm::FixedWindow | Algorithm::SlidingWindow => {
                    let s = rng.pick(&[
                        Some(start),
                        Some(start.saturating_sub(w_us)),
                        Some(start.saturating_sub(2 * w_us)),
                        Some(start + 1),
                        // Epoch-aligned: another window when there is an
                        // offset.
                        Some(now_us - now_us % w_us),
                        None,
                    ]);
                    match s {
                        None => vec![],
                        Some(s) => {
                            let count = u128::from(crafted_count(&mut rng, rpu));
                            let previous = u128::from(crafted_count(&mut rng, rpu));
                            if limit.algorithm == Algorithm::SlidingWindow {
                                fields(&[("s", s.into()), ("p", previous), ("c", count)])
                            } else {
                                fields(&[("s", s.into()), ("c", count)])
                            }
                        }
                    }
                }
                Algorithm::TokenBucket => {
                    let now_ns = u128::from(now_us) * 1_000;
                    let interval = interval_of(limit);
                    let tau = interval * u128::from(limit.burst);
                    let k = u128::from(rng.next() % 5);
                    let tat: Option<u128> = rng.pick(&[
                        None,
                        Some(now_ns.saturating_sub(1_000_000_000)),
                        Some(now_ns + interval * k),
                        Some(now_ns + interval * k + 1),
                        Some(now_ns + tau),
                        Some(now_ns + tau + 999),
                        Some(now_ns + (1 << 53) + 7),
                        Some(u128::from(u64::MAX)),
                    ]);
                    tat.map(|t| fields(&[("t", t.min(u128::from(u64::MAX)))]))
                        .unwrap_or_default()
                }
            });
        }
        let via = if iteration % 3 == 2 {
            Via::Batch
        } else {
            Via::Single
        };
        let (outcome, wrote) = run_and_compare(
            &redis,
            &inspect,
            &instant,
            via,
            &c,
            &crafted,
            None,
            &format!("iteration {iteration}"),
        )
        .await;
        *seen
            .entry((limits[0].algorithm, outcome.admitted, wrote))
            .or_default() += 1;
    }
    // Every algorithm was seen admitting, rejecting, charging and not.
    for alg in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
    ] {
        for admitted in [false, true] {
            for wrote in [false, true] {
                assert!(
                    seen.contains_key(&(alg, admitted, wrote)),
                    "{alg:?} admitted={admitted} charged={wrote} never happened: {seen:?}"
                );
            }
        }
    }
}

/// At chosen instants: exactly at, one microsecond (one nanosecond for
/// buckets) before and after each admission boundary, and at window
/// starts and ends, including windows of a year and buckets whose depth is
/// far beyond 2^53 ns, the script decides and writes as the Rust
/// algorithms do.
#[tokio::test]
async fn boundaries_are_decided_exactly() {
    let server = Server::start();
    let redis = store(&server).await;
    let inspect = inspector(&server).await;
    let instant = instant_script(&redis).await;
    // 2023-11-14T22:13:20Z, a whole number of days (and of every unit but
    // the week) after the epoch; offsets below move within windows.
    let base_us: u64 = 1_700_000_000 * 1_000_000;
    let mut cases = 0u32;

    // Sliding: previous * (w - e) + (current + hits) * w == limit * w at
    // e = w - d * w / previous (previous divides 10^6, so every window of
    // whole ms in µs), then one µs either side; unit windows, and custom
    // ones with offsets.
    for (window_ns, offset_ns) in [
        (Unit::Second.nanos(), 0),
        (Unit::Minute.nanos(), 0),
        (Unit::Day.nanos(), 0),
        (Unit::Year.nanos(), 0),
        (90 * SEC, 37 * SEC),
        (31 * 86_400 * SEC, 1_234_567_891 * 1_000_000),
    ] {
        let template = windowed(Algorithm::SlidingWindow, 1, window_ns, offset_ns, 0);
        let unit = format!("{window_ns}+{offset_ns} ns");
        let w = template.window_ns() / 1_000;
        let start = template.window_start(base_us * 1_000) / 1_000;
        for previous in [1u64, 2, 8, 25, 64, 1000] {
            for hits in [1u64, 3] {
                for d in [1, previous / 2 + 1, previous] {
                    let limit = 10_000u32;
                    let current = u64::from(limit) - hits - d;
                    let e = w - d * (w / previous);
                    for delta in [-1i64, 0, 1] {
                        let Some(offset) = e.checked_add_signed(delta).filter(|o| *o < w) else {
                            continue;
                        };
                        let limits = [LimitSpec {
                            requests_per_unit: limit,
                            burst: limit,
                            ..template
                        }];
                        let c = Check {
                            key: b"edge/sliding",
                            limits: &limits,
                            hits,
                            policy: ChargePolicy::AllOrNothing,
                        };
                        let crafted = [fields(&[
                            ("s", start.into()),
                            ("p", previous.into()),
                            ("c", current.into()),
                        ])];
                        let (o, _) = run_and_compare(
                            &redis,
                            &inspect,
                            &instant,
                            if cases.is_multiple_of(2) {
                                Via::Single
                            } else {
                                Via::Batch
                            },
                            &c,
                            &crafted,
                            Some(start + offset),
                            &format!("sliding {unit} p={previous} d={d} delta={delta}"),
                        )
                        .await;
                        // At the boundary and after it the weight fits.
                        assert_eq!(
                            o.admitted,
                            delta >= 0,
                            "sliding {unit} p={previous} d={d} delta={delta}"
                        );
                        cases += 1;
                    }
                }
            }
        }
    }

    // Buckets: TAT such that TAT + interval * hits - now == burst * interval,
    // one ns either side; slow rates and big bursts put the depth far past
    // 2^53 ns.
    for (rpu, unit, burst) in [
        (10u32, Unit::Second, 10u32),
        (3, Unit::Second, 5),
        (7, Unit::Minute, 100),
        (1000, Unit::Year, 1000),
        (1, Unit::Year, 500),
        (u32::MAX, Unit::Second, u32::MAX),
    ] {
        let limits = [bucket(rpu, unit, burst, 0)];
        let interval = interval_of(&limits[0]);
        let tau = interval * u128::from(burst);
        for hits in [1u64, 2] {
            for delta in [-1i128, 0, 1] {
                let now_us = base_us + 123_456;
                let now_ns = u128::from(now_us) * 1_000;
                let Some(tat) = u128::try_from(
                    i128::try_from(now_ns + tau).unwrap_or(i128::MAX)
                        - i128::try_from(interval * u128::from(hits)).unwrap_or(0)
                        + delta,
                )
                .ok()
                .filter(|t| *t >= now_ns && *t <= u128::from(u64::MAX)) else {
                    continue;
                };
                let c = Check {
                    key: b"edge/bucket",
                    limits: &limits,
                    hits,
                    policy: ChargePolicy::AllOrNothing,
                };
                let (o, _) = run_and_compare(
                    &redis,
                    &inspect,
                    &instant,
                    if cases.is_multiple_of(2) {
                        Via::Single
                    } else {
                        Via::Batch
                    },
                    &c,
                    &[fields(&[("t", tat)])],
                    Some(now_us),
                    &format!("bucket {rpu}/{unit} burst {burst} hits {hits} delta {delta}"),
                )
                .await;
                assert_eq!(
                    o.admitted,
                    delta <= 0,
                    "bucket {rpu}/{unit} burst {burst} delta {delta}"
                );
                cases += 1;
            }
        }
    }

    // Window edges: the first and last µs of a window, with state from this
    // window, the one before, and the one before that (and, with an offset,
    // the epoch-aligned window around now, which is none of them); unit
    // windows, and custom ones with offsets.
    for (window_ns, offset_ns) in [
        (Unit::Second.nanos(), 0),
        (Unit::Hour.nanos(), 0),
        (Unit::Week.nanos(), 0),
        (Unit::Year.nanos(), 0),
        (90 * SEC, 0),
        (90 * SEC, 37 * SEC),
        (1_500_000_000, 700_000_000),
        (31 * 86_400 * SEC, 1_234_567_891 * 1_000_000),
    ] {
        let unit = format!("{window_ns}+{offset_ns} ns");
        let fixed = windowed(Algorithm::FixedWindow, 5, window_ns, offset_ns, 0);
        let sliding = windowed(Algorithm::SlidingWindow, 5, window_ns, offset_ns, 0);
        let w = window_ns / 1_000;
        let start = fixed.window_start(base_us * 1_000) / 1_000;
        for now_us in [start, start + w - 1] {
            let this = fixed.window_start(now_us * 1_000) / 1_000;
            assert_eq!(this, start, "{unit}");
            let mut starts = vec![this, this - w, this - 2 * w];
            if offset_ns > 0 {
                starts.push(now_us - now_us % w);
            }
            for s in starts {
                for (limits, crafted) in [
                    ([fixed], fields(&[("s", s.into()), ("c", 5)])),
                    ([sliding], fields(&[("s", s.into()), ("p", 2), ("c", 3)])),
                ] {
                    for policy in [ChargePolicy::Always, ChargePolicy::AllOrNothing] {
                        let c = Check {
                            key: b"edge/window",
                            limits: &limits,
                            hits: 1,
                            policy,
                        };
                        let (o, _) = run_and_compare(
                            &redis,
                            &inspect,
                            &instant,
                            if cases.is_multiple_of(2) {
                                Via::Single
                            } else {
                                Via::Batch
                            },
                            &c,
                            std::slice::from_ref(&crafted),
                            Some(now_us),
                            &format!("window {unit} now {now_us} s {s}"),
                        )
                        .await;
                        if limits[0].algorithm == Algorithm::FixedWindow {
                            // Full in this window; any other count is stale.
                            assert_eq!(o.admitted, s != this, "window {unit} now {now_us} s {s}");
                        }
                        cases += 1;
                    }
                }
            }
        }
    }
    assert!(cases > 300, "{cases}");
}

// ------------------------------------------------------------ behaviour

#[tokio::test]
async fn a_rejected_all_or_nothing_check_charges_nothing() {
    let server = Server::start();
    let redis = store(&server).await;
    let inspect = inspector(&server).await;
    stay_inside_window(Unit::Hour, Duration::from_secs(10)).await;
    let limits = [
        fixed(5, Unit::Hour, 0),
        fixed(2, Unit::Day, 1),
        sliding(9, Unit::Day, 2),
        bucket(9, Unit::Day, 9, 3),
    ];
    let c = check(b"aon", &limits, 1);
    assert_eq!(c.policy, ChargePolicy::AllOrNothing);
    assert!(one(&redis, c).await.admitted);
    assert!(one(&redis, c).await.admitted);
    let keys = redis.keys_of(&c);
    let snapshot: Vec<_> = {
        let mut v = Vec::new();
        for k in &keys {
            v.push(hash(&inspect, k).await);
        }
        v
    };
    for _ in 0..5 {
        let o = one(&redis, c).await;
        assert!(!o.admitted);
        // The limits that would admit report what they had.
        assert_eq!(o.verdicts[0].remaining, 3);
        assert!(!o.verdicts[1].admitted);
    }
    for (k, old) in keys.iter().zip(&snapshot) {
        assert_eq!(&hash(&inspect, k).await, old, "{k} was charged");
    }
    let o = one(&redis, check(b"aon", &limits, 0)).await;
    let used: Vec<u64> = o.verdicts.iter().map(|v| v.used_before).collect();
    assert_eq!(used, [2, 2, 2, 2]);
}

#[tokio::test]
async fn a_check_without_hits_never_writes() {
    let server = Server::start();
    let redis = store(&server).await;
    let inspect = inspector(&server).await;
    let sets: [&[LimitSpec]; 4] = [
        &[fixed(3, Unit::Minute, 0)],
        &[sliding(3, Unit::Minute, 0)],
        &[bucket(3, Unit::Minute, 3, 0)],
        &[fixed(3, Unit::Minute, 0), bucket(3, Unit::Minute, 3, 1)],
    ];
    for limits in sets {
        let o = one(&redis, check(b"peek", limits, 0)).await;
        assert!(o.admitted);
        assert!(o.verdicts.iter().all(|v| v.used_before == 0));
    }
    let size: u64 = inspect.dbsize().await.expect("DBSIZE");
    assert_eq!(
        size,
        0,
        "check-only calls wrote {:?}",
        all_keys(&inspect).await
    );

    // An existing counter is read, not touched (nor its expiry renewed).
    let limits = [fixed(3, Unit::Minute, 0)];
    assert!(one(&redis, check(b"peek2", &limits, 1)).await.admitted);
    let k = &redis.keys_of(&check(b"peek2", &limits, 0))[0];
    let before = hash(&inspect, k).await;
    let ttl_before: i64 = inspect.pttl(k.as_str()).await.expect("PTTL");
    tokio::time::sleep(Duration::from_millis(30)).await;
    let o = one(&redis, check(b"peek2", &limits, 0)).await;
    assert_eq!(o.verdicts[0].used_before, 1);
    assert_eq!(hash(&inspect, k).await, before);
    let ttl_after: i64 = inspect.pttl(k.as_str()).await.expect("PTTL");
    assert!(ttl_after < ttl_before, "{ttl_after} < {ttl_before}");
}

#[tokio::test]
async fn keys_expire_when_their_state_stops_mattering() {
    let server = Server::start();
    let redis = store(&server).await;
    let inspect = inspector(&server).await;
    let jitter = JITTER_MS;

    let ttl_of = |limits: &'static [LimitSpec], hits: u64, key: &'static [u8]| {
        let redis = &redis;
        let inspect = &inspect;
        async move {
            let c = check(key, limits, hits);
            let o = one(redis, c).await;
            assert!(o.admitted);
            let k = redis.keys_of(&c).remove(0);
            let ttl: i64 = inspect.pttl(k.as_str()).await.expect("PTTL");
            (o, ttl)
        }
    };

    const SECOND: [LimitSpec; 1] = [LimitSpec {
        requests_per_unit: 5,
        unit: Unit::Second,
        window_ns: Unit::Second.nanos(),
        offset_ns: 0,
        algorithm: Algorithm::FixedWindow,
        burst: 5,
        slot: 1,
    }];
    let (o, ttl) = ttl_of(&SECOND, 1, b"exp-fixed-s").await;
    let reset_ms = i64::try_from(o.verdicts[0].reset_ns.div_ceil(1_000_000)).unwrap_or(0);
    assert!(ttl > 0 && ttl <= reset_ms + jitter, "{ttl} vs {reset_ms}");

    const MINUTE: [LimitSpec; 1] = [LimitSpec {
        requests_per_unit: 5,
        unit: Unit::Minute,
        window_ns: Unit::Minute.nanos(),
        offset_ns: 0,
        algorithm: Algorithm::FixedWindow,
        burst: 5,
        slot: 2,
    }];
    let (o, ttl) = ttl_of(&MINUTE, 1, b"exp-fixed-m").await;
    let reset_ms = i64::try_from(o.verdicts[0].reset_ns.div_ceil(1_000_000)).unwrap_or(0);
    assert!(
        ttl > reset_ms - 1_000 && ttl <= reset_ms + jitter,
        "{ttl} vs {reset_ms}"
    );

    const SLIDING: [LimitSpec; 1] = [LimitSpec {
        requests_per_unit: 5,
        unit: Unit::Minute,
        window_ns: Unit::Minute.nanos(),
        offset_ns: 0,
        algorithm: Algorithm::SlidingWindow,
        burst: 5,
        slot: 3,
    }];
    let (o, ttl) = ttl_of(&SLIDING, 1, b"exp-sliding").await;
    // Two windows: the rest of this one and the whole next one.
    let keep_ms = i64::try_from(o.verdicts[0].reset_ns.div_ceil(1_000_000)).unwrap_or(0) + 60_000;
    assert!(
        ttl > keep_ms - 1_000 && ttl <= keep_ms + jitter,
        "{ttl} vs {keep_ms}"
    );

    const BUCKET: [LimitSpec; 1] = [LimitSpec {
        requests_per_unit: 10,
        unit: Unit::Minute,
        window_ns: Unit::Minute.nanos(),
        offset_ns: 0,
        algorithm: Algorithm::TokenBucket,
        burst: 10,
        slot: 4,
    }];
    let (o, ttl) = ttl_of(&BUCKET, 3, b"exp-bucket").await;
    // Until the TAT: 3 intervals of 6 s from now.
    assert_eq!(o.verdicts[0].reset_ns, 18_000_000_000);
    assert!(ttl > 17_000 && ttl <= 18_000 + jitter, "{ttl}");
}

#[tokio::test]
async fn scripts_flushed_from_the_server_are_reloaded() {
    for batched in [true, false] {
        let server = Server::start();
        let redis = store(&server).await;
        redis.set_batched(batched);
        flushed_scripts_reload(&server, &redis, if batched { 1 } else { 2 }).await;
    }
}

/// `loads`: the scripts the two checks need (one batch script; or the
/// fixed-window and multi-limit scripts).
async fn flushed_scripts_reload(server: &Server, redis: &RedisStore, loads: u64) {
    let inspect = inspector(server).await;
    let single = [fixed(10, Unit::Hour, 0)];
    let multi = [fixed(10, Unit::Hour, 0), sliding(10, Unit::Hour, 1)];
    assert!(one(redis, check(b"ns", &single, 1)).await.admitted);
    let _: () = inspect.script_flush(false).await.expect("SCRIPT FLUSH");
    let o = redis
        .check(&[check(b"ns", &single, 1), check(b"ns2", &multi, 1)])
        .await
        .expect("answers after SCRIPT FLUSH");
    assert_eq!(o[0].verdicts[0].used_before, 1);
    assert!(o[1].admitted);
    let stats = redis.redis_stats();
    assert_eq!(stats.script_loads, loads, "{stats:?}");
    // Loaded again: no further reloads.
    assert!(one(redis, check(b"ns", &single, 1)).await.admitted);
    assert_eq!(redis.redis_stats().script_loads, loads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_admit_exactly_the_limit() {
    let server = Server::start();
    // Two replicas sharing the counters.
    let a = Arc::new(store(&server).await);
    let b = Arc::new(store(&server).await);
    const LIMIT: u32 = 20;
    let sets: Vec<(&str, Vec<LimitSpec>)> = vec![
        ("fixed", vec![fixed(LIMIT, Unit::Day, 0)]),
        ("sliding", vec![sliding(LIMIT, Unit::Day, 0)]),
        ("bucket", vec![bucket(1, Unit::Day, LIMIT, 0)]),
        (
            "multi",
            vec![fixed(LIMIT, Unit::Day, 0), fixed(LIMIT + 7, Unit::Week, 1)],
        ),
    ];
    stay_inside_window(Unit::Day, Duration::from_secs(30)).await;
    for (name, limits) in sets {
        let limits: Arc<[LimitSpec]> = limits.into();
        let admitted = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..64 {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (limits, admitted) = (limits.clone(), admitted.clone());
            let key = format!("hot/{name}");
            tasks.push(tokio::spawn(async move {
                let o = one(&store, check(key.as_bytes(), &limits, 1)).await;
                if o.admitted {
                    admitted.fetch_add(1, Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(admitted.load(Relaxed), LIMIT as usize, "{name}");
    }
    assert_eq!(a.redis_stats().mismatches + b.redis_stats().mismatches, 0);
}

#[tokio::test]
async fn odd_and_long_descriptor_values_make_short_keys() {
    let server = Server::start();
    let redis = store(&server).await;
    let inspect = inspector(&server).await;
    let mut nasty = String::from("{a}\n}{ \r\n\t{{}}");
    nasty.push_str(&"v".repeat(10 * 1024));
    let mut k1 = key::KeyBuf::new();
    key::push(&mut k1, Part::Domain, b"edge");
    key::push(&mut k1, Part::Key, b"user");
    key::push(&mut k1, Part::Value, nasty.as_bytes());
    let mut k2 = key::KeyBuf::new();
    key::push(&mut k2, Part::Domain, b"edge");
    key::push(&mut k2, Part::Key, b"user");
    key::push(&mut k2, Part::Value, format!("{nasty}!").as_bytes());
    let limits = [fixed(2, Unit::Day, 0), sliding(2, Unit::Day, 1)];
    for _ in 0..2 {
        assert!(one(&redis, check(&k1, &limits, 1)).await.admitted);
    }
    assert!(!one(&redis, check(&k1, &limits, 1)).await.admitted);
    // A value differing in its last byte has its own counters.
    assert!(one(&redis, check(&k2, &limits, 1)).await.admitted);
    let keys = all_keys(&inspect).await;
    assert_eq!(keys.len(), 4, "{keys:?}");
    for k in &keys {
        assert!(k.len() <= 64, "{k} is {} bytes", k.len());
        assert!(k.starts_with("sluice:v2:{"), "{k}");
    }
}

/// Unit limits keep the keys they had before windows could be custom (the
/// slots of commit e7e1838), so counters already in Redis keep counting;
/// a limit that differs only by its window or its offset has a key, and a
/// count, of its own, in Redis as in the memory store.
#[tokio::test]
async fn unit_limits_keep_their_keys_and_custom_windows_have_their_own() {
    let server = Server::start();
    let redis = store(&server).await;
    let memory = MemoryStore::new(Arc::new(SystemClock::default()), DEFAULT_MAX_COUNTERS);
    let tag = Tag::of(b"slots");
    for (limit, slot) in [
        (fixed(5, Unit::Minute, 1), 3_773_602_348_585_689_545u64),
        (sliding(5, Unit::Hour, 1), 453_433_597_011_201_844),
        (bucket(5, Unit::Second, 5, 0), 12_804_074_314_212_919_245),
    ] {
        let limits = [limit];
        let keys = redis.keys_of(&check(b"slots", &limits, 1));
        assert_eq!(
            keys,
            [format!("sluice:v2:{{{}}}:{slot:016x}", tag.as_str())]
        );
    }

    let variants = [
        [fixed(2, Unit::Minute, 0)],
        [windowed(Algorithm::FixedWindow, 2, 90 * SEC, 0, 0)],
        [windowed(Algorithm::FixedWindow, 2, 60 * SEC, 30 * SEC, 0)],
        [windowed(Algorithm::FixedWindow, 2, 90 * SEC, 30 * SEC, 0)],
    ];
    let all: Vec<LimitSpec> = variants.iter().flatten().copied().collect();
    stay_inside_windows(&all, Duration::from_secs(3)).await;
    let mut keys: Vec<String> = variants
        .iter()
        .flat_map(|v| redis.keys_of(&check(b"slots", v, 1)))
        .collect();
    keys.dedup();
    assert_eq!(keys.len(), variants.len(), "{keys:?}");
    for (i, limits) in variants.iter().enumerate() {
        for step in 0..3u64 {
            let c = check(b"slots", limits, 1);
            let r = one(&redis, c).await;
            let m = memory.check(&[c]).await.expect("memory").remove(0);
            let at = format!("variant {i} step {step}: redis {r:?} memory {m:?}");
            // Each variant starts from nothing, whatever the others counted.
            assert_eq!(r.verdicts[0].used_before, step, "{at}");
            assert_eq!(r.admitted, step < 2, "{at}");
            assert_eq!(
                (r.admitted, r.verdicts[0].used_before),
                (m.admitted, m.verdicts[0].used_before),
                "{at}"
            );
        }
    }
    assert_eq!(redis.redis_stats().mismatches, 0);
}

/// A request's 32 checks go to the server as one batch script call: with
/// the server stopped, the call is written anyway, and once it runs again
/// it reads it in one go.
#[tokio::test]
async fn a_requests_checks_are_one_call() {
    let server = Server::start();
    let redis = Arc::new(store(&server).await);
    let inspect = inspector(&server).await;
    let limits = [fixed(10, Unit::Day, 0)];
    // Warm up (connections, script cache).
    redis
        .check(&[check(b"batch/warm-up", &limits, 1)])
        .await
        .expect("warm up");
    let before = reads_processed(&inspect).await;
    server.signal("-STOP");
    let batch = tokio::spawn({
        let redis = redis.clone();
        async move {
            let names: Vec<String> = (0..32).map(|i| format!("batch/{i}")).collect();
            let limits = [fixed(10, Unit::Day, 0)];
            let checks: Vec<Check<'_>> = names
                .iter()
                .map(|n| check(n.as_bytes(), &limits, 1))
                .collect();
            redis.check(&checks).await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.signal("-CONT");
    let outcomes = batch.await.expect("task").expect("batch");
    assert!(outcomes.iter().all(|o| o.admitted));
    let after = reads_processed(&inspect).await;
    // `after` counts its own INFO read; the rest is the batch.
    let batch_reads = after - before - 1;
    assert!(
        batch_reads <= 2,
        "32 commands took {batch_reads} server reads"
    );
    let stats = redis.redis_stats();
    assert_eq!((stats.batches, stats.commands, stats.checks), (2, 2, 33));
}

// --------------------------------------------------------------- failures

#[tokio::test]
async fn a_stopped_server_times_out_within_the_bound() {
    let server = Server::start();
    let redis = RedisStore::connect(RedisOptions::new(server.url()))
        .await
        .expect("connect");
    assert_eq!(redis.command_timeout, DEFAULT_COMMAND_TIMEOUT);
    let limits = [fixed(100, Unit::Day, 0)];
    let c = check(b"stop", &limits, 1);
    redis.check(&[c]).await.expect("before SIGSTOP");
    server.signal("-STOP");
    let started = Instant::now();
    let result = redis.check(&[c, c]).await;
    let took = started.elapsed();
    server.signal("-CONT");
    assert!(
        matches!(result, Err(StoreError::Timeout(d)) if d == DEFAULT_COMMAND_TIMEOUT),
        "{result:?}"
    );
    assert!(took < Duration::from_millis(500), "took {took:?}");
    assert_eq!(redis.redis_stats().timeouts, 1);
    // Back to normal once the server runs again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match redis.check(&[c]).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "still failing: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_closed_port_is_unavailable() {
    // Nothing listens: connecting fails quickly and says so.
    let port = free_port();
    let err = RedisStore::connect(RedisOptions::new(format!("redis://127.0.0.1:{port}")))
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, ConnectError::Unavailable { .. }), "{err}");
    assert!(
        err.is_transient(),
        "start-up waits for a Redis still coming up"
    );

    // A server that goes away: checks fail fast with Unavailable.
    let mut server = Server::start();
    let redis = store(&server).await;
    let limits = [fixed(100, Unit::Day, 0)];
    let c = check(b"gone", &limits, 1);
    redis.check(&[c]).await.expect("while up");
    server.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let started = Instant::now();
        let result = redis.check(&[c]).await;
        assert!(started.elapsed() < Duration::from_secs(3), "unbounded call");
        match result {
            Err(StoreError::Unavailable(msg)) => {
                assert!(msg.contains("127.0.0.1"), "{msg}");
                break;
            }
            other => assert!(Instant::now() < deadline, "still {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(redis.redis_stats().unavailable >= 1);
}

#[tokio::test]
async fn passwords_work_and_are_never_shown() {
    let pw = "s3cr3t-Pa55";
    let server = Server::start_with(&["--requirepass", pw]);
    let port = server.port;

    let in_url = RedisStore::connect(RedisOptions {
        command_timeout: Duration::from_secs(2),
        ..RedisOptions::new(format!("redis://:{pw}@127.0.0.1:{port}"))
    })
    .await
    .expect("password in the URL");
    assert!(!format!("{in_url:?}").contains(pw));
    let limits = [fixed(1, Unit::Day, 0)];
    assert!(one(&in_url, check(b"pw", &limits, 1)).await.admitted);

    let opts = RedisOptions {
        password: Some(pw.parse().unwrap()),
        command_timeout: Duration::from_secs(2),
        ..RedisOptions::new(format!("redis://:wrong-one@127.0.0.1:{port}"))
    };
    assert!(!format!("{opts:?}").contains(pw));
    assert!(!format!("{opts:?}").contains("wrong-one"));
    let overridden = RedisStore::connect(opts).await.expect("password override");
    assert!(!one(&overridden, check(b"pw", &limits, 1)).await.admitted);

    let err = RedisStore::connect(RedisOptions::new(format!(
        "redis://:wrong-one@127.0.0.1:{port}"
    )))
    .await
    .expect_err("wrong password");
    assert!(
        matches!(err, ConnectError::Refused { .. }) && !err.is_transient(),
        "a wrong password is not worth waiting for: {err}"
    );
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("wrong-one"), "{shown}");
    assert!(shown.contains("127.0.0.1"), "{shown}");
}

#[tokio::test]
async fn bad_settings_are_config_errors() {
    for (url, prefix) in [
        ("nonsense", "sluice"),
        ("redis-sentinel://127.0.0.1:1", "sluice"),
        ("redis://127.0.0.1:1", "a{b}"),
    ] {
        let err = RedisStore::connect(RedisOptions {
            key_prefix: prefix.to_owned(),
            ..RedisOptions::new(url)
        })
        .await
        .expect_err("bad settings");
        assert!(
            matches!(err, ConnectError::Config(_)),
            "{url} {prefix}: {err}"
        );
    }
    let err = RedisStore::connect(RedisOptions {
        command_timeout: Duration::ZERO,
        ..RedisOptions::new("redis://127.0.0.1:1")
    })
    .await
    .expect_err("unbounded calls");
    assert!(matches!(err, ConnectError::Config(_)), "{err}");
}

// ---------------------------------------------------------------- cluster

/// Three masters on loopback, slots spread by `redis-cli --cluster create`.
struct Cluster {
    nodes: Vec<Server>,
    _dir: tempfile::TempDir,
}

/// A port whose cluster bus port (+10000) is free too.
fn free_cluster_port(taken: &[u16]) -> u16 {
    for _ in 0..1000 {
        let port = free_port();
        if port < 55_000
            && !taken.contains(&port)
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            return port;
        }
        // Ephemeral ports are mostly high: try the low range by hand.
        let guess = 20_000 + u16::try_from(Rng(u64::from(port)).next() % 20_000).unwrap_or(0);
        if !taken.contains(&guess)
            && TcpListener::bind(("127.0.0.1", guess)).is_ok()
            && TcpListener::bind(("127.0.0.1", guess + 10_000)).is_ok()
        {
            return guess;
        }
    }
    panic!("no free port pair for a cluster node");
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli on PATH");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ports = Vec::new();
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_cluster_port(&ports);
            ports.push(port);
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
                .arg("--cluster-config-file")
                .arg(&conf)
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server on PATH (Debian: apt-get install redis-server)");
            let node = Server { child, port };
            node.wait_ready();
            nodes.push(node);
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addrs.iter().map(String::as_str));
        create.push("--cluster-yes");
        cli(ports[0], &create);
        let deadline = Instant::now() + Duration::from_secs(20);
        for p in &ports {
            while !cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "cluster did not form");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Cluster { nodes, _dir: dir }
    }

    fn url(&self) -> String {
        let p: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        format!(
            "redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}",
            p[0], p[1], p[2]
        )
    }

    /// The port of the node serving `slot`.
    fn owner(&self, slot: u16) -> u16 {
        let shards = cli(self.nodes[0].port, &["CLUSTER", "SLOTS"]);
        // redis-cli prints nested arrays one value per line: start, end,
        // host, port, id, ...
        let lines: Vec<&str> = shards.lines().map(str::trim).collect();
        let mut i = 0;
        while i + 3 < lines.len() {
            if let (Ok(start), Ok(end)) = (lines[i].parse::<u16>(), lines[i + 1].parse::<u16>())
                && lines[i + 2] == "127.0.0.1"
                && (start..=end).contains(&slot)
            {
                return lines[i + 3].parse().expect("port");
            }
            i += 1;
        }
        panic!("no owner for slot {slot} in {shards}");
    }

    /// Moves `slot` (and its keys) from its owner to another node, as
    /// resharding does.
    fn migrate(&self, slot: u16) -> u16 {
        let from = self.owner(slot);
        let to = self
            .nodes
            .iter()
            .map(|n| n.port)
            .find(|p| *p != from)
            .expect("another node");
        let id = |p: u16| cli(p, &["CLUSTER", "MYID"]);
        let (from_id, to_id) = (id(from), id(to));
        let s = slot.to_string();
        cli(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]);
        cli(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]);
        let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", &s, "1000"]);
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if !keys.is_empty() {
            let mut args = vec!["MIGRATE", "127.0.0.1"];
            let to_s = to.to_string();
            args.push(&to_s);
            args.extend(["", "0", "5000", "KEYS"]);
            args.extend(keys.iter().copied());
            cli(from, &args);
        }
        for n in &self.nodes {
            cli(n.port, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
        }
        to
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_decides_multi_limit_checks_and_follows_moved_slots() {
    let cluster = Cluster::start();
    let redis = RedisStore::connect(RedisOptions {
        command_timeout: Duration::from_secs(2),
        ..RedisOptions::new(cluster.url())
    })
    .await
    .expect("connect to the cluster");
    stay_inside_window(Unit::Hour, Duration::from_secs(30)).await;
    let limits = [
        fixed(3, Unit::Hour, 0),
        sliding(5, Unit::Day, 1),
        bucket(10, Unit::Day, 4, 2),
    ];
    // Many descriptors: they spread over all three nodes, each check's
    // keys in one slot.
    let names: Vec<String> = (0..24).map(|i| format!("cluster/{i}")).collect();
    for round in 0..4u64 {
        let checks: Vec<Check<'_>> = names
            .iter()
            .map(|n| check(n.as_bytes(), &limits, 1))
            .collect();
        let outcomes = redis.check(&checks).await.expect("cluster answers");
        for o in &outcomes {
            assert_eq!(o.admitted, round < 3, "round {round}: {o:?}");
            assert_eq!(o.verdicts[0].used_before, round.min(3));
        }
    }
    // A stable cluster: every call went to the node that owns its checks
    // (none refused), one call per node per round.
    let stats = redis.redis_stats();
    assert_eq!((stats.redirects, stats.commands), (0, 12), "{stats:?}");
    let mut owners = std::collections::HashSet::new();
    for n in &names {
        let k = &redis.keys_of(&check(n.as_bytes(), &limits, 0))[0];
        let slot: u16 = cli(cluster.nodes[0].port, &["CLUSTER", "KEYSLOT", k])
            .parse()
            .expect("slot");
        owners.insert(cluster.owner(slot));
    }
    assert_eq!(owners.len(), 3, "descriptors should land on every node");

    // Move one descriptor's slot: the client's routing is stale, Redis
    // answers MOVED, and the check still succeeds with its counts.
    let c = check(names[0].as_bytes(), &limits, 0);
    let k = redis.keys_of(&c).remove(0);
    let slot: u16 = cli(cluster.nodes[0].port, &["CLUSTER", "KEYSLOT", &k])
        .parse()
        .expect("slot");
    let before = cluster.owner(slot);
    let after = cluster.migrate(slot);
    assert_ne!(before, after);
    let o = one(&redis, c).await;
    assert_eq!(o.verdicts[0].used_before, 3);
    assert_eq!(o.verdicts[1].used_before, 3);
    let stats = redis.redis_stats();
    assert!(stats.redirects >= 1, "{stats:?}");
    assert_eq!(stats.mismatches, 0);
}

// --------------------------------------------------------------- sentinel

#[tokio::test]
async fn a_sentinel_url_finds_the_primary() {
    let primary = Server::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "sentinel monitor sluice-test 127.0.0.1 {} 1\nsentinel down-after-milliseconds sluice-test 60000\n",
            primary.port
        ),
    )
    .expect("write sentinel.conf");
    let port = free_port();
    let child = Command::new("redis-server")
        .arg(&conf)
        .args([
            "--sentinel",
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server --sentinel");
    let sentinel = Server { child, port };
    sentinel.wait_ready();

    let redis = RedisStore::connect(RedisOptions {
        command_timeout: Duration::from_secs(2),
        ..RedisOptions::new(format!(
            "redis-sentinel://127.0.0.1:{port}?sentinelServiceName=sluice-test"
        ))
    })
    .await
    .expect("connect through the sentinel");
    let limits = [fixed(1, Unit::Day, 0)];
    assert!(one(&redis, check(b"sentinel", &limits, 1)).await.admitted);
    assert!(!one(&redis, check(b"sentinel", &limits, 1)).await.admitted);
    // The counters are on the primary.
    let inspect = inspector(&primary).await;
    assert_eq!(all_keys(&inspect).await.len(), 1);
}
