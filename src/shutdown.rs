//! Graceful shutdown: the phases every server and background task follow,
//! in the order Kubernetes and Envoy expect of a replica being replaced.
//!
//! 1. [`Phase::Serving`] until the signal.
//! 2. [`Phase::Draining`] at once on SIGTERM/SIGINT: readiness fails and
//!    gRPC health says NOT_SERVING, so that endpoints and load balancers
//!    stop sending new work here, but every listener keeps accepting and
//!    every call is still answered, for the shutdown delay.
//! 3. [`Phase::Stopping`]: listeners close (new connections are refused,
//!    not left waiting in the backlog), every HTTP/2 connection gets
//!    GOAWAY, and calls already open finish, within the drain timeout.
//! 4. [`Phase::Closed`]: the servers are done (or abandoned); background
//!    work stops, and the usage counts of the calls just answered are
//!    flushed with their own deadline.
//!
//! A [`Coordinator`] moves the phases forward, never back; each task holds
//! a [`Shutdown`] and waits for the phase that concerns it, so that any
//! number of listeners (plain or TLS, public or admin) drain together.
//!
//! May depend on: tokio and futures only.

use futures_util::{Stream, StreamExt as _};
use tokio::sync::watch;

/// Where the process is in its shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Normal operation.
    Serving,
    /// Not ready, still answering everything.
    Draining,
    /// Listeners closed, GOAWAY sent, open calls finishing.
    Stopping,
    /// Servers done; background work stops and flushes.
    Closed,
}

/// Moves the shutdown forward; owned by the composition root.
#[derive(Debug)]
pub struct Coordinator {
    tx: watch::Sender<Phase>,
}

impl Default for Coordinator {
    fn default() -> Self {
        Coordinator {
            tx: watch::Sender::new(Phase::Serving),
        }
    }
}

impl Coordinator {
    /// A handle for a task to follow the phases.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }

    /// Enters `phase`, unless a later one was already entered.
    pub fn enter(&self, phase: Phase) {
        self.tx.send_if_modified(|p| {
            let later = phase > *p;
            if later {
                *p = phase;
            }
            later
        });
    }
}

/// A task's view of the shutdown.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<Phase>,
}

impl Shutdown {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.rx.borrow()
    }

    /// Shutdown has begun: readiness and health must say so.
    pub fn is_draining(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    /// Completes once `phase` (or a later one) is entered, or when the
    /// coordinator is gone.
    pub async fn reached(&self, phase: Phase) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|p| *p >= phase).await;
    }

    /// `incoming` until [`Phase::Stopping`], then the end of the stream,
    /// with `incoming` (the listening socket) dropped right away, so that
    /// clients connecting during the drain are refused at once.
    pub fn until_stopping<S>(&self, incoming: S) -> impl Stream<Item = S::Item> + use<S>
    where
        S: Stream + Send + 'static,
    {
        let stop = Box::pin({
            let s = self.clone();
            async move { s.reached(Phase::Stopping).await }
        });
        futures_util::stream::unfold(Some((Box::pin(incoming), stop)), |state| async move {
            let (mut incoming, mut stop) = state?;
            tokio::select! {
                biased;
                () = &mut stop => None,
                item = incoming.next() => item.map(|i| (i, Some((incoming, stop)))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_only_move_forward() {
        let c = Coordinator::default();
        let s = c.subscribe();
        assert_eq!(s.phase(), Phase::Serving);
        assert!(!s.is_draining());
        c.enter(Phase::Stopping);
        c.enter(Phase::Draining);
        assert_eq!(s.phase(), Phase::Stopping);
        assert!(s.is_draining());
        s.reached(Phase::Draining).await;
    }

    #[tokio::test]
    async fn incoming_ends_and_is_dropped_at_stopping() {
        let c = Coordinator::default();
        let s = c.subscribe();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream_from(listener);
        let mut stream = Box::pin(s.until_stopping(incoming));
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(stream.next().await.is_some());
        c.enter(Phase::Draining);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(
            stream.next().await.is_some(),
            "still accepting while draining"
        );
        c.enter(Phase::Stopping);
        assert!(stream.next().await.is_none());
        // The listening socket is closed: connecting is refused.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    fn tokio_stream_from(
        l: tokio::net::TcpListener,
    ) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
        futures_util::stream::unfold(l, |l| async move {
            let r = l.accept().await.map(|(s, _)| s);
            Some((r, l))
        })
    }
}
