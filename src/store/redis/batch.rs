//! Coalescing: checks bound for one Redis node, from one request and from
//! concurrent requests, go out together as one call of `lua/batch.lua`.
//!
//! # Queues
//!
//! Each node (the one server, or each Redis Cluster master) has a queue.
//! A request encodes its checks for a node (MessagePack, see
//! `lua/batch.lua`) and appends them to the node's open batch as one
//! *segment*, with a oneshot channel for the segment's replies. A node has
//! at most [`Dispatcher::in_flight`] calls outstanding (one per pooled
//! connection). While fewer are out, a batch is sent at once (with
//! `--redis-batch-wait-us` 0) or when its wait ends; while all are out,
//! checks gather in the open batch and go out together when a call comes
//! back. A batch is closed at `--redis-batch-max` checks; a request's
//! checks for one node are split into segments of at most that many. So a
//! lone request never waits for company (beyond the configured wait), and
//! under load each call carries as many checks as arrived during the
//! previous one's round trip.
//!
//! Each batch call runs in a task of its own, so a caller that goes away
//! (a cancelled RPC) never cuts a call short for the others.
//!
//! # Time on the wire
//!
//! Time a check spends in sluice (its queue, the Redis client's queue, a
//! runtime busy with other requests) never counts against Redis. A call is
//! timed from when it is handed to the client, and a call that has been
//! written is allowed to finish: past `--redis-timeout` it keeps waiting
//! while the node shows it is alive: it has answered something since the
//! call was sent, or it answers a `PING` within the liveness bound
//! ([`Dispatcher::confirm_timeout`], at least 250 ms). Only a node that
//! answers nothing for the timeout and then fails the `PING` is *down*: its
//! outstanding and queued checks fail at once ([`StoreError::Timeout`]),
//! and new checks for it fail immediately ([`StoreError::Unavailable`])
//! until the background prober hears from it again (every 100 ms). A
//! closed or refused connection marks it down too. A call never waits more
//! than [`Dispatcher::hard_cap`] in all.
//!
//! # Refusals
//!
//! A check the node does not serve any more (a slot moved by resharding or
//! a failover, a cluster that is down) is refused by the script before it
//! writes anything (`"R"`), and so is a whole call the node refuses
//! (`READONLY` from a demoted master, `CLUSTERDOWN`, an unknown node, a
//! command fred could not write): the caller refreshes the slot map and
//! sends those checks again (see `RedisStore::check_each`). A call whose
//! fate is unknown (a dropped connection, a timeout) is never sent again,
//! so nothing is charged twice.
//!
//! May depend on: fred, tokio, the parent module.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::{ClientLike, ClusterInterface, Error as FredError, ErrorKind, Pool};
use fred::types::config::{Options, Server};
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand, Resp3Frame, Value};
use futures_util::FutureExt as _;
use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::sync::{Notify, oneshot};

use super::keys::Tag;
use crate::store::StoreError;

/// How often the prober looks at nodes that are down.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// The least time a node gets to answer a liveness `PING`.
pub const MIN_CONFIRM_TIMEOUT: Duration = Duration::from_millis(250);
/// Spare batch buffers kept per node for reuse.
const SPARE_BATCHES: usize = 4;
/// Marks a slot no node serves.
const NO_NODE: u16 = u16::MAX;

// === Topology ===

/// Which node serves which check.
#[derive(Debug)]
pub struct Topology {
    pub nodes: Vec<Arc<Node>>,
    /// Redis Cluster: the index in `nodes` of the master of each of the
    /// 16 384 slots. Empty for a standalone or Sentinel-managed server,
    /// where node 0 serves everything.
    slots: Box<[u16]>,
}

impl Topology {
    /// One server for everything.
    pub fn single() -> Topology {
        Topology {
            nodes: vec![Arc::new(Node::new(None))],
            slots: Box::new([]),
        }
    }

    /// A cluster's masters from fred's cached slot map, keeping the queues
    /// of nodes that were already known.
    pub fn cluster(ranges: &[fred::types::cluster::SlotRange], old: &Topology) -> Topology {
        let mut nodes: Vec<Arc<Node>> = Vec::new();
        let mut slots = vec![NO_NODE; 16_384].into_boxed_slice();
        for r in ranges {
            let i = match nodes
                .iter()
                .position(|n| n.server.as_ref() == Some(&r.primary))
            {
                Some(i) => i,
                None => {
                    let node = old
                        .nodes
                        .iter()
                        .find(|n| n.server.as_ref() == Some(&r.primary))
                        .cloned()
                        .unwrap_or_else(|| Arc::new(Node::new(Some(r.primary.clone()))));
                    nodes.push(node);
                    nodes.len() - 1
                }
            };
            let i = u16::try_from(i).unwrap_or(NO_NODE);
            for s in r.start..=r.end.min(16_383) {
                slots[usize::from(s)] = i;
            }
        }
        Topology { nodes, slots }
    }

    /// Whether this is a cluster's slot map.
    pub fn is_cluster(&self) -> bool {
        !self.slots.is_empty()
    }

    /// The node serving `tag`'s keys, if any does.
    pub fn node_for(&self, tag: &Tag) -> Option<usize> {
        if self.slots.is_empty() {
            return Some(0);
        }
        let i = *self.slots.get(usize::from(tag.cluster_slot()))?;
        (i != NO_NODE).then_some(usize::from(i))
    }
}

// === Nodes and their queues ===

/// One Redis node: its queue and what is known of its health.
#[derive(Debug)]
pub struct Node {
    /// The cluster master, or `None` for the one server (fred routes).
    pub server: Option<Server>,
    queue: Mutex<Queue>,
    /// When the node last answered anything: ns since the dispatcher's epoch.
    heard: AtomicU64,
    down: AtomicBool,
    /// Wakes calls waiting on this node when it is found down.
    gone: Notify,
    /// One liveness `PING` at a time.
    confirming: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Queue {
    /// Being filled.
    open: Option<Batch>,
    /// Full, waiting for a call to come back.
    waiting: VecDeque<Batch>,
    in_flight: usize,
    /// A wait timer is armed for `open`.
    lingering: bool,
    spare: Vec<Batch>,
}

impl Node {
    /// A node fred routes to by itself (the one server, or any node for
    /// calls that name their keys).
    pub fn detached() -> Node {
        Node::new(None)
    }

    fn new(server: Option<Server>) -> Node {
        Node {
            server,
            queue: Mutex::new(Queue::default()),
            heard: AtomicU64::new(0),
            down: AtomicBool::new(false),
            gone: Notify::new(),
            confirming: tokio::sync::Mutex::new(()),
        }
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Relaxed)
    }

    pub fn hear(&self, now_ns: u64) {
        self.heard.fetch_max(now_ns, Relaxed);
    }

    /// For logs.
    pub fn name(&self) -> String {
        match &self.server {
            Some(s) => format!("{}:{}", s.host, s.port),
            None => "the server".to_owned(),
        }
    }
}

/// Checks on their way to one node in one call.
#[derive(Debug, Default)]
pub struct Batch {
    /// The checks, each a MessagePack array (see `lua/batch.lua`), without
    /// the outer array header.
    body: Vec<u8>,
    checks: usize,
    segments: Vec<Segment>,
}

#[derive(Debug)]
struct Segment {
    checks: usize,
    enqueued: Instant,
    tx: oneshot::Sender<Result<SegmentReply, BatchError>>,
}

/// What the script answered for one segment's checks.
#[derive(Debug)]
pub struct SegmentReply {
    /// The Redis server's time the batch ran at, ns since the epoch.
    pub now_ns: u64,
    pub results: SmallVec<[Raw; 4]>,
    /// Checks in the whole call, other segments' included (for spans).
    pub batch_checks: usize,
    /// Segments (requests, or parts of one) the call carried.
    pub batch_segments: usize,
}

/// One check's entry in a batch reply.
#[derive(Debug)]
pub enum Raw {
    Done {
        charged: bool,
        admitted: bool,
        /// Per limit, the three state values read before the call.
        states: SmallVec<[[Option<u64>; 3]; 2]>,
    },
    /// Not served by this node now; nothing written; may be sent again.
    Refused(String),
    /// Failed in the script; nothing written.
    Failed(String),
}

/// Why a whole segment has no replies.
#[derive(Clone, Debug)]
pub enum BatchError {
    /// The node refused the call before running it; may be sent again.
    Refused(String),
    Store(StoreError),
}

/// Receives one segment's replies.
pub type SegmentRx = oneshot::Receiver<Result<SegmentReply, BatchError>>;

// === The dispatcher ===

/// What the batch calls need, shared with their tasks.
#[derive(Debug)]
pub struct Dispatcher {
    pub pool: Pool,
    pub script: Script,
    pub url: String,
    /// `--redis-batch-max`.
    pub max_checks: usize,
    /// `--redis-batch-wait-us`.
    pub wait: Duration,
    /// Calls outstanding per node.
    pub in_flight: usize,
    /// `--redis-timeout`: silence on the wire before liveness is checked.
    pub timeout: Duration,
    /// How long the liveness `PING` may take.
    pub confirm_timeout: Duration,
    /// The most a call ever waits.
    pub hard_cap: Duration,
    epoch: Instant,
    next_client: AtomicUsize,
    pub stats: BatchStats,
}

/// Counters and distributions of the batch calls.
#[derive(Debug)]
pub struct BatchStats {
    /// Script calls sent (NOSCRIPT retries included).
    pub calls: AtomicU64,
    pub script_loads: AtomicU64,
    pub timeouts: AtomicU64,
    pub unavailable: AtomicU64,
    pub refused: AtomicU64,
    pub checks_per_call: crate::store::Histogram,
    pub batch_wait: crate::store::Histogram,
}

/// Checks per call: 1 up to 1024.
pub const CHECK_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
/// Seconds a check waited in sluice before its call went out.
pub const WAIT_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1,
];

/// How a call on the wire ended when it did not answer.
#[derive(Debug)]
pub enum Wire {
    /// fred's error (a Redis error reply or a failed connection).
    Fred(FredError),
    /// Silent past the timeout, then failed the liveness check (or past
    /// the hard cap).
    Silent,
    /// Another call found the node down.
    Down,
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: Pool,
        script: Script,
        url: String,
        max_checks: usize,
        wait: Duration,
        timeout: Duration,
    ) -> Dispatcher {
        let in_flight = pool.size().max(1);
        Dispatcher {
            pool,
            script,
            url,
            max_checks: max_checks.max(1),
            wait,
            in_flight,
            timeout,
            confirm_timeout: timeout.max(MIN_CONFIRM_TIMEOUT),
            hard_cap: (timeout * 100).max(Duration::from_secs(1)),
            epoch: Instant::now(),
            next_client: AtomicUsize::new(0),
            stats: BatchStats {
                calls: AtomicU64::new(0),
                script_loads: AtomicU64::new(0),
                timeouts: AtomicU64::new(0),
                unavailable: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                checks_per_call: crate::store::Histogram::new(CHECK_BUCKETS),
                batch_wait: crate::store::Histogram::new(WAIT_BUCKETS),
            },
        }
    }

    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A connected pooled client, round robin.
    fn client(&self) -> Option<&fred::prelude::Client> {
        let clients = self.pool.clients();
        let n = clients.len();
        let start = self.next_client.fetch_add(1, Relaxed);
        (0..n)
            .map(|i| &clients[(start + i) % n])
            .find(|c| c.is_connected())
    }

    /// Appends one segment (`checks` encoded checks) to `node`'s queue and
    /// sends what may go now.
    pub fn submit(self: &Arc<Self>, node: &Arc<Node>, encoded: &[u8], checks: usize) -> SegmentRx {
        let (tx, rx) = oneshot::channel();
        if node.is_down() {
            let _ = tx.send(Err(BatchError::Store(StoreError::Unavailable(format!(
                "Redis at {} ({}) is down",
                self.url,
                node.name()
            )))));
            return rx;
        }
        let segment = Segment {
            checks,
            enqueued: Instant::now(),
            tx,
        };
        let mut send: SmallVec<[Batch; 2]> = SmallVec::new();
        let mut arm = false;
        {
            let mut q = node.queue.lock();
            let q = &mut *q;
            let overflows = q
                .open
                .as_ref()
                .is_some_and(|b| b.checks > 0 && b.checks + checks > self.max_checks);
            if overflows && let Some(b) = q.open.take() {
                q.waiting.push_back(b);
            }
            let open = match &mut q.open {
                Some(b) => b,
                none => none.insert(q.spare.pop().unwrap_or_default()),
            };
            open.body.extend_from_slice(encoded);
            open.checks += checks;
            open.segments.push(segment);
            if open.checks >= self.max_checks
                && let Some(b) = q.open.take()
            {
                q.waiting.push_back(b);
            }
            while q.in_flight < self.in_flight {
                if let Some(b) = q.waiting.pop_front() {
                    q.in_flight += 1;
                    send.push(b);
                } else if self.wait.is_zero() {
                    if let Some(b) = q.open.take() {
                        q.in_flight += 1;
                        send.push(b);
                    }
                    break;
                } else {
                    if q.open.is_some() && !q.lingering {
                        q.lingering = true;
                        arm = true;
                    }
                    break;
                }
            }
        }
        for b in send {
            tokio::spawn(self.clone().run(node.clone(), b));
        }
        if arm {
            let this = self.clone();
            let node = node.clone();
            tokio::spawn(async move {
                tokio::time::sleep(this.wait).await;
                let batch = {
                    let mut q = node.queue.lock();
                    q.lingering = false;
                    if q.in_flight < this.in_flight {
                        let b = q.open.take();
                        if b.is_some() {
                            q.in_flight += 1;
                        }
                        b
                    } else {
                        None
                    }
                };
                if let Some(b) = batch {
                    this.run(node, b).await;
                }
            });
        }
        rx
    }

    /// Sends `batch`, then whatever gathered meanwhile, until the queue is
    /// empty.
    async fn run(self: Arc<Self>, node: Arc<Node>, mut batch: Batch) {
        loop {
            let now = Instant::now();
            for s in &batch.segments {
                #[allow(clippy::cast_precision_loss)]
                self.stats.batch_wait.observe_n(
                    now.saturating_duration_since(s.enqueued).as_secs_f64(),
                    s.checks as u64,
                );
            }
            #[allow(clippy::cast_precision_loss)]
            self.stats.checks_per_call.observe(batch.checks as f64);
            let result = self.call(&node, &batch).await;
            deliver(&mut batch, result);
            let next = {
                let mut q = node.queue.lock();
                if q.spare.len() < SPARE_BATCHES {
                    batch.body.clear();
                    batch.checks = 0;
                    batch.segments.clear();
                    q.spare.push(std::mem::take(&mut batch));
                }
                let next = q.waiting.pop_front().or_else(|| q.open.take());
                if next.is_none() {
                    q.in_flight = q.in_flight.saturating_sub(1);
                }
                next
            };
            match next {
                Some(b) => batch = b,
                None => return,
            }
        }
    }

    /// One batch call, with a `NOSCRIPT` reload; the reply blob.
    async fn call(&self, node: &Node, batch: &Batch) -> Result<Bytes, BatchError> {
        let mut blob = Vec::with_capacity(5 + batch.body.len());
        let n = u32::try_from(batch.checks).unwrap_or(u32::MAX);
        let _ = rmp::encode::write_array_len(&mut blob, n);
        blob.extend_from_slice(&batch.body);
        let blob = Bytes::from(blob);
        let mut reloaded = false;
        loop {
            let Some(client) = self.client() else {
                self.mark_down(node, "not connected");
                self.stats.unavailable.fetch_add(1, Relaxed);
                return Err(BatchError::Store(StoreError::Unavailable(format!(
                    "not connected to Redis at {}",
                    self.url
                ))));
            };
            let options = Options {
                cluster_node: node.server.clone(),
                fail_fast: true,
                timeout: Some(self.hard_cap),
                ..Options::default()
            };
            // `custom_raw`, not `evalsha`: fred 10 applies per-command
            // options (the target node) only to the interfaces `WithOptions`
            // implements, and the Lua one is not among them; and the raw
            // frame spares converting the reply blob.
            let with = client.with_options(&options);
            self.stats.calls.fetch_add(1, Relaxed);
            let call = with.custom_raw(
                CustomCommand::new_static("EVALSHA", ClusterHash::Random, false),
                vec![
                    Value::from(self.script.sha1().clone()),
                    Value::from(0),
                    Value::Bytes(blob.clone()),
                ],
            );
            let result = match self.on_the_wire(node, call).await {
                Ok(Ok(frame)) => {
                    node.hear(self.now_ns());
                    match frame {
                        Resp3Frame::BlobString { data, .. }
                        | Resp3Frame::SimpleString { data, .. } => Ok(data),
                        Resp3Frame::SimpleError { data, .. } => Err(Wire::Fred(FredError::new(
                            ErrorKind::Unknown,
                            data.to_string(),
                        ))),
                        Resp3Frame::BlobError { data, .. } => Err(Wire::Fred(FredError::new(
                            ErrorKind::Unknown,
                            String::from_utf8_lossy(&data).into_owned(),
                        ))),
                        other => Err(Wire::Fred(FredError::new(
                            ErrorKind::Protocol,
                            format!("unexpected reply from the Redis batch script: {other:?}"),
                        ))),
                    }
                }
                Ok(Err(e)) => Err(Wire::Fred(e)),
                Err(w) => Err(w),
            };
            match result {
                Ok(b) => return Ok(b),
                Err(Wire::Fred(e)) => {
                    let details = e.details();
                    if answered(&e) {
                        node.hear(self.now_ns());
                    }
                    if details.starts_with("NOSCRIPT") && !reloaded {
                        reloaded = true;
                        tracing::debug!(redis = %self.url, node = %node.name(), "batch script not cached; loading it");
                        let load = tokio::time::timeout(self.hard_cap, self.script.load(client));
                        if let Ok(Ok(())) = load.await {
                            self.stats.script_loads.fetch_add(1, Relaxed);
                            continue;
                        }
                    }
                    return Err(self.classify(node, &e));
                }
                Err(Wire::Silent) => {
                    self.stats.timeouts.fetch_add(1, Relaxed);
                    self.mark_down(node, "no answer, not even to PING");
                    return Err(BatchError::Store(StoreError::Timeout(self.timeout)));
                }
                Err(Wire::Down) => {
                    self.stats.timeouts.fetch_add(1, Relaxed);
                    return Err(BatchError::Store(StoreError::Timeout(self.timeout)));
                }
            }
        }
    }

    /// What an error from fred means for the checks of a call.
    fn classify(&self, node: &Node, e: &FredError) -> BatchError {
        let details = e.details();
        let refused = matches!(e.kind(), ErrorKind::Cluster)
            || ["READONLY", "CLUSTERDOWN", "MOVED", "ASK", "TRYAGAIN", "LOADING", "MASTERDOWN"]
                .iter()
                .any(|code| details.starts_with(code))
            // fred did not write it (it ran out of write attempts first).
            || details == "Too many failed write attempts.";
        if refused {
            self.stats.refused.fetch_add(1, Relaxed);
            return BatchError::Refused(details.to_owned());
        }
        self.stats.unavailable.fetch_add(1, Relaxed);
        if !answered(e) {
            self.mark_down(node, details);
        }
        BatchError::Store(StoreError::Unavailable(format!(
            "Redis at {} ({}): {e}",
            self.url,
            node.name()
        )))
    }

    /// Waits for `call`; see the module docs. `Err` when the node went
    /// silent (or another call found it so); the caller records what it
    /// heard.
    pub async fn on_the_wire<F: Future>(&self, node: &Node, call: F) -> Result<F::Output, Wire> {
        let sent = self.now_ns();
        let started = Instant::now();
        let mut deadline = started + self.timeout;
        let mut call = std::pin::pin!(call);
        loop {
            if node.is_down() {
                return Err(Wire::Down);
            }
            let gone = node.gone.notified();
            tokio::select! {
                biased;
                r = &mut call => return Ok(r),
                () = gone => return Err(Wire::Down),
                () = tokio::time::sleep_until(deadline.into()) => {}
            }
            // Past the deadline: our own scheduling may be what is late, so
            // let the runtime read its sockets first, then look again.
            tokio::task::yield_now().await;
            if let Some(r) = (&mut call).now_or_never() {
                return Ok(r);
            }
            if started.elapsed() >= self.hard_cap {
                return Err(Wire::Silent);
            }
            if node.heard.load(Relaxed) > sent {
                // The node answered since this call went out: it is alive
                // and this call is queued behind others, here or there.
                deadline = Instant::now() + self.timeout;
                continue;
            }
            tokio::select! {
                biased;
                r = &mut call => return Ok(r),
                alive = self.confirm_alive(node, sent) => {
                    if !alive {
                        return Err(Wire::Silent);
                    }
                    deadline = Instant::now() + self.timeout;
                }
            }
        }
    }

    /// Whether `node` has answered since `since`, or answers a `PING` now.
    async fn confirm_alive(&self, node: &Node, since: u64) -> bool {
        let _one = node.confirming.lock().await;
        if node.heard.load(Relaxed) > since {
            return true;
        }
        if node.is_down() {
            return false;
        }
        self.ping(node).await
    }

    /// One `PING` to `node`, bounded by the liveness timeout; records that
    /// it was heard.
    pub async fn ping(&self, node: &Node) -> bool {
        let Some(client) = self.client() else {
            return false;
        };
        let options = Options {
            cluster_node: node.server.clone(),
            fail_fast: true,
            timeout: Some(self.confirm_timeout),
            ..Options::default()
        };
        let with = client.with_options(&options);
        let ping = with.ping::<Value>(None);
        let ok = matches!(
            tokio::time::timeout(self.confirm_timeout, ping).await,
            Ok(Ok(_))
        );
        if ok {
            node.hear(self.now_ns());
        }
        ok
    }

    /// Marks `node` down: wakes the calls waiting on it and fails its
    /// queue.
    pub fn mark_down(&self, node: &Node, why: &str) {
        if node.down.swap(true, Relaxed) {
            return;
        }
        tracing::warn!(redis = %self.url, node = %node.name(), reason = why, "Redis node unreachable; its checks use the failure mode until it answers again");
        node.gone.notify_waiters();
        let failed: Vec<Batch> = {
            let mut q = node.queue.lock();
            let mut v: Vec<Batch> = q.waiting.drain(..).collect();
            v.extend(q.open.take());
            v
        };
        let err = BatchError::Store(StoreError::Unavailable(format!(
            "Redis at {} ({}) is down: {why}",
            self.url,
            node.name()
        )));
        for mut b in failed {
            deliver(&mut b, Err(err.clone()));
        }
    }

    /// Marks `node` up again (the prober heard from it).
    pub fn mark_up(&self, node: &Node) {
        if node.down.swap(false, Relaxed) {
            tracing::info!(redis = %self.url, node = %node.name(), "Redis node answers again; deciding there");
        }
    }

    /// Makes every pooled client re-read the cluster's slot map (bounded).
    pub async fn sync_cluster(&self) {
        for c in self.pool.clients() {
            let _ = tokio::time::timeout(self.confirm_timeout, c.sync_cluster()).await;
        }
    }
}

/// Whether fred's error is an answer from Redis (an error reply), as
/// opposed to a connection that failed or a command never written.
pub fn answered(e: &FredError) -> bool {
    !matches!(
        e.kind(),
        ErrorKind::IO
            | ErrorKind::Canceled
            | ErrorKind::Timeout
            | ErrorKind::Routing
            | ErrorKind::Backpressure
    ) && e.details() != "Too many failed write attempts."
}

/// Hands each segment its replies (or the error).
fn deliver(batch: &mut Batch, result: Result<Bytes, BatchError>) {
    let segments = std::mem::take(&mut batch.segments);
    match result.and_then(|blob| decode(&blob, batch.checks).map_err(BatchError::Store)) {
        Ok((now_ns, results)) => {
            let mut results = results.into_iter();
            let batch_segments = segments.len();
            for s in segments {
                let mine: SmallVec<[Raw; 4]> = results.by_ref().take(s.checks).collect();
                let _ = s.tx.send(Ok(SegmentReply {
                    now_ns,
                    results: mine,
                    batch_checks: batch.checks,
                    batch_segments,
                }));
            }
        }
        Err(e) => {
            for s in segments {
                let _ = s.tx.send(Err(e.clone()));
            }
        }
    }
}

// === Encoding ===

/// Appends one check to `out` in the batch script's layout.
pub fn encode_check(
    out: &mut Vec<u8>,
    keys: &super::keys::KeySpace,
    tag: &Tag,
    check: &crate::store::Check<'_>,
    jitter_ms: u64,
) {
    use crate::core::limit::{Algorithm, ChargePolicy};
    let n = u32::try_from(4 + 7 * check.limits.len()).unwrap_or(u32::MAX);
    let _ = rmp::encode::write_array_len(out, n);
    let _ = rmp::encode::write_str_len(out, u32::try_from(keys.base_len()).unwrap_or(0));
    keys.push_base(tag, out);
    str_bytes(
        out,
        match check.policy {
            ChargePolicy::Always => b"always",
            ChargePolicy::AllOrNothing => b"all",
        },
    );
    decimal(out, check.hits);
    let _ = rmp::encode::write_uint(out, jitter_ms);
    for l in check.limits {
        str_bytes(out, &super::keys::slot_hex(l.slot));
        str_bytes(
            out,
            match l.algorithm {
                Algorithm::FixedWindow => b"fixed",
                Algorithm::SlidingWindow => b"sliding",
                Algorithm::TokenBucket => b"bucket",
            },
        );
        let _ = rmp::encode::write_uint(out, l.window_ns / 1_000);
        decimal(out, u64::from(l.requests_per_unit));
        decimal(out, u64::from(l.burst));
        let interval = if l.requests_per_unit == 0 {
            0
        } else {
            (l.window_ns() / u64::from(l.requests_per_unit)).max(1)
        };
        decimal(out, interval);
        // Reduced as `LimitSpec::window_start` does.
        let _ = rmp::encode::write_uint(out, (l.offset_ns % l.window_ns.max(1)) / 1_000);
    }
}

fn str_bytes(out: &mut Vec<u8>, s: &[u8]) {
    let _ = rmp::encode::write_str_len(out, u32::try_from(s.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(s);
}

/// `n` as a MessagePack string of its decimal digits.
fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    str_bytes(out, &digits[i..]);
}

// === Decoding ===

fn bad(what: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "unexpected reply from the Redis batch script: {what}"
    ))
}

/// One MessagePack item of the reply.
enum Item<'a> {
    Str(&'a [u8]),
    Int(u64),
    Nil,
    Array(usize),
}

fn item<'a>(buf: &mut &'a [u8]) -> Result<Item<'a>, StoreError> {
    use rmp::Marker;
    use rmp::decode::RmpRead as _;
    let marker = rmp::decode::read_marker(buf).map_err(|_| bad("truncated"))?;
    let len = |buf: &mut &'a [u8], n: usize| -> Result<&'a [u8], StoreError> {
        if buf.len() < n {
            return Err(bad("truncated string"));
        }
        let (s, rest) = buf.split_at(n);
        *buf = rest;
        Ok(s)
    };
    let e = |_| bad("truncated length");
    Ok(match marker {
        Marker::FixStr(n) => Item::Str(len(buf, usize::from(n))?),
        Marker::Str8 | Marker::Bin8 => {
            let n = buf.read_data_u8().map_err(e)?;
            Item::Str(len(buf, usize::from(n))?)
        }
        Marker::Str16 | Marker::Bin16 => {
            let n = buf.read_data_u16().map_err(e)?;
            Item::Str(len(buf, usize::from(n))?)
        }
        Marker::Str32 | Marker::Bin32 => {
            let n = buf.read_data_u32().map_err(e)?;
            Item::Str(len(buf, usize::try_from(n).unwrap_or(usize::MAX))?)
        }
        Marker::FixPos(n) => Item::Int(u64::from(n)),
        Marker::U8 => Item::Int(u64::from(buf.read_data_u8().map_err(e)?)),
        Marker::U16 => Item::Int(u64::from(buf.read_data_u16().map_err(e)?)),
        Marker::U32 => Item::Int(u64::from(buf.read_data_u32().map_err(e)?)),
        Marker::U64 => Item::Int(buf.read_data_u64().map_err(e)?),
        Marker::Null => Item::Nil,
        Marker::FixArray(n) => Item::Array(usize::from(n)),
        Marker::Array16 => Item::Array(usize::from(buf.read_data_u16().map_err(e)?)),
        Marker::Array32 => {
            Item::Array(usize::try_from(buf.read_data_u32().map_err(e)?).unwrap_or(usize::MAX))
        }
        _ => return Err(bad("unexpected MessagePack type")),
    })
}

/// A decimal number (`None` for an empty string or nil).
fn number(buf: &mut &[u8]) -> Result<Option<u64>, StoreError> {
    match item(buf)? {
        Item::Str([]) | Item::Nil => Ok(None),
        Item::Str(s) => std::str::from_utf8(s)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| bad("not a number")),
        Item::Int(n) => Ok(Some(n)),
        Item::Array(_) => Err(bad("an array where a number belongs")),
    }
}

fn text(buf: &mut &[u8]) -> Result<String, StoreError> {
    match item(buf)? {
        Item::Str(s) => Ok(String::from_utf8_lossy(s).into_owned()),
        Item::Int(n) => Ok(n.to_string()),
        Item::Nil => Ok(String::new()),
        Item::Array(_) => Err(bad("an array where a message belongs")),
    }
}

/// The batch script's reply: the server's time and one entry per check.
pub fn decode(blob: &[u8], checks: usize) -> Result<(u64, Vec<Raw>), StoreError> {
    let mut buf = blob;
    let Item::Array(n) = item(&mut buf)? else {
        return Err(bad("not an array"));
    };
    if n != checks + 2 {
        return Err(bad(&format!(
            "{} entries for {checks} checks",
            n.saturating_sub(2)
        )));
    }
    let (Some(secs), Some(micros)) = (number(&mut buf)?, number(&mut buf)?) else {
        return Err(bad("no time"));
    };
    let now_ns = secs
        .checked_mul(1_000_000_000)
        .and_then(|ns| ns.checked_add(micros.checked_mul(1_000)?))
        .ok_or_else(|| bad("time out of range"))?;
    let mut out = Vec::with_capacity(checks);
    for _ in 0..checks {
        let Item::Array(len) = item(&mut buf)? else {
            return Err(bad("a check entry is not an array"));
        };
        let Item::Str(code) = item(&mut buf)? else {
            return Err(bad("a check entry without a code"));
        };
        match code {
            b"1" => {
                if len < 3 || (len - 3) % 3 != 0 {
                    return Err(bad("a check entry of the wrong length"));
                }
                let charged = number(&mut buf)? == Some(1);
                let admitted = number(&mut buf)? == Some(1);
                let mut states = SmallVec::with_capacity((len - 3) / 3);
                for _ in 0..(len - 3) / 3 {
                    states.push([number(&mut buf)?, number(&mut buf)?, number(&mut buf)?]);
                }
                out.push(Raw::Done {
                    charged,
                    admitted,
                    states,
                });
            }
            b"R" | b"E" if len == 2 => {
                let msg = text(&mut buf)?;
                out.push(if code == b"R" {
                    Raw::Refused(msg)
                } else {
                    Raw::Failed(msg)
                });
            }
            _ => return Err(bad("a check entry with an unknown code")),
        }
    }
    Ok((now_ns, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_written_as_strings() {
        let mut out = Vec::new();
        for n in [0, 7, 10, 12_345, u64::MAX] {
            out.clear();
            decimal(&mut out, n);
            let mut buf = &out[..];
            assert_eq!(number(&mut buf).expect("a number"), Some(n));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn replies_decode_and_bad_ones_are_errors() {
        let mut blob = Vec::new();
        let _ = rmp::encode::write_array_len(&mut blob, 5);
        str_bytes(&mut blob, b"1700000000");
        str_bytes(&mut blob, b"250");
        let _ = rmp::encode::write_array_len(&mut blob, 6);
        for s in [&b"1"[..], b"1", b"0", b"1699999980000000", b"3", b""] {
            str_bytes(&mut blob, s);
        }
        let _ = rmp::encode::write_array_len(&mut blob, 2);
        str_bytes(&mut blob, b"R");
        str_bytes(&mut blob, b"ERR Script attempted to access a non local key");
        let _ = rmp::encode::write_array_len(&mut blob, 2);
        str_bytes(&mut blob, b"E");
        str_bytes(&mut blob, b"boom");
        let (now, raws) = decode(&blob, 3).expect("decodes");
        assert_eq!(now, 1_700_000_000_000_250_000);
        match &raws[0] {
            Raw::Done {
                charged,
                admitted,
                states,
            } => {
                assert!(*charged && !*admitted);
                assert_eq!(states[..], [[Some(1_699_999_980_000_000), Some(3), None]]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&raws[1], Raw::Refused(m) if m.contains("non local")));
        assert!(matches!(&raws[2], Raw::Failed(m) if m == "boom"));
        assert!(decode(&blob, 2).is_err(), "count mismatch");
        assert!(decode(&blob[..blob.len() - 1], 3).is_err(), "truncated");
        assert!(decode(b"\xc3", 0).is_err(), "not an array");
    }
}
