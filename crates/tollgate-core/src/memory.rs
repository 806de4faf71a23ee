//! [`MemoryStore`]: rate-limit state for one process.
//!
//! Sharded maps from 128-bit keys to algorithm state. A request locks the few shards its keys
//! live in (in index order, so two requests never deadlock), decides every rule, and writes only
//! if no enforced rule denied: all-or-nothing, even under concurrency.
//!
//! # Memory
//!
//! Each algorithm has its own map, so a key costs exactly its algorithm's state: a GCRA key is a
//! 16-byte digest plus an 8-byte instant, 24 bytes in the map plus one control byte, about
//! 28–56 bytes per key once the map's load factor is counted (measured: see the crate README).
//! State that can no longer affect a decision is reclaimed without the user calling anything:
//! every shard sweeps itself after as many inserts as it holds keys (amortised O(1) per insert),
//! and, when the store is built inside a Tokio runtime, a background task holding only a weak
//! reference sweeps every shard each [`sweep_interval`](MemoryStoreBuilder::sweep_interval) and
//! stops when the store is dropped.
//!
//! # Capacity
//!
//! With [`max_keys`](MemoryStoreBuilder::max_keys), a shard that is full when a new key arrives
//! first sweeps, then evicts, among a sample of up to 8 of its keys, the one whose state expires
//! soonest. An evicted key starts afresh: the cap trades exactness for bounded memory under a
//! flood of distinct keys, and forgives the keys closest to being forgiven anyway.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;

use crate::algorithm::{
    Algorithm, FixedWindow, FixedWindowState, Gcra, GcraState, SlidingLog, SlidingLogState,
    SlidingWindow, SlidingWindowState, StateMachine,
};
use crate::clock::{saturating_nanos, Clock, Nanos, SystemClock};
use crate::decision::{Decision, Decisions, Outcome};
use crate::store::{Check, Replay, Store};

/// Rate-limit state in this process's memory. Cloning is cheap and shares the state.
///
/// ```
/// use tollgate_core::{Check, KeySecret, MemoryStore, Quota, Rule, Store};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let rule = Rule::builder("per_ip", Quota::per_minute(2)?).build()?;
/// let key = KeySecret::DEFAULT.key().part(b"203.0.113.7").finish();
/// let checks = [Check { rule: &rule, key }];
/// assert!(store.check(&checks, None).await?.allowed);
/// assert!(store.check(&checks, None).await?.allowed);
/// let third = store.check(&checks, None).await?;
/// assert!(!third.allowed);
/// assert!(third.retry_after().unwrap().as_secs() >= 29);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct MemoryStore<C: Clock = SystemClock> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    shards: Box<[Shard]>,
    clock: C,
    /// Most keys one shard may hold (`usize::MAX` when uncapped).
    shard_capacity: usize,
}

/// Padded so two cores working on neighbouring shards do not share a cache line.
#[repr(align(128))]
struct Shard(Mutex<Tables>);

/// The map key: the rule-scoped digest as two words, so a GCRA slot is 24 bytes (a `u128` key
/// would be 16-byte aligned and make it 32).
type Slot = [u64; 2];
type Table<S> = HashMap<Slot, S, foldhash::fast::RandomState>;

#[derive(Default)]
struct Tables {
    gcra: Table<GcraState>,
    fixed_window: Table<FixedWindowState>,
    sliding_window: Table<SlidingWindowState>,
    sliding_log: Table<SlidingLogState>,
    replays: Table<ReplayRecord>,
    inserts_since_sweep: usize,
}

#[derive(Clone, Copy)]
struct ReplayRecord {
    expires_at: Nanos,
    replays: u32,
}

/// Fewest inserts between two amortised sweeps of a shard.
const MIN_SWEEP_INSERTS: usize = 256;
/// Keys sampled when a full shard must evict one.
const EVICTION_SAMPLE: usize = 8;

impl MemoryStore<SystemClock> {
    /// A store with the system clock, 64 shards, no key cap, and a background sweep every 10 s
    /// when built inside a Tokio runtime.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configures a store.
    pub fn builder() -> MemoryStoreBuilder<SystemClock> {
        MemoryStoreBuilder {
            clock: SystemClock::new(),
            shards: 64,
            max_keys: None,
            sweep_interval: Some(Duration::from_secs(10)),
        }
    }
}

impl Default for MemoryStore<SystemClock> {
    fn default() -> Self {
        Self::new()
    }
}

/// Configures a [`MemoryStore`]; see [`MemoryStore::builder`].
#[must_use]
pub struct MemoryStoreBuilder<C> {
    clock: C,
    shards: usize,
    max_keys: Option<usize>,
    sweep_interval: Option<Duration>,
}

impl<C: Clock> MemoryStoreBuilder<C> {
    /// The clock (default: [`SystemClock`]). Tests use a [`ManualClock`](crate::ManualClock).
    pub fn clock<C2: Clock>(self, clock: C2) -> MemoryStoreBuilder<C2> {
        MemoryStoreBuilder {
            clock,
            shards: self.shards,
            max_keys: self.max_keys,
            sweep_interval: self.sweep_interval,
        }
    }

    /// Number of shards, rounded up to a power of two (default 64).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards.clamp(1, 1 << 16).next_power_of_two();
        self
    }

    /// Caps the number of keys held (rule states and idempotency records together); see the
    /// module documentation for the eviction rule. Default: no cap.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = Some(max_keys.max(1));
        self
    }

    /// How often a background task sweeps expired state, when the store is built inside a Tokio
    /// runtime (default 10 s); `None` leaves only the amortised sweeping done on insert.
    pub fn sweep_interval(mut self, interval: Option<Duration>) -> Self {
        self.sweep_interval = interval.filter(|d| !d.is_zero());
        self
    }

    /// Builds the store, and starts the background sweep if a Tokio runtime is running.
    pub fn build(self) -> MemoryStore<C> {
        let shard_capacity = self
            .max_keys
            .map_or(usize::MAX, |max| max.div_ceil(self.shards));
        let shards = (0..self.shards)
            .map(|_| Shard(Mutex::new(Tables::default())))
            .collect();
        let inner = Arc::new(Inner {
            shards,
            clock: self.clock,
            shard_capacity,
        });
        if let (Some(every), Ok(runtime)) =
            (self.sweep_interval, tokio::runtime::Handle::try_current())
        {
            runtime.spawn(sweep_periodically(Arc::downgrade(&inner), every));
        }
        MemoryStore { inner }
    }
}

async fn sweep_periodically<C: Clock>(inner: Weak<Inner<C>>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        for shard in inner.shards.iter() {
            let now = inner.clock.now();
            shard.0.lock().sweep(now);
        }
    }
}

impl<C: Clock> MemoryStore<C> {
    /// Number of keys held: rule states and idempotency records.
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| s.0.lock().len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides a request synchronously; [`Store::check`] without the future.
    pub fn check_now(&self, checks: &[Check<'_>], replay: Option<&Replay>) -> Outcome {
        self.decide(checks, replay, true)
    }

    fn shard_of(&self, slot: &Slot) -> usize {
        // Slots are uniform hash outputs: any bits pick a shard.
        (slot[1] as usize) & (self.inner.shards.len() - 1)
    }

    fn decide(&self, checks: &[Check<'_>], replay: Option<&Replay>, charge: bool) -> Outcome {
        let now = self.inner.clock.now();
        let slots: SmallVec<[Slot; 4]> = checks
            .iter()
            .map(|c| split(c.key.for_rule(c.rule.id())))
            .collect();
        let replay = replay
            .filter(|_| charge)
            .map(|r| (split(r.key.as_u128()), r));

        // Lock every shard involved, in index order, so concurrent requests never deadlock.
        let mut order: SmallVec<[usize; 5]> = slots.iter().map(|s| self.shard_of(s)).collect();
        order.extend(replay.map(|(slot, _)| self.shard_of(&slot)));
        order.sort_unstable();
        order.dedup();
        let mut guards: SmallVec<[MutexGuard<'_, Tables>; 5]> = order
            .iter()
            .map(|&i| self.inner.shards[i].0.lock())
            .collect();
        // Which guard holds a slot's shard (always found: `order` lists every one).
        let guard_of = |slot: &Slot| order.binary_search(&self.shard_of(slot)).unwrap_or(0);

        // A replay of a request already charged passes free, up to the cap.
        let replayed =
            replay.is_some_and(
                |(slot, r)| match guards[guard_of(&slot)].replays.get_mut(&slot) {
                    Some(record) if record.expires_at > now && record.replays < r.max_replays => {
                        record.replays += 1;
                        true
                    }
                    _ => false,
                },
            );
        let charge = charge && !replayed;

        let mut decisions = Decisions::new();
        let mut updates: SmallVec<[Option<NewState>; 4]> = SmallVec::new();
        for (check, slot) in checks.iter().zip(&slots) {
            let tables = &guards[guard_of(slot)];
            let (decision, update) = if charge {
                tables.decide(check, slot, now, check.rule.cost())
            } else if replayed {
                // Already paid for: report the figures, admit.
                (tables.decide(check, slot, now, 0).0, None)
            } else {
                (tables.peek(check, slot, now), None)
            };
            decisions.push(decision);
            updates.push(update);
        }
        let outcome = Outcome::new(checks, decisions, replayed);
        if outcome.allowed && charge {
            let capacity = self.inner.shard_capacity;
            for (slot, update) in slots.iter().zip(updates) {
                if let Some(update) = update {
                    guards[guard_of(slot)].store(*slot, update, now, capacity);
                }
            }
            if let Some((slot, r)) = replay {
                let tables = &mut guards[guard_of(&slot)];
                // A record at its cap stays until it expires: later repeats are charged.
                if !tables
                    .replays
                    .get(&slot)
                    .is_some_and(|rec| rec.expires_at > now)
                {
                    let record = ReplayRecord {
                        expires_at: now.saturating_add(saturating_nanos(r.ttl)),
                        replays: 0,
                    };
                    tables.insert_new(slot, now, capacity, |t| &mut t.replays, record);
                }
            }
        }
        outcome
    }
}

fn split(digest: u128) -> Slot {
    [(digest >> 64) as u64, digest as u64]
}

/// A state to write once the whole request is known to pass.
enum NewState {
    Gcra(GcraState),
    FixedWindow(FixedWindowState),
    SlidingWindow(SlidingWindowState),
    SlidingLog(SlidingLogState),
}

impl Tables {
    fn len(&self) -> usize {
        self.gcra.len()
            + self.fixed_window.len()
            + self.sliding_window.len()
            + self.sliding_log.len()
            + self.replays.len()
    }

    fn decide(
        &self,
        check: &Check<'_>,
        slot: &Slot,
        now: Nanos,
        cost: u64,
    ) -> (Decision, Option<NewState>) {
        let quota = check.rule.quota();
        match check.rule.algorithm() {
            Algorithm::Gcra => {
                let (d, s) = Gcra::decide(self.gcra.get(slot), now, quota, cost);
                (d, s.map(NewState::Gcra))
            }
            Algorithm::FixedWindow => {
                let (d, s) = FixedWindow::decide(self.fixed_window.get(slot), now, quota, cost);
                (d, s.map(NewState::FixedWindow))
            }
            Algorithm::SlidingWindow => {
                let (d, s) = SlidingWindow::decide(self.sliding_window.get(slot), now, quota, cost);
                (d, s.map(NewState::SlidingWindow))
            }
            Algorithm::SlidingLog => {
                let (d, s) = SlidingLog::decide(self.sliding_log.get(slot), now, quota, cost);
                (d, s.map(NewState::SlidingLog))
            }
        }
    }

    /// Whether a request would pass now, with the figures as they stand (nothing charged).
    fn peek(&self, check: &Check<'_>, slot: &Slot, now: Nanos) -> Decision {
        let (would, _) = self.decide(check, slot, now, check.rule.cost());
        if would.allowed {
            self.decide(check, slot, now, 0).0
        } else {
            // A denial's figures already describe the unchanged state.
            would
        }
    }

    fn store(&mut self, slot: Slot, update: NewState, now: Nanos, capacity: usize) {
        match update {
            NewState::Gcra(s) => self.insert_new(slot, now, capacity, |t| &mut t.gcra, s),
            NewState::FixedWindow(s) => {
                self.insert_new(slot, now, capacity, |t| &mut t.fixed_window, s)
            }
            NewState::SlidingWindow(s) => {
                self.insert_new(slot, now, capacity, |t| &mut t.sliding_window, s)
            }
            NewState::SlidingLog(s) => {
                self.insert_new(slot, now, capacity, |t| &mut t.sliding_log, s)
            }
        }
    }

    /// Writes a state; a new key may first trigger a sweep, and an eviction when full.
    fn insert_new<S>(
        &mut self,
        slot: Slot,
        now: Nanos,
        capacity: usize,
        table: impl Fn(&mut Tables) -> &mut Table<S>,
        state: S,
    ) {
        if let Some(existing) = table(self).get_mut(&slot) {
            *existing = state;
            return;
        }
        self.inserts_since_sweep += 1;
        let len = self.len();
        if self.inserts_since_sweep >= (len / 2).max(MIN_SWEEP_INSERTS) {
            self.sweep(now);
        }
        if self.len() >= capacity {
            self.sweep(now);
            if self.len() >= capacity {
                self.evict_one();
            }
        }
        table(self).insert(slot, state);
    }

    /// Drops every state that can no longer affect a decision, and gives back the memory of
    /// tables left mostly empty.
    fn sweep(&mut self, now: Nanos) {
        fn sweep_table<S>(table: &mut Table<S>, live: impl Fn(&S) -> bool) {
            table.retain(|_, s| live(s));
            // Hysteresis: shrink only well below capacity, so a steady load does not rehash.
            if table.len() < table.capacity() / 4 {
                table.shrink_to(table.len() * 2);
            }
        }
        sweep_table(&mut self.gcra, |s| Gcra::expires_at(s) > now);
        sweep_table(&mut self.fixed_window, |s| FixedWindow::expires_at(s) > now);
        sweep_table(&mut self.sliding_window, |s| {
            SlidingWindow::expires_at(s) > now
        });
        sweep_table(&mut self.sliding_log, |s| SlidingLog::expires_at(s) > now);
        sweep_table(&mut self.replays, |r| r.expires_at > now);
        self.inserts_since_sweep = 0;
    }

    /// Evicts, among a sample of keys, the one whose state expires soonest.
    fn evict_one(&mut self) {
        fn sample<S>(t: &Table<S>, expiry: impl Fn(&S) -> Nanos) -> Option<(Nanos, Slot)> {
            t.iter()
                .take(EVICTION_SAMPLE)
                .map(|(k, s)| (expiry(s), *k))
                .min()
        }
        let candidates = [
            sample(&self.gcra, Gcra::expires_at).map(|c| (c, 0)),
            sample(&self.fixed_window, FixedWindow::expires_at).map(|c| (c, 1)),
            sample(&self.sliding_window, SlidingWindow::expires_at).map(|c| (c, 2)),
            sample(&self.sliding_log, SlidingLog::expires_at).map(|c| (c, 3)),
            sample(&self.replays, |r| r.expires_at).map(|c| (c, 4)),
        ];
        let Some(((_, slot), table)) = candidates.into_iter().flatten().min() else {
            return;
        };
        match table {
            0 => drop(self.gcra.remove(&slot)),
            1 => drop(self.fixed_window.remove(&slot)),
            2 => drop(self.sliding_window.remove(&slot)),
            3 => drop(self.sliding_log.remove(&slot)),
            _ => drop(self.replays.remove(&slot)),
        }
    }
}

impl<C: Clock> Store for MemoryStore<C> {
    type Error = std::convert::Infallible;

    fn check(
        &self,
        checks: &[Check<'_>],
        replay: Option<&Replay>,
    ) -> impl std::future::Future<Output = Result<Outcome, Self::Error>> + Send {
        std::future::ready(Ok(self.decide(checks, replay, true)))
    }

    fn peek(
        &self,
        checks: &[Check<'_>],
    ) -> impl std::future::Future<Output = Result<Outcome, Self::Error>> + Send {
        std::future::ready(Ok(self.decide(checks, None, false)))
    }
}
