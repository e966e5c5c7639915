//! The in-process cache of key lookups by secret hash: found keys (with
//! their plan, compiled) and misses, so that neither a busy key nor a
//! flood of wrong keys reaches the database at request rate.
//!
//! Entries are dropped when a key or plan changes (locally at once, on
//! other replicas when the change notification arrives) and expire after
//! a TTL in any case, bounding staleness if a notification is lost.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

use super::model::ResolvedKey;

/// What a lookup found.
#[derive(Clone, Debug)]
pub enum Cached {
    Found(Arc<ResolvedKey>),
    Missing,
}

/// Cache sizes and lifetimes.
#[derive(Clone, Copy, Debug)]
pub struct CacheOptions {
    /// Found keys held; 0 disables caching.
    pub capacity: u64,
    pub found_ttl: Duration,
    pub missing_ttl: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            capacity: 100_000,
            found_ttl: Duration::from_secs(60),
            missing_ttl: Duration::from_secs(10),
        }
    }
}

/// Lookups by secret hash.
#[derive(Debug)]
pub struct KeyCache {
    found: Option<Cache<String, Arc<ResolvedKey>>>,
    missing: Option<Cache<String, ()>>,
}

impl KeyCache {
    pub fn new(o: CacheOptions) -> KeyCache {
        if o.capacity == 0 {
            return KeyCache {
                found: None,
                missing: None,
            };
        }
        KeyCache {
            found: Some(
                Cache::builder()
                    .max_capacity(o.capacity)
                    .time_to_live(o.found_ttl)
                    .support_invalidation_closures()
                    .build(),
            ),
            missing: Some(
                Cache::builder()
                    .max_capacity(o.capacity)
                    .time_to_live(o.missing_ttl)
                    .build(),
            ),
        }
    }

    pub fn get(&self, hash: &str) -> Option<Cached> {
        if let Some(k) = self.found.as_ref().and_then(|c| c.get(hash)) {
            return Some(Cached::Found(k));
        }
        self.missing
            .as_ref()
            .and_then(|c| c.get(hash))
            .map(|()| Cached::Missing)
    }

    pub fn insert(&self, hash: String, value: Cached) {
        match value {
            Cached::Found(k) => {
                if let Some(c) = &self.found {
                    c.insert(hash, k);
                }
            }
            Cached::Missing => {
                if let Some(c) = &self.missing {
                    c.insert(hash, ());
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
            if c.invalidate_entries_if(move |_, v| pred(v)).is_err() {
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
