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
use crate::decision::{Decision, Outcome};
use crate::key::Key;
use crate::quota::Quota;
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
    /// The last time this shard read, passed back to [`Clock::now_after`]: a clock whose
    /// readings disagree between cores (the system clock's time-stamp counter) never lets this
    /// shard's time go backwards.
    last_now: Nanos,
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
            let mut tables = shard.0.lock();
            let now = tables.advance(&inner.clock);
            tables.sweep(now);
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
        self.decide(checks, replay, Mode::Charge)
    }

    fn shard_of(&self, slot: &Slot) -> usize {
        // Slots are uniform hash outputs: any bits pick a shard.
        (slot[1] as usize) & (self.inner.shards.len() - 1)
    }

    /// Locks every shard the slots live in, in index order, so that concurrent requests never
    /// deadlock. One shard (every single-rule request) takes one lock and no list.
    fn lock(&self, slots: impl Iterator<Item = Slot>) -> Locked<'_> {
        let mut shards: SmallVec<[usize; 4]> = SmallVec::new();
        for slot in slots {
            let shard = self.shard_of(&slot);
            if !shards.contains(&shard) {
                shards.push(shard);
            }
        }
        match shards.as_slice() {
            [] => Locked::None,
            [one] => Locked::One(*one, self.inner.shards[*one].0.lock()),
            _ => {
                shards.sort_unstable();
                let mut guards = SmallVec::new();
                for &i in &shards {
                    guards.push((i, self.inner.shards[i].0.lock()));
                }
                Locked::Many(guards)
            }
        }
    }

    fn decide(&self, checks: &[Check<'_>], replay: Option<&Replay>, mode: Mode) -> Outcome {
        if let ([check], None, Mode::Charge) = (checks, replay, mode) {
            return self.decide_one(check);
        }
        let slot_of = |check: &Check<'_>| rule_slot(check.key, check.rule.id());
        // A replay only matters to the rules that honour it.
        let replay = replay
            .filter(|_| mode == Mode::Charge && checks.iter().any(|c| c.rule.honours_replays()))
            .map(|r| (split(r.key.as_u128()), r));
        let mut locked = self.lock(checks.iter().map(slot_of).chain(replay.map(|(s, _)| s)));
        // Read under the locks: a shard never sees its time go backwards between two requests.
        let now = locked.advance(&self.inner.clock);
        let shard_of = |slot: &Slot| self.shard_of(slot);

        // A repeat of a request already charged passes the rules that honour replays free, up
        // to the cap; the free replay is taken only if the request passes.
        let replayed = replay.is_some_and(|(slot, r)| {
            locked
                .tables(shard_of(&slot))
                .and_then(|tables| tables.replays.get(&slot))
                .is_some_and(|record| record.expires_at > now && record.replays < r.max_replays)
        });
        let free = |check: &Check<'_>| replayed && check.rule.honours_replays();

        let mut outcome = Outcome::empty(replayed);
        for check in checks {
            let slot = slot_of(check);
            let Some(tables) = locked.tables(shard_of(&slot)) else {
                continue;
            };
            outcome.decisions.push(match mode {
                // Already paid for: report the figures, admit.
                Mode::Charge if free(check) => tables.check(check, &slot, now, 0),
                Mode::Charge => tables.check(check, &slot, now, check.rule.cost()),
                Mode::Peek => tables.peek(check, &slot, now),
            });
        }
        outcome.settle(checks);
        if !outcome.allowed || mode == Mode::Peek {
            return outcome;
        }

        let capacity = self.inner.shard_capacity;
        for (check, decision) in checks.iter().zip(&outcome.decisions) {
            let slot = slot_of(check);
            // A shadow rule that would deny is not charged, nor is a free replay.
            if !decision.allowed || free(check) {
                continue;
            }
            if let Some(tables) = locked.tables(shard_of(&slot)) {
                tables.commit(check, slot, now, check.rule.cost(), capacity);
            }
        }
        if let Some((slot, r)) = replay {
            let Some(tables) = locked.tables(shard_of(&slot)) else {
                return outcome;
            };
            match tables.replays.get_mut(&slot) {
                Some(record) if replayed => record.replays += 1,
                // A record at its cap stays until it expires: later repeats are charged.
                Some(record) if record.expires_at > now => {}
                _ => {
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

    /// A request of one check and no replay, the common case: [`decide`](Self::decide) in one
    /// map lookup. A lone check is charged exactly when it admits, so it can be decided and
    /// charged in place.
    fn decide_one(&self, check: &Check<'_>) -> Outcome {
        let slot = rule_slot(check.key, check.rule.id());
        let decision = {
            let mut tables = self.inner.shards[self.shard_of(&slot)].0.lock();
            let now = tables.advance(&self.inner.clock);
            tables.charge(check, slot, now, self.inner.shard_capacity)
        };
        // What `Outcome::new` gives for one check, built where it is returned: moving a
        // finished outcome (256 bytes) cost more than deciding it.
        let shadow = check.rule.is_shadow();
        let outcome = Outcome {
            allowed: shadow || decision.allowed,
            binding: (!shadow).then_some(0),
            replayed: false,
            decisions: smallvec::smallvec![decision],
        };
        debug_assert_eq!(
            outcome,
            Outcome::new(
                std::slice::from_ref(check),
                outcome.decisions.clone(),
                false
            )
        );
        outcome
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Charge,
    Peek,
}

/// The shards one request holds.
enum Locked<'a> {
    None,
    One(usize, MutexGuard<'a, Tables>),
    Many(SmallVec<[(usize, MutexGuard<'a, Tables>); 4]>),
}

impl Locked<'_> {
    /// The request's time, after every held shard's last time; every held shard moves to it.
    fn advance(&mut self, clock: &impl Clock) -> Nanos {
        match self {
            Locked::None => clock.now(),
            Locked::One(_, guard) => guard.advance(clock),
            Locked::Many(guards) => {
                let seen = guards.iter().map(|(_, g)| g.last_now).max().unwrap_or(0);
                let now = clock.now_after(seen);
                for (_, guard) in guards.iter_mut() {
                    guard.last_now = now;
                }
                now
            }
        }
    }

    /// The tables of a shard this request holds; every slot's shard is locked before use, so
    /// `None` never happens.
    fn tables(&mut self, shard: usize) -> Option<&mut Tables> {
        match self {
            Locked::One(i, guard) if *i == shard => Some(guard),
            Locked::Many(guards) => guards
                .iter_mut()
                .find(|(i, _)| *i == shard)
                .map(|(_, g)| &mut **g),
            _ => None,
        }
    }
}

/// The map slot of a key under one rule. Keys are keyed-hash digests, so mixing the rule in with
/// a XOR keeps slots apart without hashing again: making two (rule, key) pairs meet would take a
/// preimage of the digest.
fn rule_slot(key: Key, rule_id: u64) -> Slot {
    let [high, low] = split(key.as_u128());
    [high ^ rule_id, low ^ rule_id.rotate_left(32)]
}

fn split(digest: u128) -> Slot {
    [(digest >> 64) as u64, digest as u64]
}

/// Which table holds an algorithm's states.
trait Stored: StateMachine {
    fn table(tables: &Tables) -> &Table<Self::State>;
    fn table_mut(tables: &mut Tables) -> &mut Table<Self::State>;
}

macro_rules! stored {
    ($machine:ty, $field:ident) => {
        impl Stored for $machine {
            fn table(tables: &Tables) -> &Table<Self::State> {
                &tables.$field
            }
            fn table_mut(tables: &mut Tables) -> &mut Table<Self::State> {
                &mut tables.$field
            }
        }
    };
}
stored!(Gcra, gcra);
stored!(FixedWindow, fixed_window);
stored!(SlidingWindow, sliding_window);
stored!(SlidingLog, sliding_log);

/// Calls the generic function `$f::<M>` with the state machine `M` of an [`Algorithm`].
macro_rules! with_machine {
    ($algorithm:expr, $f:ident($($arg:expr),*)) => {
        match $algorithm {
            Algorithm::Gcra => $f::<Gcra>($($arg),*),
            Algorithm::FixedWindow => $f::<FixedWindow>($($arg),*),
            Algorithm::SlidingWindow => $f::<SlidingWindow>($($arg),*),
            Algorithm::SlidingLog => $f::<SlidingLog>($($arg),*),
        }
    };
}

impl Tables {
    /// This shard's time now; see `last_now`.
    #[inline]
    fn advance(&mut self, clock: &impl Clock) -> Nanos {
        self.last_now = clock.now_after(self.last_now);
        self.last_now
    }

    fn len(&self) -> usize {
        self.gcra.len()
            + self.fixed_window.len()
            + self.sliding_window.len()
            + self.sliding_log.len()
            + self.replays.len()
    }

    fn check(&self, check: &Check<'_>, slot: &Slot, now: Nanos, cost: u64) -> Decision {
        fn run<M: Stored>(t: &Tables, slot: &Slot, now: Nanos, q: &Quota, cost: u64) -> Decision {
            M::check(M::table(t).get(slot), now, q, cost)
        }
        let quota = check.rule.quota();
        with_machine!(check.rule.algorithm(), run(self, slot, now, quota, cost))
    }

    /// Whether a request would pass now, with the figures as they stand (nothing charged).
    fn peek(&self, check: &Check<'_>, slot: &Slot, now: Nanos) -> Decision {
        let would = self.check(check, slot, now, check.rule.cost());
        if would.allowed {
            self.check(check, slot, now, 0)
        } else {
            // A denial's figures already describe the unchanged state.
            would
        }
    }

    /// Decides a lone check and charges it if admitted, with one map lookup.
    fn charge(&mut self, check: &Check<'_>, slot: Slot, now: Nanos, capacity: usize) -> Decision {
        fn run<M: Stored>(
            t: &mut Tables,
            slot: Slot,
            now: Nanos,
            q: &Quota,
            cost: u64,
            cap: usize,
        ) -> Decision {
            let mut state = M::table_mut(t).get_mut(&slot);
            let decision = M::check(state.as_deref(), now, q, cost);
            if decision.allowed {
                if let Some(fresh) = M::commit(state.take(), now, q, cost) {
                    t.insert_new(slot, now, cap, M::table_mut, fresh);
                }
            }
            decision
        }
        let (q, cost) = (check.rule.quota(), check.rule.cost());
        with_machine!(
            check.rule.algorithm(),
            run(self, slot, now, q, cost, capacity)
        )
    }

    /// Charges an admitted request.
    fn commit(&mut self, check: &Check<'_>, slot: Slot, now: Nanos, cost: u64, capacity: usize) {
        fn run<M: Stored>(
            t: &mut Tables,
            slot: Slot,
            now: Nanos,
            q: &Quota,
            cost: u64,
            cap: usize,
        ) {
            let fresh = M::commit(M::table_mut(t).get_mut(&slot), now, q, cost);
            if let Some(state) = fresh {
                t.insert_new(slot, now, cap, M::table_mut, state);
            }
        }
        let q = check.rule.quota();
        with_machine!(
            check.rule.algorithm(),
            run(self, slot, now, q, cost, capacity)
        )
    }

    /// Writes the state of a key not yet held; it may first trigger a sweep, and an eviction
    /// when the shard is full.
    fn insert_new<S>(
        &mut self,
        slot: Slot,
        now: Nanos,
        capacity: usize,
        table: impl Fn(&mut Tables) -> &mut Table<S>,
        state: S,
    ) {
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
        std::future::ready(Ok(self.decide(checks, replay, Mode::Charge)))
    }

    fn check_ready(
        &self,
        checks: &[Check<'_>],
        replay: Option<&Replay>,
    ) -> Option<Result<Outcome, Self::Error>> {
        Some(Ok(self.decide(checks, replay, Mode::Charge)))
    }

    fn peek(
        &self,
        checks: &[Check<'_>],
    ) -> impl std::future::Future<Output = Result<Outcome, Self::Error>> + Send {
        std::future::ready(Ok(self.decide(checks, None, Mode::Peek)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeySecret, ManualClock, Rule};

    /// Reads like the system clock's time-stamp counter on a core that lags: behind what a
    /// shard has seen, so [`Clock::now_after`] returns the shard's time.
    struct Lagging(ManualClock);

    impl Clock for Lagging {
        fn now(&self) -> Nanos {
            self.0.now()
        }
        fn now_after(&self, seen: Nanos) -> Nanos {
            self.0.now().max(seen)
        }
    }

    /// A reading behind one a shard has already seen reads as time standing still, on the
    /// one-check path and the general one: the wait named is the quota's, not the cores' gap.
    #[test]
    fn a_shard_time_never_goes_backwards() {
        let start = 1_700_000_000_000_000_000;
        let clock = ManualClock::new(start);
        let store = MemoryStore::builder()
            .clock(Lagging(clock.clone()))
            .sweep_interval(None)
            .build();
        let quota = Quota::per_second(1).unwrap();
        let a = Rule::builder("a", quota).build().unwrap();
        let b = Rule::builder("b", quota).build().unwrap();
        let key = KeySecret::DEFAULT.key().part(b"client").finish();
        let one = [Check { rule: &a, key }];
        let two = [Check { rule: &a, key }, Check { rule: &b, key }];
        for (round, checks) in [&one[..], &two[..]].into_iter().enumerate() {
            let at = start + round as u64 * 100_000_000_000;
            clock.set(at);
            assert!(store.check_now(checks, None).allowed);
            clock.set(at - 10_000_000_000);
            let denied = store.check_now(checks, None);
            assert_eq!(denied.retry_after(), Some(Duration::from_secs(1)));
        }
    }
}
