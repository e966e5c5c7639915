//! Change notifications between replicas: when a key or plan changes on
//! one replica, every other replica drops its cached copy within a second.
//!
//! PostgreSQL carries them with LISTEN/NOTIFY (the repository sends the
//! NOTIFY in the same transaction as the change, so it is delivered only
//! if the change commits). When the listening connection drops, messages
//! may have been missed, so everything cached is dropped on reconnect.
//!
//! Redis pub/sub carries them too when Redis is configured ([`RedisBus`],
//! [`listen_redis`]).
//!
//! May depend on: `keys`, `store::redis` (the Redis client settings), sqlx's
//! PostgreSQL listener, fred.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;

use super::cache::KeyCache;
use super::repo::NOTIFY_CHANNEL;
use crate::store::redis::{RedisOptions, fred_config};

/// Listens on PostgreSQL until `stop` resolves, applying each change to
/// the key cache. Reconnects with backoff; never returns early.
pub async fn listen_postgres(url: String, keys: Arc<KeyCache>, stop: impl Future<Output = ()>) {
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
                keys.apply_notice("*");
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
                Ok(Some(n)) => keys.apply_notice(n.payload()),
                // The connection was lost and re-established by sqlx:
                // notifications in between are gone.
                Ok(None) => keys.apply_notice("*"),
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

/// Key-change notices over Redis pub/sub, for deployments whose replicas
/// share Redis (the counter store) but not PostgreSQL's NOTIFY (SQLite
/// files on a shared volume; or in addition to PostgreSQL).
#[derive(Debug)]
pub struct RedisBus {
    client: fred::clients::Client,
    channel: String,
}

/// The channel notices travel on, under the deployment's key prefix.
pub fn redis_channel(prefix: &str) -> String {
    format!("{prefix}:key-changes")
}

impl RedisBus {
    /// Connects a publishing client.
    ///
    /// # Errors
    /// A bad URL or an unreachable Redis, as a message.
    pub async fn connect(options: &RedisOptions) -> Result<RedisBus, String> {
        use fred::interfaces::ClientLike as _;
        let config = fred_config(options).map_err(|e| e.to_string())?;
        let client = fred::types::Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(1))
            .set_policy(fred::types::config::ReconnectPolicy::new_exponential(
                0, 50, 2_000, 2,
            ))
            .build()
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(5), client.init())
            .await
            .map_err(|_| "timed out connecting".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(RedisBus {
            client,
            channel: redis_channel(&options.key_prefix),
        })
    }
}

impl super::ChangeBus for RedisBus {
    fn publish(&self, payload: String) {
        use fred::interfaces::PubsubInterface as _;
        let client = self.client.clone();
        let channel = self.channel.clone();
        tokio::spawn(async move {
            let sent: Result<i64, _> = client.publish(channel, payload).await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "cannot announce a key change on Redis; other replicas catch up at the cache TTL");
            }
        });
    }
}

/// Applies key-change notices from Redis pub/sub until `stop` resolves.
/// fred resubscribes after a reconnect; everything cached is dropped then,
/// since notices may have been missed.
pub async fn listen_redis(
    options: RedisOptions,
    keys: Arc<KeyCache>,
    stop: impl Future<Output = ()>,
) {
    use fred::interfaces::{ClientLike as _, EventInterface as _, PubsubInterface as _};
    tokio::pin!(stop);
    let config = match fred_config(&options) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "key-change listener: bad Redis URL");
            return;
        }
    };
    let subscriber = match fred::types::Builder::from_config(config)
        .set_policy(fred::types::config::ReconnectPolicy::new_exponential(
            0, 50, 2_000, 2,
        ))
        .build_subscriber_client()
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "key-change listener: cannot build a Redis client");
            return;
        }
    };
    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    let _connection = subscriber.init().await;
    let _manager = subscriber.manage_subscriptions();
    let channel = redis_channel(&options.key_prefix);
    if let Err(e) = subscriber.subscribe(channel.clone()).await {
        tracing::warn!(error = %e, "cannot subscribe to key changes yet; retried on reconnect");
    } else {
        tracing::info!(%channel, "listening for key changes on Redis");
    }
    loop {
        tokio::select! {
            () = &mut stop => break,
            m = messages.recv() => match m {
                Ok(m) => {
                    if let Some(payload) = m.value.as_str() {
                        keys.apply_notice(&payload);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => keys.apply_notice("*"),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            r = reconnects.recv() => {
                if r.is_ok() {
                    keys.apply_notice("*");
                }
            }
        }
    }
    let _ = subscriber.quit().await;
}
