//! The stream of accepted connections a gRPC listener serves: plain TCP,
//! or TLS with every handshake in its own task (a slow or silent client
//! cannot hold up the accept loop), bounded in time and in number, using
//! the listener's configuration as it is at that moment. Failed handshakes
//! (no client certificate, an unknown CA, an expired certificate, a
//! plaintext client) are counted and logged at debug; they never end the
//! stream. A connection tells HTTP/2 it takes no vectored writes, so a
//! small answer goes out in one write (see `Conn::is_write_vectored`).

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::ReloadingServerConfig;

/// Longest a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most handshakes in progress at once; past it, new connections wait in
/// the kernel's accept queue.
pub const MAX_HANDSHAKES: usize = 1024;

/// Pause after an accept error (out of file descriptors, ...), so the
/// loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// One accepted connection.
#[derive(Debug)]
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp().connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    /// Says no, on purpose: HTTP/2 (h2) then copies a DATA frame of up to
    /// 1 KiB into its write buffer and sends a whole small response
    /// (headers, message, trailers) in one write, where with vectored
    /// writes it keeps any frame over 256 bytes apart and writes it before
    /// it takes the trailers: two writes (and, over TLS, two records) for
    /// an ext_authz Check's OK answer. Measured in docs/benchmarks.md
    /// section 6.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// TLS state of a listener.
#[derive(Debug)]
struct Tls {
    config: Arc<ReloadingServerConfig>,
    handshakes: JoinSet<Option<TlsStream<TcpStream>>>,
    failures: Counter,
}

/// Accepted connections of one listener, ready for tonic's
/// `serve_with_incoming_shutdown`. Dropping it stops accepting and
/// abandons handshakes in progress.
#[derive(Debug)]
pub struct Incoming {
    listener: TcpListener,
    /// Which listener (for logs).
    name: &'static str,
    tls: Option<Tls>,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Incoming {
    /// Plain TCP connections.
    pub fn plain(listener: TcpListener, name: &'static str) -> Incoming {
        Incoming {
            listener,
            name,
            tls: None,
            backoff: None,
        }
    }

    /// TLS connections, handshaken with `config` as it is when each
    /// connection arrives; failed handshakes are counted in `failures`.
    pub fn tls(
        listener: TcpListener,
        name: &'static str,
        config: Arc<ReloadingServerConfig>,
        failures: Counter,
    ) -> Incoming {
        Incoming {
            listener,
            name,
            tls: Some(Tls {
                config,
                handshakes: JoinSet::new(),
                failures,
            }),
            backoff: None,
        }
    }

    /// # Errors
    /// When the OS cannot tell.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    name: &'static str,
    failures: Counter,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            failures.inc();
            tracing::debug!(listener = %name, %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            failures.inc();
            tracing::debug!(listener = %name, %peer, "TLS handshake timed out");
            None
        }
    }
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(b) = &mut this.backoff {
            if b.as_mut().poll(cx).is_pending() {
                return match &mut this.tls {
                    Some(tls) => poll_handshakes(tls, cx),
                    None => Poll::Pending,
                };
            }
            this.backoff = None;
        }
        loop {
            if this
                .tls
                .as_ref()
                .is_some_and(|t| t.handshakes.len() >= MAX_HANDSHAKES)
            {
                break;
            }
            match this.listener.poll_accept(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => {
                    tracing::warn!(listener = %this.name, error = %e, "cannot accept a connection");
                    let mut sleep = Box::pin(tokio::time::sleep(ACCEPT_BACKOFF));
                    // Registers the waker for the end of the pause.
                    let _ = sleep.as_mut().poll(cx);
                    this.backoff = Some(sleep);
                    break;
                }
                Poll::Ready(Ok((stream, peer))) => {
                    let _ = stream.set_nodelay(true);
                    match &mut this.tls {
                        None => return Poll::Ready(Some(Ok(Conn::Plain(stream)))),
                        Some(tls) => {
                            let acceptor = TlsAcceptor::from(tls.config.current());
                            tls.handshakes.spawn(handshake(
                                acceptor,
                                stream,
                                peer,
                                this.name,
                                tls.failures.clone(),
                            ));
                        }
                    }
                }
            }
        }
        match &mut this.tls {
            Some(tls) => poll_handshakes(tls, cx),
            None => Poll::Pending,
        }
    }
}

/// The next completed handshake, skipping failed ones.
fn poll_handshakes(tls: &mut Tls, cx: &mut Context<'_>) -> Poll<Option<io::Result<Conn>>> {
    loop {
        match tls.handshakes.poll_join_next(cx) {
            Poll::Ready(Some(Ok(Some(s)))) => return Poll::Ready(Some(Ok(Conn::Tls(Box::new(s))))),
            Poll::Ready(Some(Ok(None))) => {}
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "TLS handshake task ended");
            }
            // No handshakes in progress: the accept above holds the waker.
            Poll::Ready(None) | Poll::Pending => return Poll::Pending,
        }
    }
}
