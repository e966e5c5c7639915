//! Change notifications between replicas: when a key or plan changes on
//! one replica, every other replica drops its cached copy within a second.
//!
//! PostgreSQL carries them with LISTEN/NOTIFY (the repository sends the
//! NOTIFY in the same transaction as the change, so it is delivered only
//! if the change commits). When the listening connection drops, messages
//! may have been missed, so everything cached is dropped on reconnect.
//!
//! May depend on: `keys`, sqlx's PostgreSQL listener.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;

use super::KeyManager;
use super::repo::NOTIFY_CHANNEL;
use crate::store::CounterStore;

/// Listens on PostgreSQL until `stop` resolves, applying each change to
/// `keys`' cache. Reconnects with backoff; never returns early.
pub async fn listen_postgres<S: CounterStore>(
    url: String,
    keys: Arc<KeyManager<S>>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut backoff = Duration::from_millis(100);
    loop {
        let listener = tokio::select! {
            () = &mut stop => return,
            l = connect(&url) => l,
        };
        let mut listener = match listener {
            Ok(l) => {
                backoff = Duration::from_millis(100);
                // Whatever changed while we were not listening.
                keys.apply_change("*");
                tracing::info!(channel = NOTIFY_CHANNEL, "listening for key changes");
                l
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot listen for key changes");
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                () = &mut stop => return,
                n = listener.try_recv() => n,
            };
            match next {
                Ok(Some(n)) => keys.apply_change(n.payload()),
                // The connection was lost and re-established by sqlx:
                // notifications in between are gone.
                Ok(None) => keys.apply_change("*"),
                Err(e) => {
                    tracing::warn!(error = %e, "key-change listener failed; reconnecting");
                    break;
                }
            }
        }
    }
}

async fn connect(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut l = PgListener::connect(url).await?;
    l.listen(NOTIFY_CHANNEL).await?;
    Ok(l)
}
