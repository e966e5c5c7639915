//! A TCP proxy on loopback that a test controls, to make a real server
//! (PostgreSQL) unreachable or hung for the process behind it, or to lose
//! the answer to a COMMIT, without touching the server itself. Runs until
//! dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const FORWARD: u8 = 0;
const HANG: u8 = 1;
const REFUSE: u8 = 2;
const LOSE_COMMIT_ANSWER: u8 = 3;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Passes bytes both ways.
    Forward,
    /// Accepts connections and holds every byte: the server seems hung.
    Hang,
    /// Closes every connection, and each new one at once: the server
    /// seems down.
    Refuse,
    /// Passes bytes both ways, but a connection that sends `COMMIT` is
    /// closed when the server answers it, the answer not delivered: the
    /// transaction committed and the client never learns it. Needs the
    /// client in clear (`sslmode=disable`) to see the COMMIT.
    LoseCommitAnswer,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Milliseconds a new connection waits before it is forwarded.
    connect_delay: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1 and forwards to `target` (loopback only).
    pub async fn start(target: SocketAddr) -> Proxy {
        assert!(target.ip().is_loopback(), "tests only proxy to loopback");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(FORWARD));
        let connect_delay = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (mode, conns, delay) = (mode.clone(), conns.clone(), connect_delay.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if mode.load(Ordering::SeqCst) == REFUSE {
                        drop(client);
                        continue;
                    }
                    let mode = mode.clone();
                    let delay = Duration::from_millis(delay.load(Ordering::SeqCst));
                    let task = tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let Ok(server) = TcpStream::connect(target).await else {
                            return;
                        };
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        let committing = Arc::new(AtomicBool::new(false));
                        let up = pump(cr, sw, mode.clone(), committing.clone(), true);
                        let down = pump(sr, cw, mode, committing, false);
                        tokio::select! {
                            () = up => {}
                            () = down => {}
                        }
                    });
                    let mut c = conns.lock();
                    c.retain(|t| !t.is_finished());
                    c.push(task);
                }
            })
        };
        Proxy {
            addr,
            mode,
            connect_delay,
            conns,
            accept,
        }
    }

    /// Makes every new connection wait `delay` before it reaches the
    /// server (a server far away, or slow to authenticate); connections
    /// already open are not slowed.
    pub fn set_connect_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.connect_delay.store(ms, Ordering::SeqCst);
    }

    pub fn set(&self, m: Mode) {
        let v = match m {
            Mode::Forward => FORWARD,
            Mode::Hang => HANG,
            Mode::Refuse => REFUSE,
            Mode::LoseCommitAnswer => LOSE_COMMIT_ANSWER,
        };
        self.mode.store(v, Ordering::SeqCst);
        if m == Mode::Refuse {
            for t in self.conns.lock().drain(..) {
                t.abort();
            }
        }
    }

    /// `url` (postgres://user:pass@host:port/db) pointed at the proxy.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap();
        let (auth, rest) = rest.rsplit_once('@').unwrap();
        let (_, path) = rest.split_once('/').unwrap();
        format!("{scheme}://{auth}@{}/{path}", self.addr)
    }
}

/// Copies `from` → `to`, holding bytes while the proxy hangs. In
/// [`Mode::LoseCommitAnswer`], `committing` is set when a `COMMIT` goes up
/// (client to server); going down, the server's next bytes after it (its
/// answer) are dropped, and the connection with them.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
    committing: Arc<AtomicBool>,
    up: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !up && committing.load(Ordering::SeqCst) {
            return;
        }
        while mode.load(Ordering::SeqCst) == HANG {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if up
            && mode.load(Ordering::SeqCst) == LOSE_COMMIT_ANSWER
            && buf[..n].windows(6).any(|w| w == b"COMMIT")
        {
            committing.store(true, Ordering::SeqCst);
        }
        if mode.load(Ordering::SeqCst) == REFUSE || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for t in self.conns.lock().drain(..) {
            t.abort();
        }
    }
}
