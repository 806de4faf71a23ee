//! The local deny cache: once Redis says a (rule, key) is denied until `t`, this process denies
//! it until `t` without asking Redis again, so an abusive client cannot turn into Redis load.
//!
//! This module owns that memory and nothing else. What makes it safe:
//!
//! - Only *enforced* denials are cached, per (rule, key) pair. A rule's cost is fixed, so a
//!   denial of rule A for key K holds for every request that includes the pair (A, K), whatever
//!   other rules it stacks: such a request cannot pass before A admits it.
//! - `t` is the time the request was *sent* plus the `retry_after` Redis computed, so the cache
//!   forgets the denial no later than Redis would admit the request (absent other traffic).
//! - The denial answered from the cache carries the shrinking wait, `t - now`: the same
//!   `Retry-After` Redis would give, to the nanosecond on the same clock.
//! - Requests carrying an idempotency key skip the cache: Redis may admit them free as replays.
//!
//! What it cannot know: a unit refunded in Redis Cluster after a partial denial (see the crate
//! docs) frees room the cache does not see until `t`; and the other rules of a request denied
//! locally are not consulted (they report their capacity, see [`RedisStore`](crate::RedisStore)).
//!
//! Memory is bounded: a fixed number of entries, sharded; a full shard first drops expired
//! entries, then the entry, among a sample, that expires soonest.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tollgate_core::{Decision, Nanos};

const SHARDS: usize = 16;
const EVICTION_SAMPLE: usize = 8;

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// When the denial ends (local clock).
    until: Nanos,
    /// When the reported reset happens (local clock).
    reset_at: Nanos,
    limit: u64,
    remaining: u64,
}

/// (rule id, key digest).
type Slot = (u64, u128);

#[derive(Debug)]
pub(crate) struct DenyCache {
    shards: Box<[Mutex<HashMap<Slot, Entry>>]>,
    shard_capacity: usize,
}

impl DenyCache {
    /// A cache holding at most about `capacity` denials.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            shard_capacity: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, slot: &Slot) -> &Mutex<HashMap<Slot, Entry>> {
        // Digests are uniform: any bits pick a shard.
        &self.shards[(slot.1 as usize ^ slot.0 as usize) % SHARDS]
    }

    /// The cached denial of (rule, key) at `now`, if one is still in force.
    pub(crate) fn get(&self, rule: u64, key: u128, now: Nanos) -> Option<Decision> {
        let slot = (rule, key);
        let mut shard = self.shard(&slot).lock();
        let entry = *shard.get(&slot)?;
        if entry.until <= now {
            shard.remove(&slot);
            return None;
        }
        Some(Decision {
            allowed: false,
            limit: entry.limit,
            remaining: entry.remaining,
            reset_after: Duration::from_nanos(entry.reset_at.saturating_sub(now)),
            retry_after: Some(Duration::from_nanos(entry.until - now)),
        })
    }

    /// Remembers a denial Redis gave for a request sent at `sent`.
    pub(crate) fn insert(&self, rule: u64, key: u128, sent: Nanos, decision: &Decision) {
        let Some(retry) = decision.retry_after else {
            return;
        };
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let entry = Entry {
            until: sent.saturating_add(nanos(retry)),
            reset_at: sent.saturating_add(nanos(decision.reset_after)),
            limit: decision.limit,
            remaining: decision.remaining,
        };
        let slot = (rule, key);
        let mut shard = self.shard(&slot).lock();
        if shard.len() >= self.shard_capacity && !shard.contains_key(&slot) {
            shard.retain(|_, e| e.until > sent);
            if shard.len() >= self.shard_capacity {
                let victim = shard
                    .iter()
                    .take(EVICTION_SAMPLE)
                    .min_by_key(|(_, e)| e.until)
                    .map(|(k, _)| *k);
                if let Some(victim) = victim {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(slot, entry);
    }

    /// Entries held (expired ones included until they are swept).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(retry_ms: u64) -> Decision {
        Decision {
            allowed: false,
            limit: 10,
            remaining: 0,
            reset_after: Duration::from_millis(retry_ms * 2),
            retry_after: Some(Duration::from_millis(retry_ms)),
        }
    }

    #[test]
    fn retry_after_shrinks_and_expires() {
        let cache = DenyCache::new(100);
        cache.insert(1, 7, 1_000, &denial(100));
        let d = cache.get(1, 7, 1_000 + 40_000_000).unwrap();
        assert_eq!(d.retry_after, Some(Duration::from_millis(60)));
        assert_eq!(d.reset_after, Duration::from_millis(160));
        assert!(cache.get(1, 7, 1_000 + 100_000_000).is_none());
        assert!(cache.get(2, 7, 1_000).is_none(), "other rule");
        assert!(cache.get(1, 8, 1_000).is_none(), "other key");
    }

    #[test]
    fn bounded() {
        let cache = DenyCache::new(64);
        for k in 0..10_000u128 {
            cache.insert(1, k * 0x9e37_79b9_7f4a_7c15, 0, &denial(1_000));
        }
        assert!(cache.len() <= 64 + SHARDS, "{}", cache.len());
    }
}
