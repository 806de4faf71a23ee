//! [`MemoryStore`]: rate-limit state for one process.
//!
//! Sharded maps from 128-bit keys to algorithm state. A request locks the few shards its keys
//! live in (in index order, so two requests never deadlock), decides every rule, and writes only
//! if no enforced rule denied: all-or-nothing, even under concurrency.
//!
//! Each kind of entry (an algorithm's states, idempotency records) has one table, and says once,
//! in its `Kept` impl, where its table is, when an entry expires and how much it holds. Requests
//! reach a table through `Tables::run`, which picks the state machine statically; sweeps and
//! evictions reach every table through the `Housekept` trait object, off the request path.
//!
//! # Memory
//!
//! Each algorithm has its own map, so a key costs exactly its algorithm's state: a GCRA key is a
//! 16-byte digest plus an 8-byte instant, 24 bytes in the map plus one control byte, about
//! 28–56 bytes per key once the map's load factor is counted (measured: see the crate README).
//! State that can no longer affect a decision is reclaimed without the user calling anything:
//! every shard sweeps itself after inserting half as many keys as it holds (amortised O(1) per
//! insert, whether or not the shard is full), and, when the store is built inside a Tokio
//! runtime, a background task holding only a weak reference sweeps every shard each
//! [`sweep_interval`](MemoryStoreBuilder::sweep_interval) and stops when the store is dropped.
//!
//! # Capacity
//!
//! Capped by default ([`MemoryStore::DEFAULT_MAX_KEYS`]); a full shard evicts from a sample of
//! [`EVICTION_SAMPLE`] keys per map, drawn from random buckets, and does not sweep for it. What
//! that forgives, and what a flood of distinct keys can do with it, is documented on
//! [`MemoryStore`] (its "Capacity" section), where users read it.

use std::hash::BuildHasher;
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
///
/// # Capacity
///
/// Distinct keys can arrive faster than they expire (a flood of random IPs or tokens), so the
/// store holds at most [`DEFAULT_MAX_KEYS`](Self::DEFAULT_MAX_KEYS) (1,048,576) keys by
/// default: about 52 MB of GCRA state when full (50 bytes per key, measured by the `key_flood`
/// test), more for the other algorithms (a sliding log's key grows with its limit). The cap is
/// split evenly between the shards; [`max_keys`](MemoryStoreBuilder::max_keys) changes it, and
/// `max_keys(usize::MAX)` removes it.
///
/// A shard that is full when a new key arrives evicts one key, in O(1) time: it samples up to 8 keys
/// of each algorithm's map from random buckets and evicts the one whose state expires soonest,
/// ties going to the least used (a window's count). It does not sweep for it: sweeping keeps
/// its amortised schedule, so the work per insert stays a small constant however fast keys
/// arrive ([`stats`](Self::stats) counts it).
///
/// An evicted key starts afresh: the cap trades exactness for bounded memory, and forgives the
/// keys closest to being forgiven anyway. What a flood of distinct keys can do with it:
///
/// - **GCRA** (the default): while a key is being denied, its state expires later than that of
///   any key of the same rule charged only once (for any limit of 2 or more), so such a flood is
///   evicted before it. It can be evicted only if every key sampled with it expires later
///   still: keys used as heavily, or keys of a rule with a longer emission interval.
/// - **Fixed window, sliding-window counter**: keys charged in the same window expire together,
///   and the tie goes to the least used, so a key at its limit outlives the flood's one-request
///   keys of its window.
/// - A sliding-window key denied only by its previous window's count, and a **sliding log**
///   whose last admitted request is older than the flood, expire soonest, so they can be
///   evicted once sampled: with `n` keys per shard, after `n / 8` evictions in their shard on
///   average. At the default cap that takes filling the store with a million live keys, then
///   about 130,000 more distinct keys on average (each a fresh bucket the attacker could have
///   used directly) to reset one such key once; a reset forgives at most one window's limit.
///
/// Keys are spread over shards by their keyed digest, so a flood cannot aim at one shard unless
/// the [`KeySecret`](crate::KeySecret) is known: keep your own secret.
#[derive(Clone)]
pub struct MemoryStore<C: Clock = SystemClock> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    shards: Box<[Shard]>,
    clock: C,
}

/// Padded so two cores working on neighbouring shards do not share a cache line.
#[repr(align(128))]
struct Shard(Mutex<Tables>);

/// The map key: the rule-scoped digest as two words, so a GCRA slot is 24 bytes (a `u128` key
/// would be 16-byte aligned and make it 32).
type Slot = [u64; 2];

/// What a shard keeps of one kind (an algorithm's states, or idempotency records) by slot: a hash
/// map that can also sample its entries from a random bucket, which `std`'s `HashMap` cannot (its
/// iteration always starts at the first bucket).
struct Table<K: Kept> {
    map: hashbrown::HashTable<(Slot, K::Entry)>,
    /// Seeded per table: with the public default key secret, slots could be chosen by a client.
    hasher: foldhash::fast::RandomState,
}

#[derive(Default)]
struct Tables {
    /// The last time this shard read, passed back to [`Clock::now_after`]: a clock whose
    /// readings disagree between cores (the system clock's time-stamp counter) never lets this
    /// shard's time go backwards.
    last_now: Nanos,
    gcra: Table<Gcra>,
    fixed_window: Table<FixedWindow>,
    sliding_window: Table<SlidingWindow>,
    sliding_log: Table<SlidingLog>,
    replays: Table<ReplayRecord>,
    /// Most keys this shard may hold (beyond any memory with `max_keys(usize::MAX)`).
    capacity: usize,
    inserts_since_sweep: usize,
    /// Picks the bucket eviction samples from; unknown outside the process.
    random: u64,
    work: MemoryStats,
}

#[derive(Clone, Copy)]
struct ReplayRecord {
    expires_at: Nanos,
    replays: u32,
}

/// Fewest inserts between two amortised sweeps of a shard.
const MIN_SWEEP_INSERTS: usize = 256;
/// Keys sampled from each algorithm's map when a full shard must evict one.
const EVICTION_SAMPLE: usize = 8;
/// Most buckets an eviction probes per map to find its sample: a bound on the work even in a
/// map left sparse. Sweeps keep maps at least a quarter full, so 8 keys take 16 to 32 probes.
const EVICTION_PROBES: usize = 8 * EVICTION_SAMPLE;

/// What a store's housekeeping has done since it was built; see [`MemoryStore::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryStats {
    /// Keys held now: rule states and idempotency records.
    pub keys: usize,
    /// States and records written for a key not held.
    pub inserts: u64,
    /// Keys evicted because their shard was full: non-zero means the cap was reached.
    pub evictions: u64,
    /// Entries visited by sweeps, and by the rare rebuilds that clear a table's tombstones.
    pub swept: u64,
    /// Buckets probed by evictions to find their samples.
    pub probed: u64,
}

impl MemoryStore<SystemClock> {
    /// The default [`max_keys`](MemoryStoreBuilder::max_keys): 2^20 keys, about 52 MB of GCRA
    /// state; see the [store's documentation](MemoryStore#capacity).
    pub const DEFAULT_MAX_KEYS: usize = 1 << 20;

    /// A store with the system clock, 64 shards, a cap of
    /// [`DEFAULT_MAX_KEYS`](Self::DEFAULT_MAX_KEYS), and a background sweep every 10 s when
    /// built inside a Tokio runtime.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configures a store.
    pub fn builder() -> MemoryStoreBuilder<SystemClock> {
        MemoryStoreBuilder {
            clock: SystemClock::new(),
            shards: 64,
            max_keys: Self::DEFAULT_MAX_KEYS,
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
    max_keys: usize,
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

    /// Caps the number of keys held, rule states and idempotency records together (default
    /// [`MemoryStore::DEFAULT_MAX_KEYS`], 1,048,576). A shard at its share of the cap evicts,
    /// among a sample of its keys, the one whose state expires soonest: see the
    /// [store's documentation](MemoryStore#capacity) for what that forgives. `usize::MAX`
    /// removes the cap, leaving memory to grow as long as distinct keys arrive faster than they
    /// expire.
    ///
    /// ```
    /// use tollgate_core::MemoryStore;
    ///
    /// let small = MemoryStore::builder().max_keys(10_000).build();
    /// let uncapped = MemoryStore::builder().max_keys(usize::MAX).build();
    /// # drop((small, uncapped));
    /// ```
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
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
        let shard_capacity = self.max_keys.div_ceil(self.shards);
        let seeds = foldhash::fast::RandomState::default();
        let shards = (0..self.shards)
            .map(|i| {
                Shard(Mutex::new(Tables {
                    random: seeds.hash_one(i),
                    capacity: shard_capacity,
                    ..Tables::default()
                }))
            })
            .collect();
        let inner = Arc::new(Inner {
            shards,
            clock: self.clock,
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

    /// What the store's housekeeping has done: keys held, inserted and evicted, and the work
    /// sweeps and evictions did for it, which stays a small constant per insert (about two
    /// entries swept, and a few dozen buckets probed per eviction) however keys arrive.
    pub fn stats(&self) -> MemoryStats {
        let mut total = MemoryStats::default();
        for shard in self.inner.shards.iter() {
            let tables = shard.0.lock();
            total.keys += tables.len();
            total.inserts += tables.work.inserts;
            total.evictions += tables.work.evictions;
            total.swept += tables.work.swept;
            total.probed += tables.work.probed;
        }
        total
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
                Mode::Charge if free(check) => tables.run::<Decide>(check, slot, now, 0),
                Mode::Charge => tables.run::<Decide>(check, slot, now, check.rule.cost()),
                Mode::Peek => tables.peek(check, slot, now),
            });
        }
        outcome.settle(checks);
        if !outcome.allowed || mode == Mode::Peek {
            return outcome;
        }

        for (check, decision) in checks.iter().zip(&outcome.decisions) {
            let slot = slot_of(check);
            // A shadow rule that would deny is not charged, nor is a free replay.
            if !decision.allowed || free(check) {
                continue;
            }
            if let Some(tables) = locked.tables(shard_of(&slot)) {
                tables.run::<Commit>(check, slot, now, check.rule.cost());
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
                    tables.insert_new::<ReplayRecord>(slot, now, record);
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
            tables.charge(check, slot, now)
        };
        // What `Outcome::new` gives for one check, built where it is returned: moving a
        // finished outcome (256 bytes) cost more than deciding it.
        let shadow = check.rule.is_shadow();
        let outcome = Outcome {
            allowed: shadow || decision.allowed,
            binding: (!shadow).then_some(0),
            replayed: false,
            degraded: false,
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

/// What a shard keeps a table of: an algorithm's states, or idempotency records. Everything the
/// shard's housekeeping needs of an entry is here, so a new algorithm is one impl of it, a field
/// of [`Tables`] (named in [`Tables::each`] and [`Tables::each_mut`]) and an arm of
/// [`Tables::run`].
trait Kept: Sized {
    type Entry;
    fn table(tables: &mut Tables) -> &mut Table<Self>;
    /// When the entry can no longer affect a decision: it may be swept from then on.
    fn expiry(entry: &Self::Entry) -> Nanos;
    /// How much the entry holds. Window states charged in one window expire together, so their
    /// counts break the tie when evicting.
    fn usage(_entry: &Self::Entry) -> u64 {
        0
    }
}

/// An algorithm whose states a shard keeps.
trait Stored: StateMachine + Kept<Entry = <Self as StateMachine>::State> {}
impl<M: StateMachine + Kept<Entry = M::State>> Stored for M {}

impl Kept for Gcra {
    type Entry = GcraState;
    fn table(tables: &mut Tables) -> &mut Table<Self> {
        &mut tables.gcra
    }
    fn expiry(state: &GcraState) -> Nanos {
        Gcra::expires_at(state)
    }
}

impl Kept for FixedWindow {
    type Entry = FixedWindowState;
    fn table(tables: &mut Tables) -> &mut Table<Self> {
        &mut tables.fixed_window
    }
    fn expiry(state: &FixedWindowState) -> Nanos {
        FixedWindow::expires_at(state)
    }
    fn usage(state: &FixedWindowState) -> u64 {
        state.count
    }
}

impl Kept for SlidingWindow {
    type Entry = SlidingWindowState;
    fn table(tables: &mut Tables) -> &mut Table<Self> {
        &mut tables.sliding_window
    }
    fn expiry(state: &SlidingWindowState) -> Nanos {
        SlidingWindow::expires_at(state)
    }
    fn usage(state: &SlidingWindowState) -> u64 {
        state.previous.saturating_add(state.current)
    }
}

impl Kept for SlidingLog {
    type Entry = SlidingLogState;
    fn table(tables: &mut Tables) -> &mut Table<Self> {
        &mut tables.sliding_log
    }
    fn expiry(state: &SlidingLogState) -> Nanos {
        SlidingLog::expires_at(state)
    }
    fn usage(state: &SlidingLogState) -> u64 {
        state.total
    }
}

impl Kept for ReplayRecord {
    type Entry = Self;
    fn table(tables: &mut Tables) -> &mut Table<Self> {
        &mut tables.replays
    }
    fn expiry(record: &Self) -> Nanos {
        record.expires_at
    }
}

/// The next of a splitmix64 sequence: cheap, and enough that a client cannot tell which
/// buckets the next eviction samples.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let z = (*state ^ (*state >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// How soon an entry stops mattering, then how much it holds: the smallest is evicted first.
type Rank = (Nanos, u64);

/// An eviction candidate: its rank, with its slot to break ties, then its bucket.
type Candidate = ((Rank, Slot), usize);

/// A table as the shard's housekeeping sees it, whatever it holds. Sweeps and evictions reach
/// tables through this (dynamic dispatch, off the request path); requests reach them through
/// [`Tables::run`] (static).
trait Housekept {
    fn len(&self) -> usize;
    /// Drops the entries expired at `now`; returns the entries visited.
    fn sweep(&mut self, now: Nanos) -> usize;
    /// The lowest-ranked of a random sample of entries, with its bucket: the one sampling
    /// eviction draws on.
    fn lowest(&self, random: &mut u64, until_found: bool, probed: &mut u64) -> Option<Candidate>;
    fn remove_bucket(&mut self, bucket: usize);
}

impl<K: Kept> Housekept for Table<K> {
    fn len(&self) -> usize {
        self.map.len()
    }

    fn sweep(&mut self, now: Nanos) -> usize {
        self.retain(|entry| K::expiry(entry) > now)
    }

    /// Among up to [`EVICTION_SAMPLE`] entries found in up to [`EVICTION_PROBES`] random
    /// buckets (more, until one is found, if `until_found`), the lowest-ranked with its bucket.
    /// Adds the buckets probed to `probed`.
    ///
    /// Buckets are drawn independently, and ties go to the lowest slot, so every entry is as
    /// likely to go whatever its neighbours. Sampling the entries that follow one random bucket
    /// would favour entries after a gap, and so grow the gaps until samples find nothing.
    fn lowest(&self, random: &mut u64, until_found: bool, probed: &mut u64) -> Option<Candidate> {
        if self.map.is_empty() {
            return None;
        }
        let buckets = self.map.num_buckets() as u64;
        let (mut lowest, mut found, mut probes) = (None::<Candidate>, 0, 0);
        while found < EVICTION_SAMPLE && (probes < EVICTION_PROBES || (until_found && found == 0)) {
            probes += 1;
            let bucket = (splitmix(random) % buckets) as usize;
            if let Some((slot, entry)) = self.map.get_bucket(bucket) {
                let rank = (K::expiry(entry), K::usage(entry));
                let candidate = ((rank, *slot), bucket);
                lowest = Some(lowest.map_or(candidate, |l| l.min(candidate)));
                found += 1;
            }
        }
        *probed += probes as u64;
        lowest
    }

    fn remove_bucket(&mut self, bucket: usize) {
        if let Ok(entry) = self.map.get_bucket_entry(bucket) {
            entry.remove();
        }
    }
}

impl<K: Kept> Default for Table<K> {
    fn default() -> Self {
        Self {
            map: hashbrown::HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<K: Kept> Table<K> {
    fn get(&self, slot: &Slot) -> Option<&K::Entry> {
        let hash = self.hasher.hash_one(slot);
        self.map.find(hash, |(k, _)| k == slot).map(|(_, s)| s)
    }

    fn get_mut(&mut self, slot: &Slot) -> Option<&mut K::Entry> {
        let hash = self.hasher.hash_one(slot);
        self.map.find_mut(hash, |(k, _)| k == slot).map(|(_, s)| s)
    }

    /// Writes a slot's entry, replacing any. Returns the entries visited to make room.
    fn insert(&mut self, slot: Slot, entry: K::Entry) -> usize {
        let visited = self.clear_tombstones();
        let hasher = &self.hasher;
        let hash = hasher.hash_one(slot);
        match self
            .map
            .entry(hash, |(k, _)| *k == slot, |(k, _)| hasher.hash_one(k))
        {
            hashbrown::hash_table::Entry::Occupied(mut held) => held.get_mut().1 = entry,
            hashbrown::hash_table::Entry::Vacant(free) => drop(free.insert((slot, entry))),
        }
        visited
    }

    /// Removals leave tombstones that use up the table's room, and once it is used up
    /// `hashbrown` doubles any table more than 7/16 full: at a steady size (a full shard
    /// evicting one key per insert) that would double its memory. Rebuilding at the same size
    /// instead leaves at least a quarter of the room free, so it happens at most once per
    /// `len / 3` inserts. Returns the entries visited.
    fn clear_tombstones(&mut self) -> usize {
        let (len, buckets) = (self.map.len(), self.map.num_buckets());
        let room = if buckets < 8 {
            buckets - 1
        } else {
            buckets / 8 * 7
        };
        if len < self.map.capacity() || len >= room / 4 * 3 {
            return 0;
        }
        let hasher = &self.hasher;
        // `room` keys fit in exactly this many buckets: the table keeps its size.
        let old = std::mem::replace(&mut self.map, hashbrown::HashTable::with_capacity(room));
        for entry in old {
            self.map
                .insert_unique(hasher.hash_one(entry.0), entry, |e| hasher.hash_one(e.0));
        }
        len
    }

    /// Keeps the entries `live` accepts, and gives back the memory of a table left mostly
    /// empty. Returns the number of entries visited.
    fn retain(&mut self, live: impl Fn(&K::Entry) -> bool) -> usize {
        let visited = self.map.len();
        self.map.retain(|(_, s)| live(s));
        // Hysteresis: shrink only well below capacity, so a steady load does not rehash.
        if self.map.len() < self.map.capacity() / 4 {
            let hasher = &self.hasher;
            let len = self.map.len();
            self.map.shrink_to(len * 2, |(k, _)| hasher.hash_one(k));
        }
        visited
    }
}

/// One key's part in a request: its slot, the request's time, its rule's quota and what it is
/// charged.
#[derive(Clone, Copy)]
struct At<'a> {
    slot: Slot,
    now: Nanos,
    quota: &'a Quota,
    cost: u64,
}

/// Work on one key's state, written once for every algorithm (a closure cannot be generic over
/// the state machine); [`Tables::run`] picks the machine.
trait Job {
    type Output;
    fn run<M: Stored>(tables: &mut Tables, at: At<'_>) -> Self::Output;
}

/// Decides a request, changing nothing.
enum Decide {}
/// Decides a lone check and charges it if admitted, with one map lookup.
enum Charge {}
/// Charges a request already admitted.
enum Commit {}

impl Job for Decide {
    type Output = Decision;
    fn run<M: Stored>(tables: &mut Tables, at: At<'_>) -> Decision {
        M::check(M::table(tables).get(&at.slot), at.now, at.quota, at.cost)
    }
}

impl Job for Charge {
    type Output = Decision;
    fn run<M: Stored>(tables: &mut Tables, at: At<'_>) -> Decision {
        let mut state = M::table(tables).get_mut(&at.slot);
        let decision = M::check(state.as_deref(), at.now, at.quota, at.cost);
        if decision.allowed {
            if let Some(fresh) = M::commit(state.take(), at.now, at.quota, at.cost) {
                tables.insert_new::<M>(at.slot, at.now, fresh);
            }
        }
        decision
    }
}

impl Job for Commit {
    type Output = ();
    fn run<M: Stored>(tables: &mut Tables, at: At<'_>) {
        let state = M::table(tables).get_mut(&at.slot);
        if let Some(fresh) = M::commit(state, at.now, at.quota, at.cost) {
            tables.insert_new::<M>(at.slot, at.now, fresh);
        }
    }
}

impl Tables {
    /// This shard's time now; see `last_now`.
    #[inline]
    fn advance(&mut self, clock: &impl Clock) -> Nanos {
        self.last_now = clock.now_after(self.last_now);
        self.last_now
    }

    /// Every table, in one fixed order (eviction draws its samples in it).
    fn each(&self) -> [&dyn Housekept; 5] {
        [
            &self.gcra,
            &self.fixed_window,
            &self.sliding_window,
            &self.sliding_log,
            &self.replays,
        ]
    }

    /// [`each`](Self::each), to change them.
    fn each_mut(&mut self) -> [&mut dyn Housekept; 5] {
        [
            &mut self.gcra,
            &mut self.fixed_window,
            &mut self.sliding_window,
            &mut self.sliding_log,
            &mut self.replays,
        ]
    }

    fn len(&self) -> usize {
        self.each().iter().map(|table| table.len()).sum()
    }

    /// Runs `J` on a check's key under its rule's algorithm: the one place an [`Algorithm`]
    /// meets its state machine and table.
    fn run<J: Job>(&mut self, check: &Check<'_>, slot: Slot, now: Nanos, cost: u64) -> J::Output {
        let at = At {
            slot,
            now,
            quota: check.rule.quota(),
            cost,
        };
        match check.rule.algorithm() {
            Algorithm::Gcra => J::run::<Gcra>(self, at),
            Algorithm::FixedWindow => J::run::<FixedWindow>(self, at),
            Algorithm::SlidingWindow => J::run::<SlidingWindow>(self, at),
            Algorithm::SlidingLog => J::run::<SlidingLog>(self, at),
        }
    }

    /// Decides a lone check and charges it if admitted, with one map lookup.
    ///
    /// Not generic, so that it is compiled once out of `decide`'s body: inlined there, it left
    /// the algorithms' `decide` out of line, called twice (measured: about 10% more
    /// instructions per request).
    fn charge(&mut self, check: &Check<'_>, slot: Slot, now: Nanos) -> Decision {
        self.run::<Charge>(check, slot, now, check.rule.cost())
    }

    /// Whether a request would pass now, with the figures as they stand (nothing charged).
    fn peek(&mut self, check: &Check<'_>, slot: Slot, now: Nanos) -> Decision {
        let would = self.run::<Decide>(check, slot, now, check.rule.cost());
        if would.allowed {
            self.run::<Decide>(check, slot, now, 0)
        } else {
            // A denial's figures already describe the unchanged state.
            would
        }
    }

    /// Writes the entry of a key not yet held; it may first trigger a sweep, and an eviction
    /// when the shard is full.
    fn insert_new<K: Kept>(&mut self, slot: Slot, now: Nanos, entry: K::Entry) {
        self.inserts_since_sweep += 1;
        self.work.inserts += 1;
        // A sweep visits every key once per `len / 2` inserts, full or not: at most two visits
        // per insert. A full shard between sweeps evicts from a sample, in O(1).
        if self.inserts_since_sweep >= (self.len() / 2).max(MIN_SWEEP_INSERTS) {
            self.sweep(now);
        }
        if self.len() >= self.capacity {
            self.evict_one();
        }
        let visited = K::table(self).insert(slot, entry);
        self.work.swept += visited as u64;
    }

    /// Drops every entry that can no longer affect a decision, and gives back the memory of
    /// tables left mostly empty.
    fn sweep(&mut self, now: Nanos) {
        let swept: usize = self.each_mut().iter_mut().map(|t| t.sweep(now)).sum();
        self.work.swept += swept as u64;
        self.inserts_since_sweep = 0;
    }

    /// Evicts, among a sample of keys from each table, the one whose state expires soonest
    /// (ties: the least used).
    fn evict_one(&mut self) {
        let (mut random, mut probed) = (self.random, 0);
        let mut tables = self.each_mut();
        // A sparse table may yield nothing in its probes; the largest one is searched on until
        // it does, so a full shard always evicts. It holds at least a fifth of the shard's keys.
        let largest = (0..tables.len()).max_by_key(|&i| tables[i].len());
        let lowest = (tables.iter().enumerate())
            .filter_map(|(i, t)| Some((t.lowest(&mut random, largest == Some(i), &mut probed)?, i)))
            .min();
        let evicted = lowest.map(|((_, bucket), i)| tables[i].remove_bucket(bucket));
        self.random = random;
        self.work.probed += probed;
        self.work.evictions += u64::from(evicted.is_some());
    }
}

impl<C: Clock> Store for MemoryStore<C> {
    type Error = std::convert::Infallible;
    const NAME: &'static str = "memory";

    fn check(
        &self,
        checks: &[Check<'_>],
        replay: Option<&Replay>,
    ) -> impl std::future::Future<Output = Result<Outcome, Self::Error>> + Send {
        std::future::ready(Ok(self.decide(checks, replay, Mode::Charge)))
    }

    fn check_immediately(
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

    /// A full shard evicting one key per insert keeps its table's size: the tombstones its
    /// removals leave are cleared at that size, not by doubling the table.
    #[test]
    fn a_full_shard_under_churn_keeps_its_table_size() {
        let store = MemoryStore::builder()
            .clock(ManualClock::new(1_700_000_000_000_000_000))
            .shards(1)
            .max_keys(4096)
            .sweep_interval(None)
            .build();
        let rule = Rule::builder("r", Quota::per_minute(10).unwrap())
            .build()
            .unwrap();
        let buckets = || store.inner.shards[0].0.lock().gcra.map.num_buckets();
        let mut full = 0;
        for i in 0u64..100_000 {
            let key = Key::from_u128(
                u128::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835),
            );
            assert!(store.check_now(&[Check { rule: &rule, key }], None).allowed);
            if i == 4096 {
                full = buckets();
            }
        }
        assert_eq!(store.len(), 4096);
        assert_eq!(buckets(), full, "the table grew from {full} buckets");
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

    const T0: Nanos = crate::conformance::BASE;

    fn store_at(clock: &ManualClock, shards: usize, max_keys: usize) -> MemoryStore<ManualClock> {
        MemoryStore::builder()
            .clock(clock.clone())
            .shards(shards)
            .max_keys(max_keys)
            .sweep_interval(None)
            .build()
    }

    fn words(high: u64, low: u64) -> Key {
        Key::from_u128((u128::from(high) << 64) | u128::from(low))
    }

    fn numbered(salt: u64, i: u64) -> Key {
        KeySecret::DEFAULT
            .key()
            .part(&salt.to_le_bytes())
            .part(&i.to_le_bytes())
            .finish()
    }

    /// Every (rule, key) pair has its own state, also for keys whose words are all zeros, all
    /// ones, or a rule's id (rotated as the slot rotates it): the slot mixes the rule into the
    /// key with XOR, and mixing with `&` or `|` would make such keys meet, across rules and
    /// within one.
    #[test]
    fn distinct_rule_and_key_pairs_never_share_state() {
        let clock = ManualClock::new(T0);
        let store = store_at(&clock, 4, usize::MAX);
        let quota = Quota::per_hour(1).unwrap();
        let rules = [
            Rule::builder("a", quota).build().unwrap(),
            Rule::builder("b", quota).build().unwrap(),
        ];
        let mut keys = vec![words(0, 0), words(!0, !0)];
        for rule in &rules {
            let (high, low) = (rule.id(), rule.id().rotate_left(32));
            keys.extend([
                words(high, 0),
                words(!high, 0),
                words(0, low),
                words(0, !low),
            ]);
        }
        for rule in &rules {
            for &key in &keys {
                let checks = [Check { rule, key }];
                let first = store.check_now(&checks, None);
                assert!(first.allowed, "{} {key:?} met another pair", rule.name());
                assert!(!store.check_now(&checks, None).allowed);
            }
        }
        assert_eq!(store.len(), rules.len() * keys.len());
    }

    /// The amortised schedule: a shard sweeps once it has inserted half as many keys as it
    /// holds, and never before 256 inserts; each sweep visits every key it holds.
    #[test]
    fn a_shard_sweeps_after_inserting_half_as_many_keys_as_it_holds() {
        let clock = ManualClock::new(T0);
        let store = store_at(&clock, 1, usize::MAX);
        let rule = Rule::builder("r", Quota::per_hour(10).unwrap())
            .build()
            .unwrap();
        let mut sweeps = Vec::new();
        for i in 1..=1100 {
            let before = store.stats().swept;
            let key = numbered(0, i);
            assert!(store.check_now(&[Check { rule: &rule, key }], None).allowed);
            let swept = store.stats().swept - before;
            if swept > 0 {
                sweeps.push((i, swept));
            }
        }
        // The clock stands still: every sweep visits all the keys held and keeps them.
        assert_eq!(sweeps, [(256, 255), (512, 511), (1022, 1021)]);
        let stats = store.stats();
        assert_eq!(
            (stats.keys, stats.inserts, stats.evictions),
            (1100, 1100, 0)
        );
    }

    /// From its expiry on, a state is forgotten by the next sweep, in every table: a shard
    /// that held a thousand expired keys holds only the keys inserted since.
    #[test]
    fn a_sweep_forgets_every_state_from_its_expiry_on() {
        let second = 1_000_000_000;
        // (algorithm, replays, when one request's state expires)
        let cases = [
            (Algorithm::Gcra, false, T0 + second),
            (Algorithm::FixedWindow, false, T0 + second),
            // The count weighs in the next window too.
            (Algorithm::SlidingWindow, false, T0 + 2 * second),
            (Algorithm::SlidingLog, false, T0 + second),
            // An idempotency record lives for its TTL (the GCRA state beside it as long).
            (Algorithm::Gcra, true, T0 + second),
        ];
        for (algorithm, replays, expiry) in cases {
            let clock = ManualClock::new(T0);
            let store = store_at(&clock, 1, usize::MAX);
            let rule = Rule::builder("r", Quota::per_second(1).unwrap())
                .algorithm(algorithm)
                .honour_replays(replays)
                .build()
                .unwrap();
            let per_request = if replays { 2 } else { 1 };
            let request = |salt: u64, i: u64| {
                let replay = Replay {
                    key: numbered(salt + 2, i),
                    ttl: Duration::from_secs(1),
                    max_replays: 1,
                };
                let checks = [Check {
                    rule: &rule,
                    key: numbered(salt, i),
                }];
                let outcome = store.check_now(&checks, replays.then_some(&replay));
                assert!(outcome.allowed && !outcome.replayed);
            };
            for i in 0..1000 {
                request(0, i);
            }
            assert_eq!(store.len(), 1000 * per_request);
            clock.set(expiry - 1);
            // A state one nanosecond from its expiry still counts: a sweep here would keep it.
            assert!(
                !store
                    .check_now(
                        &[Check {
                            rule: &rule,
                            key: numbered(0, 0)
                        }],
                        None
                    )
                    .allowed
            );
            clock.set(expiry);
            for i in 0..600 {
                request(1, i);
            }
            assert_eq!(
                store.len(),
                600 * per_request,
                "{algorithm:?} (replays: {replays}): expired state kept"
            );
        }
    }

    /// A full shard holds exactly its share of the cap, evicting one key per new key.
    #[test]
    fn a_full_shard_holds_exactly_its_share_of_the_cap() {
        let clock = ManualClock::new(T0);
        let store = store_at(&clock, 1, 100);
        let rule = Rule::builder("r", Quota::per_hour(10).unwrap())
            .build()
            .unwrap();
        for i in 0..150 {
            let key = numbered(0, i);
            assert!(store.check_now(&[Check { rule: &rule, key }], None).allowed);
            assert_eq!(store.len() as u64, (i + 1).min(100));
        }
        let stats = store.stats();
        assert_eq!((stats.keys, stats.inserts, stats.evictions), (100, 150, 50));
        // Each eviction probes buckets until it has sampled 8 keys, and at most 64.
        assert!(
            (8 * 50..=64 * 50).contains(&stats.probed),
            "{} buckets probed for 50 evictions",
            stats.probed
        );
    }

    /// A lone shadow rule (the one-check fast path) is charged while it admits, and once it
    /// would deny, the request still passes and no rule binds: nothing enforced applied.
    #[test]
    fn a_lone_shadow_rule_that_would_deny_lets_the_request_pass_and_binds_nothing() {
        for algorithm in Algorithm::ALL {
            let clock = ManualClock::new(T0);
            let store = store_at(&clock, 1, usize::MAX);
            let rule = Rule::builder("shadow", Quota::per_hour(1).unwrap())
                .algorithm(algorithm)
                .shadow(true)
                .build()
                .unwrap();
            let checks = [Check {
                rule: &rule,
                key: numbered(0, 0),
            }];
            let first = store.check_now(&checks, None);
            assert!(first.allowed && first.decisions[0].allowed, "{algorithm:?}");
            assert_eq!(first.binding, None, "{algorithm:?}");
            let second = store.check_now(&checks, None);
            assert!(!second.decisions[0].allowed, "{algorithm:?}: was charged");
            assert!(second.allowed, "{algorithm:?}: a shadow rule denied");
            assert_eq!(second.binding, None, "{algorithm:?}");
            assert_eq!(second.retry_after(), None, "{algorithm:?}");
        }
    }

    /// An idempotency record is live until its TTL ends and gone exactly then: a repeat at
    /// its expiry is charged and starts a fresh record, also when the old one had used up its
    /// free replays.
    #[test]
    fn an_idempotency_record_expires_exactly_at_its_ttl() {
        let clock = ManualClock::new(T0);
        let store = store_at(&clock, 1, usize::MAX);
        let rule = Rule::builder("r", Quota::per_day(100).unwrap())
            .honour_replays(true)
            .build()
            .unwrap();
        let checks = [Check {
            rule: &rule,
            key: numbered(0, 0),
        }];
        let replay = Replay {
            key: numbered(1, 0),
            ttl: Duration::from_secs(10),
            max_replays: 2,
        };
        let second = 1_000_000_000;
        let mut charged = 0;
        let mut request_at = |at: Nanos| {
            clock.set(at);
            let outcome = store.check_now(&checks, Some(&replay));
            assert!(outcome.allowed);
            if !outcome.replayed {
                charged += 1;
            }
            assert_eq!(outcome.decisions[0].remaining, 100 - charged);
            outcome.replayed
        };
        // (when, whether it is a free replay)
        let expected = [
            (T0, false),
            (T0 + 10 * second - 1, true),
            // Expired with one free replay left: charged, and recorded afresh until T0 + 20 s.
            (T0 + 10 * second, false),
            (T0 + 11 * second, true),
            (T0 + 12 * second, true),
            // Out of free replays: charged, and the record stays until it expires.
            (T0 + 13 * second, false),
            (T0 + 20 * second - 1, false),
            // Expired at its cap: charged, and recorded afresh until T0 + 30 s.
            (T0 + 20 * second, false),
            (T0 + 21 * second, true),
        ];
        let got: Vec<_> = expected
            .iter()
            .map(|&(at, _)| (at, request_at(at)))
            .collect();
        assert_eq!(got, expected);
    }

    /// Built inside a Tokio runtime, a store sweeps itself in the background: with no insert
    /// to trigger a sweep, keys past their expiry are still released.
    #[test]
    fn a_background_sweep_releases_expired_keys_without_inserts() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        let clock = ManualClock::new(T0);
        let store = runtime.block_on(async {
            MemoryStore::builder()
                .clock(clock.clone())
                .shards(4)
                .sweep_interval(Some(Duration::from_millis(10)))
                .build()
        });
        let rule = Rule::builder("r", Quota::per_second(1).unwrap())
            .build()
            .unwrap();
        // Fewer keys than any shard's first amortised sweep needs.
        for i in 0..100 {
            let key = numbered(0, i);
            assert!(store.check_now(&[Check { rule: &rule, key }], None).allowed);
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(store.len(), 100, "live keys are kept");
        assert!(!store.is_empty());
        clock.advance(Duration::from_secs(1));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !store.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} keys left",
                store.len()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(store.len(), 0);
    }

    /// Eviction samples with splitmix64: the reference sequence from a zero seed.
    #[test]
    fn splitmix_is_the_reference_splitmix64() {
        let mut state = 0;
        let first: Vec<u64> = (0..3).map(|_| splitmix(&mut state)).collect();
        assert_eq!(
            first,
            [
                0xE220_A839_7B1D_CDAF,
                0x6E78_9E6A_A1B9_65F4,
                0x06C4_5D18_8009_454F
            ]
        );
    }

    /// A sweep visits every table: each algorithm's states and the idempotency records count
    /// alike in `stats().swept`.
    #[test]
    fn a_sweep_visits_every_table() {
        let hour = Quota::per_hour(10).unwrap();
        let rule = |name: &str, algorithm, replays| {
            Rule::builder(name, hour)
                .algorithm(algorithm)
                .honour_replays(replays)
                .build()
                .unwrap()
        };
        // Two tables per case, filled alike: a sliding log and its records, then a fixed
        // window beside a sliding-window counter.
        let cases = [
            (vec![rule("log", Algorithm::SlidingLog, true)], true),
            (
                vec![
                    rule("fixed", Algorithm::FixedWindow, false),
                    rule("sliding", Algorithm::SlidingWindow, false),
                ],
                false,
            ),
        ];
        for (rules, replays) in &cases {
            let clock = ManualClock::new(T0);
            let store = store_at(&clock, 1, usize::MAX);
            let mut first_sweep = None;
            for i in 0..200 {
                let replay = Replay {
                    key: numbered(1, i),
                    ttl: Duration::from_secs(60),
                    max_replays: 1,
                };
                let checks: Vec<_> = rules
                    .iter()
                    .map(|rule| Check {
                        rule,
                        key: numbered(0, i),
                    })
                    .collect();
                let (before, held) = (store.stats().swept, store.len());
                assert!(store.check_now(&checks, replays.then_some(&replay)).allowed);
                let swept = store.stats().swept - before;
                if swept > 0 && first_sweep.is_none() {
                    first_sweep = Some((held, swept));
                }
            }
            // Each request writes two entries; the 256th insert, the 128th request's second,
            // sweeps the 255 entries then held, half of them in each table.
            assert_eq!(first_sweep, Some((254, 255)), "{:?}", rules[0].name());
        }
    }
}

/// Table housekeeping against its contract: [`Housekept::lowest`] stated over the buckets it
/// draws rather than as its loop (it keeps the first [`EVICTION_SAMPLE`] entries found, stops
/// after [`EVICTION_PROBES`] buckets unless asked to search on until it finds one, and returns
/// the lowest-ranked of what it found); which table searches on; when a sweep gives memory back.
#[cfg(test)]
mod sampling {
    use super::*;

    /// A GCRA table of `entries` keys in the buckets of a table sized for `sized_for` (more
    /// buckets than keys: sparse), each key expiring at its own instant.
    fn table(entries: u64, sized_for: usize) -> Table<Gcra> {
        let mut table = Table::<Gcra> {
            map: hashbrown::HashTable::with_capacity(sized_for),
            ..Table::default()
        };
        for i in 0..entries {
            let expiry = 1_000 + i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % 1_000_000;
            table.insert([i, !i], GcraState { tat: expiry });
        }
        table
    }

    /// What `lowest` must return and the buckets it must probe, from the sequence of buckets
    /// the sampler draws from `seed`.
    fn expected(table: &Table<Gcra>, seed: u64, until_found: bool) -> (Option<Candidate>, u64) {
        let mut random = seed;
        let buckets = table.map.num_buckets() as u64;
        let draws: Vec<usize> = (0..20_000)
            .map(|_| (splitmix(&mut random) % buckets) as usize)
            .collect();
        // The draws that find an entry, by their position in the sequence.
        let found: Vec<(usize, usize)> = (draws.iter().enumerate())
            .filter(|(_, &bucket)| table.map.get_bucket(bucket).is_some())
            .map(|(at, &bucket)| (at, bucket))
            .collect();
        let probes = match found.get(EVICTION_SAMPLE - 1) {
            Some(&(at, _)) if at < EVICTION_PROBES => at + 1,
            _ if !until_found || found[0].0 < EVICTION_PROBES => EVICTION_PROBES,
            _ => found[0].0 + 1,
        };
        let lowest = (found.iter())
            .take_while(|(at, _)| *at < probes)
            .take(EVICTION_SAMPLE)
            .map(|&(_, bucket)| {
                let (slot, state) = table.map.get_bucket(bucket).unwrap();
                (((state.tat, 0), *slot), bucket)
            })
            .min();
        (lowest, probes as u64)
    }

    #[test]
    fn an_eviction_sample_is_the_first_entries_found_within_its_probes() {
        // Dense: 100 keys in 128 buckets; sparse: one key in 128 or 1,024 buckets, so the
        // sample stops at its probe limit, or searches on until it finds the key.
        let tables = [table(100, 100), table(1, 100), table(1, 800)];
        for (t, table) in tables.iter().enumerate() {
            for until_found in [false, true] {
                for seed in 0..32 {
                    let (mut random, mut probed) = (seed, 0);
                    let got = table.lowest(&mut random, until_found, &mut probed);
                    assert_eq!(
                        (got, probed),
                        expected(table, seed, until_found),
                        "table {t}, until_found: {until_found}, seed {seed}"
                    );
                }
            }
        }
    }

    /// A full shard's largest table always yields a candidate, however sparse: two soon-expiring
    /// keys left in 1,024 buckets (their neighbours evicted), beside one long-lived key, are
    /// found and one of them evicted, for every seed of the sampler.
    #[test]
    fn an_eviction_searches_the_largest_table_until_it_finds_a_key() {
        for seed in 0..32 {
            let mut tables = Tables {
                random: seed,
                ..Tables::default()
            };
            tables.fixed_window.map = hashbrown::HashTable::with_capacity(800);
            for i in 0..2 {
                let state = FixedWindowState {
                    window_end: 1_000 + i,
                    count: 1,
                };
                tables.fixed_window.insert([i, 0], state);
            }
            tables.gcra.insert([9, 9], GcraState { tat: 1_000_000 });
            tables.evict_one();
            assert_eq!(tables.work.evictions, 1);
            assert_eq!(
                (tables.fixed_window.len(), tables.gcra.len()),
                (1, 1),
                "seed {seed}: the long-lived key was evicted"
            );
        }
    }

    /// A sweep that leaves a table under a quarter of its capacity (as `hashbrown` counts it
    /// after the removals) shrinks it to a size with room for twice the keys left, and not for
    /// four times as many; one that leaves a quarter or more keeps its size. Every number of
    /// keys kept, and then a table where exactly a quarter is kept.
    #[test]
    fn a_sweep_gives_back_the_memory_of_a_table_left_under_a_quarter_full() {
        // A fresh table of 1000 keys, the instant that keeps the `kept` that expire last, and
        // a quarter of the capacity those removals leave (seen on a copy: same buckets, same
        // tombstones, no shrink).
        let prepare = |kept: usize| {
            let table = table(1000, 1000);
            let mut expiries: Vec<Nanos> = table.map.iter().map(|(_, s)| s.tat).collect();
            expiries.sort_unstable();
            let now = if kept == 1000 {
                0
            } else {
                expiries[999 - kept]
            };
            let mut removed = table.map.clone();
            removed.retain(|(_, s)| s.tat > now);
            (table, now, removed.capacity() / 4)
        };
        let check = |mut table: Table<Gcra>, now, kept, quarter| {
            let buckets = table.map.num_buckets();
            assert_eq!(table.sweep(now), 1000, "a sweep visits every entry");
            assert_eq!(table.len(), kept);
            let shape = (table.map.capacity(), table.map.num_buckets());
            if kept < quarter {
                let at_most = hashbrown::HashTable::<()>::with_capacity(4 * kept).num_buckets();
                assert!(
                    shape.0 >= 2 * kept && shape.1 <= at_most,
                    "{kept} of 1000 kept: capacity and buckets {shape:?}"
                );
            } else {
                assert_eq!(
                    shape.1, buckets,
                    "{kept} of 1000 kept, a quarter is {quarter}"
                );
            }
        };
        for kept in 0..=1000 {
            let (table, now, quarter) = prepare(kept);
            check(table, now, kept, quarter);
        }
        // Which tables leave exactly a quarter depends on their random hashers: try until one
        // does (each table kept at 400 to 460 keys: most tables do for one of them).
        let exact = (0..100).find_map(|_| {
            (400..=460).find_map(|kept| {
                let (table, now, quarter) = prepare(kept);
                (kept == quarter).then(|| check(table, now, kept, quarter))
            })
        });
        assert!(exact.is_some(), "no table left exactly a quarter full");
    }

    /// The memory store decides at once, as [`Store::check`] would, charging the same.
    #[test]
    fn the_memory_store_answers_immediately_and_charges() {
        let store = MemoryStore::builder()
            .clock(crate::ManualClock::new(crate::conformance::BASE))
            .sweep_interval(None)
            .build();
        let rule = crate::Rule::builder("r", Quota::per_hour(2).unwrap())
            .build()
            .unwrap();
        let key = crate::KeySecret::DEFAULT.key().part(b"client").finish();
        let checks = [Check { rule: &rule, key }];
        let remaining = |outcome: Option<Result<Outcome, _>>| match outcome {
            Some(Ok(outcome)) => (outcome.allowed, outcome.decisions[0].remaining),
            other => panic!("not answered at once: {other:?}"),
        };
        assert_eq!(remaining(store.check_immediately(&checks, None)), (true, 1));
        assert_eq!(remaining(store.check_immediately(&checks, None)), (true, 0));
        assert_eq!(
            remaining(store.check_immediately(&checks, None)),
            (false, 0)
        );
    }
}
