//! A TCP proxy on loopback that a test controls, to make a real server
//! (PostgreSQL) unreachable or hung for the process behind it without
//! touching the server itself. Runs until dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const FORWARD: u8 = 0;
const HANG: u8 = 1;
const REFUSE: u8 = 2;

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
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
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
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (mode, conns) = (mode.clone(), conns.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if mode.load(Ordering::SeqCst) == REFUSE {
                        drop(client);
                        continue;
                    }
                    let mode = mode.clone();
                    let task = tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(target).await else {
                            return;
                        };
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        let up = pump(cr, sw, mode.clone());
                        let down = pump(sr, cw, mode);
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
            conns,
            accept,
        }
    }

    pub fn set(&self, m: Mode) {
        let v = match m {
            Mode::Forward => FORWARD,
            Mode::Hang => HANG,
            Mode::Refuse => REFUSE,
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

/// Copies `from` → `to`, holding bytes while the proxy hangs.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while mode.load(Ordering::SeqCst) == HANG {
            tokio::time::sleep(Duration::from_millis(10)).await;
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
