//! The in-process cache of key lookups by secret hash: found keys (with
//! their plan, compiled) and misses, so that neither a busy key nor a
//! flood of wrong keys reaches the database at request rate.
//!
//! Entries are dropped when a key or plan changes (locally at once, on
//! other replicas when the change notification arrives) and are fresh for
//! a TTL in any case, bounding staleness if a notification is lost. An
//! entry past its TTL is kept a while longer ([`CacheOptions::stale_for`])
//! but only ever used when the key store cannot answer and the failure
//! mode says to answer from the cache.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

use super::model::{Millis, ResolvedKey};

/// What a lookup found.
#[derive(Clone, Debug)]
pub enum Cached {
    Found(Arc<ResolvedKey>),
    Missing,
}

/// A cache entry and whether it is still within its TTL.
#[derive(Clone, Debug)]
pub struct Hit {
    pub value: Cached,
    /// Within the TTL: use it. Past it: only when the key store fails.
    pub fresh: bool,
}

/// Cache sizes and lifetimes.
#[derive(Clone, Copy, Debug)]
pub struct CacheOptions {
    /// Found keys held; 0 disables caching.
    pub capacity: u64,
    pub found_ttl: Duration,
    pub missing_ttl: Duration,
    /// How long an entry is kept past its TTL, for answering while the
    /// key store is down.
    pub stale_for: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            capacity: 100_000,
            found_ttl: Duration::from_secs(60),
            missing_ttl: Duration::from_secs(10),
            stale_for: Duration::from_secs(600),
        }
    }
}

#[derive(Clone, Debug)]
struct Entry<T> {
    value: T,
    fetched_at: Millis,
}

/// Lookups by secret hash.
#[derive(Debug)]
pub struct KeyCache {
    found: Option<Cache<String, Entry<Arc<ResolvedKey>>>>,
    missing: Option<Cache<String, Entry<()>>>,
    found_ttl_ms: Millis,
    missing_ttl_ms: Millis,
}

fn millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

impl KeyCache {
    pub fn new(o: CacheOptions) -> KeyCache {
        let (found_ttl_ms, missing_ttl_ms) = (millis(o.found_ttl), millis(o.missing_ttl));
        if o.capacity == 0 {
            return KeyCache {
                found: None,
                missing: None,
                found_ttl_ms,
                missing_ttl_ms,
            };
        }
        KeyCache {
            found: Some(
                Cache::builder()
                    .max_capacity(o.capacity)
                    .time_to_live(o.found_ttl.saturating_add(o.stale_for))
                    .support_invalidation_closures()
                    .build(),
            ),
            missing: Some(
                Cache::builder()
                    .max_capacity(o.capacity)
                    .time_to_live(o.missing_ttl.saturating_add(o.stale_for))
                    .build(),
            ),
            found_ttl_ms,
            missing_ttl_ms,
        }
    }

    /// The entry for `hash`, fresh or stale, at `now`.
    pub fn get(&self, hash: &str, now: Millis) -> Option<Hit> {
        if let Some(e) = self.found.as_ref().and_then(|c| c.get(hash)) {
            return Some(Hit {
                fresh: now.saturating_sub(e.fetched_at) < self.found_ttl_ms,
                value: Cached::Found(e.value),
            });
        }
        self.missing
            .as_ref()
            .and_then(|c| c.get(hash))
            .map(|e| Hit {
                fresh: now.saturating_sub(e.fetched_at) < self.missing_ttl_ms,
                value: Cached::Missing,
            })
    }

    /// Remembers what the key store said about `hash` at `now`.
    pub fn insert(&self, hash: String, value: Cached, now: Millis) {
        match value {
            Cached::Found(k) => {
                if let Some(c) = &self.missing {
                    c.invalidate(&hash);
                }
                if let Some(c) = &self.found {
                    c.insert(
                        hash,
                        Entry {
                            value: k,
                            fetched_at: now,
                        },
                    );
                }
            }
            Cached::Missing => {
                if let Some(c) = &self.found {
                    c.invalidate(&hash);
                }
                if let Some(c) = &self.missing {
                    c.insert(
                        hash,
                        Entry {
                            value: (),
                            fetched_at: now,
                        },
                    );
                }
            }
        }
    }

    /// Drops every entry of one key (each of its secrets).
    pub fn invalidate_key(&self, key_id: &str) {
        let id = key_id.to_string();
        self.invalidate_if(move |k| k.key.id == id);
    }

    /// Drops every key on a plan.
    pub fn invalidate_plan(&self, plan: &str) {
        let name = plan.to_string();
        self.invalidate_if(move |k| k.plan.name == name);
    }

    /// Applies a change notice: a key id, `plan:<name>` or `*`.
    pub fn apply_notice(&self, payload: &str) {
        match payload.strip_prefix("plan:") {
            Some(plan) => self.invalidate_plan(plan),
            None if payload == "*" => self.invalidate_all(),
            None => self.invalidate_key(payload),
        }
    }

    /// Drops every found key. Misses stay: a change never makes an
    /// unknown secret known (a new key's secret is new).
    pub fn invalidate_all(&self) {
        if let Some(c) = &self.found {
            c.invalidate_all();
        }
    }

    fn invalidate_if(&self, pred: impl Fn(&ResolvedKey) -> bool + Send + Sync + 'static) {
        if let Some(c) = &self.found {
            // Entries matching a registered predicate are never returned
            // again, even before they are swept. Should moka refuse more
            // predicates, drop everything instead: correct, only slower.
            if c.invalidate_entries_if(move |_, v| pred(&v.value)).is_err() {
                c.invalidate_all();
            }
        }
    }

    /// Found keys held (approximate).
    pub fn len(&self) -> u64 {
        self.found.as_ref().map_or(0, Cache::entry_count)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
