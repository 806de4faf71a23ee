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
//! **Coalescing.** A request that misses the cache while another request of this process is
//! already asking Redis about one of its (rule, key) pairs waits for that answer (within its own
//! budget), then looks again: when the answer was a denial, the waiting requests are denied from
//! the cache, so a cold flood from one denied key costs one Redis call, not one per concurrent
//! request. When the answer admitted, the waiting requests go to Redis themselves (one round trip
//! later than they would have).
//!
//! Memory is bounded: a fixed number of entries, sharded; a full shard first drops expired
//! entries, then the entry, among a sample, that expires soonest. Flights hold an entry per pair
//! only while their call is in flight.

use std::collections::hash_map::{Entry as MapEntry, RandomState};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tollgate_core::{saturating_nanos, Decision, Nanos};

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
pub(crate) type Slot = (u64, u128);

/// Hashes a [`Slot`] as SipHash (keyed at random per map, as the standard map's default) of
/// one word folded from it, where the default hashes its three words: a lookup per pair per
/// decision, and the fold keeps what matters against flooding. The digest is itself a keyed
/// hash, so even an attacker who knows the key secret finds two pairs with the same fold only
/// by brute force over 64 bits.
#[derive(Debug, Clone, Default)]
struct SlotHashing(RandomState);

impl BuildHasher for SlotHashing {
    type Hasher = SlotHasher;

    fn build_hasher(&self) -> SlotHasher {
        SlotHasher {
            sip: self.0.build_hasher(),
            folded: 0,
        }
    }
}

struct SlotHasher {
    sip: std::collections::hash_map::DefaultHasher,
    folded: u64,
}

impl Hasher for SlotHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Not a slot's shape (words only): hashed in full.
        self.sip.write(bytes);
    }

    fn write_u64(&mut self, word: u64) {
        // An odd multiplier, then a rotation: distinct words in distinct positions fold apart.
        self.folded = (self.folded ^ word)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }

    fn write_u128(&mut self, word: u128) {
        self.write_u64(word as u64);
        self.write_u64((word >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        let mut sip = self.sip.clone();
        sip.write_u64(self.folded);
        sip.finish()
    }
}

#[derive(Debug, Default)]
struct Shard {
    entries: HashMap<Slot, Entry, SlotHashing>,
    /// The flights in the air, by the pairs they lead: the flight's id, and the end its
    /// followers wait for, made by the first follower (most flights have none, and then cost
    /// no channel). Removing the entry drops the sender, which releases the followers.
    flights: HashMap<Slot, (u64, Option<watch::Sender<()>>), SlotHashing>,
}

#[derive(Debug)]
pub(crate) struct DenyCache {
    shards: Box<[Mutex<Shard>]>,
    shard_capacity: usize,
    /// The next flight's id.
    flight_ids: AtomicU64,
}

/// What a request that missed the cache does: lead its pairs' call to Redis, or wait for the
/// call already leading one of them.
pub(crate) enum Join<'a> {
    /// No call is in flight for these pairs: this request's call is the one others wait for,
    /// until the flight is dropped (after its answer is in the cache).
    Lead(Flight<'a>),
    /// Another request's call is in flight for one of these pairs: its end.
    Follow(watch::Receiver<()>),
}

/// A call to Redis that other requests on its pairs wait for; they are released when it is
/// dropped (answered, failed or cancelled): its entries, and with them their senders, are
/// removed, so the followers' `changed()` returns.
pub(crate) struct Flight<'a> {
    cache: &'a DenyCache,
    id: u64,
    slots: Vec<Slot>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        for slot in &self.slots {
            let mut shard = self.cache.shard(slot).lock();
            if let MapEntry::Occupied(entry) = shard.flights.entry(*slot) {
                if entry.get().0 == self.id {
                    entry.remove();
                }
            }
        }
    }
}

impl DenyCache {
    /// A cache holding at most about `capacity` denials.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_capacity: capacity.div_ceil(SHARDS).max(1),
            flight_ids: AtomicU64::new(0),
        }
    }

    fn shard(&self, slot: &Slot) -> &Mutex<Shard> {
        // Digests are uniform: any bits pick a shard.
        &self.shards[(slot.1 as usize ^ slot.0 as usize) % SHARDS]
    }

    /// The cached denial of (rule, key) at `now`, if one is still in force.
    pub(crate) fn get(&self, rule: u64, key: u128, now: Nanos) -> Option<Decision> {
        let slot = (rule, key);
        let mut shard = self.shard(&slot).lock();
        let entry = *shard.entries.get(&slot)?;
        if entry.until <= now {
            shard.entries.remove(&slot);
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

    /// Joins the call in flight for one of `slots` (the enforced pairs of a request that missed
    /// the cache), or leads a new one for all of them.
    pub(crate) fn join(&self, slots: Vec<Slot>) -> Join<'_> {
        for slot in &slots {
            let mut shard = self.shard(slot).lock();
            // An entry exists only while its leader's flight does (the flight removes it when
            // dropped, under this lock).
            if let Some((_, end)) = shard.flights.get_mut(slot) {
                let end = end.get_or_insert_with(|| watch::channel(()).0);
                return Join::Follow(end.subscribe());
            }
        }
        let id = self.flight_ids.fetch_add(1, Ordering::Relaxed);
        for slot in &slots {
            self.shard(slot).lock().flights.insert(*slot, (id, None));
        }
        Join::Lead(Flight {
            cache: self,
            id,
            slots,
        })
    }

    /// Remembers a denial Redis gave for a request sent at `sent`.
    pub(crate) fn insert(&self, rule: u64, key: u128, sent: Nanos, decision: &Decision) {
        let Some(retry) = decision.retry_after else {
            return;
        };
        let entry = Entry {
            until: sent.saturating_add(saturating_nanos(retry)),
            reset_at: sent.saturating_add(saturating_nanos(decision.reset_after)),
            limit: decision.limit,
            remaining: decision.remaining,
        };
        let slot = (rule, key);
        let mut shard = self.shard(&slot).lock();
        let entries = &mut shard.entries;
        if entries.len() >= self.shard_capacity && !entries.contains_key(&slot) {
            entries.retain(|_, e| e.until > sent);
            if entries.len() >= self.shard_capacity {
                let victim = entries
                    .iter()
                    .take(EVICTION_SAMPLE)
                    .min_by_key(|(_, e)| e.until)
                    .map(|(k, _)| *k);
                if let Some(victim) = victim {
                    entries.remove(&victim);
                }
            }
        }
        entries.insert(slot, entry);
    }

    /// Entries held (expired ones included until they are swept).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().entries.len()).sum()
    }

    /// Flights registered, by pair.
    #[cfg(test)]
    fn flights(&self) -> usize {
        self.shards.iter().map(|s| s.lock().flights.len()).sum()
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

    #[tokio::test]
    async fn a_miss_waits_for_the_flight_on_its_pair_and_is_released_when_it_lands() {
        let cache = DenyCache::new(100);
        let Join::Lead(flight) = cache.join(vec![(1, 7), (2, 7)]) else {
            panic!("the first miss leads");
        };
        assert!(
            matches!(cache.join(vec![(3, 9)]), Join::Lead(_)),
            "other pairs fly alone"
        );
        let Join::Follow(mut end) = cache.join(vec![(4, 4), (2, 7)]) else {
            panic!("a miss on a pair in flight follows");
        };
        cache.insert(2, 7, 1_000, &denial(100));
        drop(flight);
        end.changed().await.unwrap_err();
        assert!(
            cache.get(2, 7, 2_000).is_some(),
            "the follower finds the denial"
        );
        assert_eq!(cache.flights(), 0, "landed flights leave nothing behind");
        assert!(matches!(cache.join(vec![(2, 7)]), Join::Lead(_)));
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
