//! [`RedisStore`]: the [`Store`] on Redis, and its builder.
//!
//! This module owns the orchestration of one decision: deny cache, circuit breaker, time budget,
//! the script call, and the failure policy. Its children own the rest of the request path: the
//! exchange across hash slots and its refunds (`cluster`), and the local store the fallback
//! policy decides with (`fallback`). The arithmetic is the script's ([`crate::script`]), the
//! sockets are [`RedisConnection`]'s.

mod cluster;
mod counters;
mod fallback;

use std::sync::Arc;
use std::time::Duration;

use tollgate_core::{
    Check, Clock, Decision, Decisions, LogThrottle, Nanos, Outcome, Replay, Rule, Store,
    SystemClock,
};

use crate::connection::{Dialect, RedisConnection};
use crate::deny_cache::{DenyCache, Join, Slot};
use crate::error::RedisStoreError;
use crate::policy::{Admission, Breaker, BreakerConfig, FailurePolicy};
use crate::script::{self, Call, Mode, ReplayArg, Reply, Target};
use crate::stats::{bump, Counters, RedisStoreStats};
use cluster::slot_groups;
use fallback::Fallback;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "tollgate";
/// The default time budget of one decision.
pub const DEFAULT_BUDGET: Duration = Duration::from_millis(50);

/// The default capacity of the local deny cache, in (rule, key) denials.
pub const DEFAULT_DENY_CACHE_CAPACITY: usize = 10_000;

/// Rate-limit state in Redis, shared by every instance of an API. Cloning is cheap and shares
/// the connection, caches and counters.
///
/// One request is one script call (`FCALL`, or `EVALSHA`): every rule is decided against Redis `TIME`, and
/// written only if no enforced rule denies. See the [crate documentation](crate) for keys,
/// expiry, Cluster, the deny cache and the failure policy.
///
/// ```no_run
/// use std::time::Duration;
/// use tollgate_core::{Check, KeySecret, Quota, Rule, Store};
/// use tollgate_redis::{FailurePolicy, RedisStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// // or, tuned:
/// let store = RedisStore::builder(store.connection().clone())
///     .prefix("myapi")
///     .budget(Duration::from_millis(30))
///     .failure_policy(FailurePolicy::fallback(4))
///     .build();
///
/// let rule = Rule::builder("per_ip", Quota::per_minute(100)?).build()?;
/// let key = KeySecret::DEFAULT.key().part(b"203.0.113.7").finish();
/// let outcome = store.check(&[Check { rule: &rule, key }], None).await?;
/// println!("allowed: {}", outcome.allowed);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("connection", &self.inner.conn)
            .field("prefix", &self.inner.prefix)
            .field("budget", &self.inner.budget)
            .field("policy", &self.inner.policy)
            .field("explicit_time", &self.inner.explicit)
            .field("fixed_window_counters", &self.inner.fixed_window_counters)
            .finish_non_exhaustive()
    }
}

struct Inner {
    conn: RedisConnection,
    /// Whether the script runs as a Function or by `EVALSHA`.
    dialect: Dialect,
    prefix: Box<str>,
    budget: Duration,
    policy: FailurePolicy,
    fallback: Option<Fallback>,
    breaker: Breaker,
    deny_cache: Option<DenyCache>,
    /// The local clock (deny cache, fallback store); in explicit-time mode, also Redis's "now".
    clock: LocalClock,
    explicit: bool,
    /// Fixed windows decided by `INCRBY` counters instead of the script.
    fixed_window_counters: bool,
    counters: Counters,
    warn: LogThrottle,
}

/// A shareable clock.
#[derive(Clone)]
struct LocalClock(Arc<dyn Clock>);

impl Clock for LocalClock {
    fn now(&self) -> Nanos {
        self.0.now()
    }
}

/// Configures a [`RedisStore`]; see [`RedisStore::builder`].
#[must_use]
pub struct RedisStoreBuilder {
    conn: RedisConnection,
    prefix: String,
    budget: Duration,
    policy: FailurePolicy,
    breaker: BreakerConfig,
    deny_cache: Option<usize>,
    clock: Option<Arc<dyn Clock>>,
    explicit: bool,
    fixed_window_counters: bool,
    warn_interval: Duration,
}

impl std::fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("connection", &self.conn)
            .field("prefix", &self.prefix)
            .field("budget", &self.budget)
            .field("policy", &self.policy)
            .field("breaker", &self.breaker)
            .field("deny_cache", &self.deny_cache)
            .field("explicit_time", &self.explicit)
            .field("fixed_window_counters", &self.fixed_window_counters)
            .finish()
    }
}

impl RedisStoreBuilder {
    /// The key prefix (default `tollgate`): keys are `<prefix>:<rule name>:<32 hex digits>`.
    /// Stores that share limits must use the same prefix (and the same
    /// [`KeySecret`](tollgate_core::KeySecret)).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The time budget of one decision, connection checkout and every round trip included
    /// (default 50 ms). Past it the failure policy decides.
    pub fn budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    /// What to do when Redis fails or is too slow (default: [`FailurePolicy::FailOpen`]).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Circuit-breaker settings (default: open after 5 consecutive failures, probe after 250 ms).
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// The local deny cache's capacity in (rule, key) denials, or `None` to ask Redis about
    /// every request (default: 10 000).
    pub fn deny_cache(mut self, capacity: Option<usize>) -> Self {
        self.deny_cache = capacity.filter(|c| *c > 0);
        self
    }

    /// At most one warning per `interval` about decisions made without Redis (default 1 s);
    /// the warning says how many were held back.
    pub fn warn_interval(mut self, interval: Duration) -> Self {
        self.warn_interval = interval;
        self
    }

    /// **Testing only.** Decides at the time `clock` tells instead of Redis `TIME`, so that a
    /// scripted table (the core's conformance table) can run against Redis. Do not use in
    /// production: instances whose clocks disagree would not agree on limits. The deny cache
    /// and the fallback store follow the same clock.
    pub fn explicit_time(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self.explicit = true;
        self
    }

    /// The local clock, used only by the deny cache and the fallback store (default: the
    /// system clock). Decisions in Redis use Redis `TIME` whatever this says, so instances
    /// whose clocks disagree still agree on limits.
    pub fn local_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self.explicit = false;
        self
    }

    /// Decides [fixed windows](tollgate_core::Algorithm::FixedWindow) with plain Redis
    /// counters instead of the Lua script (default: off): for the VMArea preset's two windows,
    /// a tenth to a third of the script's Redis command time per decision, a quarter to two
    /// fifths of its whole Redis process CPU (see `BENCHMARKS.md`), at the price of a window of
    /// **over-denial**. Never over-admission: every admitted request is counted before it is
    /// admitted.
    ///
    /// - **How**: each window is its own key, `<prefix>:<rule name>:<32 hex digits>:<window
    ///   index>` (index = now / period; windows aligned on multiples of the period since the
    ///   epoch, as the core's `FixedWindow`), charged by one pipeline per request,
    ///   `SET <key> 0 NX PX <ttl>` and `INCRBY <key> <cost>` per rule, no script. A key
    ///   expires one second plus the refund timeout (`max(1 s, budget)`) after its window.
    /// - **The trade**: a request any rule denies is first counted, then refunded (`DECRBY`,
    ///   one more round trip, only on denial). While a denied request's charge is in flight,
    ///   about one round trip, other requests of the same key may be denied for units that
    ///   are about to be given back. All-or-nothing still holds once the refund lands: a
    ///   denied request burns nothing. A refund is lost only if Redis fails in between; the
    ///   charge then stays until its window ends. A request cancelled or timed out after its
    ///   charge was sent still gets its refund (the exchange then finishes in a task of its own).
    /// - **Time is this process's clock**, not Redis `TIME`: the window comes from the store's
    ///   clock ([`local_clock`](Self::local_clock), the system clock by default). Instances
    ///   whose clocks disagree shift their window edges by the skew: near an edge, one
    ///   instance counts in the next window while another still counts in the previous one.
    ///   Keep clocks synchronised (NTP); a skew of `s` lets up to `limit` more requests
    ///   through in the `s` around each edge, as a fixed window does around its edge anyway.
    /// - **What else changes**: the script never reads these keys and they never read the
    ///   script's `f1:` state, so switching the option on or off restarts every fixed window
    ///   once. A request that mixes fixed windows with other algorithms, has an idempotent
    ///   replay or is a peek still reads and charges the counters: the other rules are
    ///   decided by the script and the exchange is the Cluster's (free replay taken first,
    ///   everything decided in parallel, what admitted refunded if anything denies), so such
    ///   a request costs more round trips than with the script. The best case is a request
    ///   whose every rule is a fixed window (the VMArea preset): one round trip. A counter
    ///   key holding something other than an integer is fresh state and repaired, as the
    ///   script treats state it cannot read. The deny cache, failure policy, breaker, budget
    ///   and statistics work as for the script.
    pub fn fixed_window_counters(mut self, on: bool) -> Self {
        self.fixed_window_counters = on;
        self
    }

    /// Builds the store. Call it inside a Tokio runtime when the policy is
    /// [`FailurePolicy::Fallback`], so the local store sweeps itself in the background.
    pub fn build(self) -> RedisStore {
        let explicit = self.explicit;
        let clock = LocalClock(
            self.clock
                .unwrap_or_else(|| Arc::new(SystemClock::new()) as Arc<dyn Clock>),
        );
        let fallback = match self.policy {
            FailurePolicy::Fallback { instances } => Some(Fallback::new(clock.clone(), instances)),
            _ => None,
        };
        RedisStore {
            inner: Arc::new(Inner {
                conn: self.conn,
                dialect: Dialect::default(),
                prefix: self.prefix.into_boxed_str(),
                budget: self.budget,
                policy: self.policy,
                fallback,
                breaker: Breaker::new(self.breaker),
                deny_cache: self.deny_cache.map(DenyCache::new),
                clock,
                explicit,
                fixed_window_counters: self.fixed_window_counters,
                counters: Counters::new(),
                warn: LogThrottle::new(self.warn_interval),
            }),
        }
    }
}

/// # Connecting
impl RedisStore {
    /// Connects to one Redis by URL (`redis://[:password@]host:port[/db]`, `rediss://…`) with a
    /// self-reconnecting multiplexed connection, loads the script, and builds a store with the
    /// defaults. Fails if Redis cannot be reached now.
    pub async fn connect(url: &str) -> Result<Self, RedisStoreError> {
        let store = Self::builder(RedisConnection::connect(url).await?).build();
        store.load_script().await?;
        Ok(store)
    }

    /// Connects to a Redis Cluster through any of its nodes, loads the script on every primary,
    /// and builds a store with the defaults.
    pub async fn connect_cluster<T: redis::IntoConnectionInfo>(
        nodes: impl IntoIterator<Item = T>,
    ) -> Result<Self, RedisStoreError> {
        let store = Self::builder(RedisConnection::connect_cluster(nodes).await?).build();
        store.load_script().await?;
        Ok(store)
    }

    /// Configures a store on a connection the application already has: a
    /// [`ConnectionManager`](redis::aio::ConnectionManager), a
    /// [`MultiplexedConnection`](redis::aio::MultiplexedConnection), a
    /// [`deadpool_redis::Pool`] or a [`ClusterConnection`](redis::cluster_async::ClusterConnection).
    pub fn builder(connection: impl Into<RedisConnection>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            conn: connection.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            budget: DEFAULT_BUDGET,
            policy: FailurePolicy::default(),
            breaker: BreakerConfig::default(),
            deny_cache: Some(DEFAULT_DENY_CACHE_CAPACITY),
            clock: None,
            explicit: false,
            fixed_window_counters: false,
            warn_interval: Duration::from_secs(1),
        }
    }

    /// Loads the script into Redis (every primary, in Cluster), so that the first decision does
    /// not pay a `NOSCRIPT` round trip. Optional: a missing script is loaded on demand.
    pub async fn load_script(&self) -> Result<(), RedisStoreError> {
        self.inner.conn.load_script(&self.inner.dialect).await
    }
}

/// # Inspecting
impl RedisStore {
    /// The connection.
    pub fn connection(&self) -> &RedisConnection {
        &self.inner.conn
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The Redis key holding `rule`'s state for `key`: `<prefix>:<rule name>:<32 hex digits>`.
    pub fn redis_key(&self, rule: &Rule, key: tollgate_core::Key) -> String {
        // Built by hand, once per rule per decision: `format!` and `to_hex` cost an allocation
        // and the formatting machinery each.
        let (prefix, name) = (&*self.inner.prefix, rule.name());
        let mut out = String::with_capacity(prefix.len() + name.len() + 2 + 32);
        out.push_str(prefix);
        out.push(':');
        out.push_str(name);
        out.push(':');
        push_hex(&mut out, key.as_u128());
        out
    }

    /// The Redis key of an idempotency record: `<prefix>:~replay:<32 hex digits>` (`~` cannot
    /// begin a rule name, so it never collides with rule state).
    pub fn replay_key(&self, replay: &Replay) -> String {
        format!("{}:~replay:{}", self.inner.prefix, replay.key.to_hex())
    }

    /// The counters so far.
    pub fn stats(&self) -> RedisStoreStats {
        self.inner.counters.snapshot()
    }

    /// Whether the circuit breaker is open (Redis is not being called, or only probed).
    pub fn breaker_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// The failure policy.
    pub fn failure_policy(&self) -> FailurePolicy {
        self.inner.policy
    }

    /// The time budget of one decision.
    pub fn budget(&self) -> Duration {
        self.inner.budget
    }
}

// The request path: one decision, in `Mode::Check` (`Store::check`) or `Mode::Peek`
// (`Store::peek`). The Cluster exchange across slots is in `cluster`.
impl RedisStore {
    /// One decision: the deny cache, then Redis within the budget and past the breaker, else
    /// the failure policy.
    async fn decide(
        &self,
        checks: &[Check<'_>],
        replay: Option<&Replay>,
        mode: Mode,
    ) -> Result<Outcome, RedisStoreError> {
        let inner = &*self.inner;
        if let Some(check) = checks
            .iter()
            .find(|c| !script::supported(c.rule.algorithm()))
        {
            return Err(RedisStoreError::UnsupportedAlgorithm {
                rule: check.rule.name().to_owned(),
                algorithm: check.rule.algorithm().name(),
            });
        }
        // A replay matters only to the rules that honour it, and never to a peek.
        let replay = replay
            .filter(|_| mode == Mode::Check && checks.iter().any(|c| c.rule.honours_replays()));
        if checks.is_empty() {
            return Ok(Outcome::new(checks, Decisions::new(), false));
        }
        let mut sent = inner.clock.now();
        // The budget covers the whole decision: waiting for another request's call included.
        let deadline = tokio::time::Instant::now() + inner.budget;
        // Held until this request's answer is in the deny cache: requests on the same pairs
        // wait for it (see `deny_cache`).
        let mut _flight = None;
        if mode == Mode::Check {
            if let Some(outcome) = self.cached_denial(checks, replay.is_some(), sent) {
                inner.counters.deny_cache_hit();
                return Ok(outcome);
            }
            if let Some(cache) = &inner.deny_cache {
                match cache.join(cached_pairs(checks, replay.is_some()).collect()) {
                    Join::Lead(flight) => _flight = Some(flight),
                    Join::Follow(mut landed) => {
                        bump(&inner.counters.coalesced);
                        // Ends when the flight lands, fails or is cancelled.
                        let _ = tokio::time::timeout_at(deadline, landed.changed()).await;
                        sent = inner.clock.now();
                        if let Some(outcome) = self.cached_denial(checks, replay.is_some(), sent) {
                            inner.counters.deny_cache_hit();
                            return Ok(outcome);
                        }
                    }
                }
            }
        }
        if inner.breaker.admit(inner.budget) == Admission::Skip {
            bump(&inner.counters.short_circuited);
            let cool_down = inner.breaker.config().cool_down;
            let error = RedisStoreError::CircuitOpen {
                failures: inner.breaker.config().failures,
                cool_down,
            };
            return self.degrade(checks, replay, mode, error).await;
        }
        bump(&inner.counters.redis_calls);
        let result =
            tokio::time::timeout_at(deadline, self.remote(checks, replay, mode, sent)).await;
        let error = match result {
            Ok(Ok(outcome)) => {
                if inner.breaker.success() {
                    inner.counters.breaker_closed();
                    tracing::info!(target: "tollgate_redis", "Redis answers again; circuit breaker closed");
                }
                return Ok(outcome);
            }
            Ok(Err(error)) => error,
            Err(_) => {
                bump(&inner.counters.timeouts);
                RedisStoreError::Timeout {
                    budget: inner.budget,
                }
            }
        };
        if error.is_unavailable() {
            bump(&inner.counters.redis_failures);
            if inner.breaker.failure() {
                inner.counters.breaker_opened();
            }
        } else {
            // Redis answered: it is reachable, whatever went wrong with this request. A script
            // or data error must not switch limiting off for every key.
            bump(&inner.counters.script_errors);
            if inner.breaker.success() {
                inner.counters.breaker_closed();
                tracing::info!(target: "tollgate_redis", "Redis answers again; circuit breaker closed");
            }
        }
        self.degrade(checks, replay, mode, error).await
    }

    /// A local denial, if the deny cache holds one for any enforced (rule, key) of the request.
    /// With a replay, the rules that honour replays are not looked up: the request may be a
    /// free replay there, while every other rule charges it like any request.
    fn cached_denial(&self, checks: &[Check<'_>], replay: bool, now: Nanos) -> Option<Outcome> {
        let cache = self.inner.deny_cache.as_ref()?;
        let mut hit = false;
        let decisions: Decisions = checks
            .iter()
            .map(|c| {
                if cached(c, replay) {
                    if let Some(d) = cache.get(c.rule.id(), c.key.as_u128(), now) {
                        hit = true;
                        return d;
                    }
                }
                not_consulted(c.rule)
            })
            .collect();
        hit.then(|| Outcome::new(checks, decisions, false))
    }

    /// The outcome of `checks` from Redis's decisions; a charged request's enforced denials go
    /// into the deny cache.
    fn outcome(
        &self,
        checks: &[Check<'_>],
        decisions: Decisions,
        replayed: bool,
        mode: Mode,
        sent: Nanos,
    ) -> Outcome {
        let outcome = Outcome::new(checks, decisions, replayed);
        if mode == Mode::Check {
            self.remember_denials(checks, &outcome, sent);
        }
        outcome
    }

    /// Puts the enforced denials of a charged request in the deny cache.
    fn remember_denials(&self, checks: &[Check<'_>], outcome: &Outcome, sent: Nanos) {
        let Some(cache) = &self.inner.deny_cache else {
            return;
        };
        for (check, decision) in checks.iter().zip(&outcome.decisions) {
            if !decision.allowed && !check.rule.is_shadow() {
                cache.insert(check.rule.id(), check.key.as_u128(), sent, decision);
            }
        }
    }

    /// The rules of `checks` with their Redis keys.
    fn targets(&self, checks: &[Check<'_>]) -> Vec<Target> {
        checks
            .iter()
            .map(|c| Target {
                rule: c.rule.clone(),
                key: self.redis_key(c.rule, c.key),
            })
            .collect()
    }

    /// The time a call passes to the script: the local clock's in explicit-time mode, else
    /// `None` (Redis `TIME`).
    fn explicit_now(&self) -> Option<Nanos> {
        self.inner.explicit.then(|| self.inner.clock.now())
    }

    /// One script call and its parsed reply.
    async fn call(&self, call: Call<'_>) -> Result<Reply, RedisStoreError> {
        let values = self.inner.conn.invoke(&call, &self.inner.dialect).await?;
        call.reply(&values)
    }

    /// The whole Redis side of one decision. `replay` is given only when a rule honours it.
    async fn remote(
        &self,
        checks: &[Check<'_>],
        replay: Option<&Replay>,
        mode: Mode,
        sent: Nanos,
    ) -> Result<Outcome, RedisStoreError> {
        let targets = self.targets(checks);
        let replay_key = replay.map(|r| (self.replay_key(r), r));
        if self.inner.fixed_window_counters
            && checks
                .iter()
                .any(|c| c.rule.algorithm() == tollgate_core::Algorithm::FixedWindow)
        {
            let replay = replay_key.map(|(k, r)| (k, *r));
            return self
                .remote_counters(checks, targets, replay, mode, sent)
                .await;
        }
        let groups = if self.inner.conn.is_cluster() {
            slot_groups(&targets, replay_key.as_ref().map(|(k, _)| k.as_str()))
        } else {
            Vec::new()
        };
        if groups.len() <= 1 {
            let now = self.explicit_now();
            let replay = match &replay_key {
                Some((key, r)) => ReplayArg::Record(key, r),
                None => ReplayArg::None,
            };
            let reply = self.call(Call::decide(mode, now, &targets, replay)).await?;
            let decisions = reply.decisions.into();
            return Ok(self.outcome(checks, decisions, reply.replayed, mode, sent));
        }
        let replay = replay_key.map(|(k, r)| (k, *r));
        self.remote_cluster(checks, targets, groups, replay, mode, sent)
            .await
    }

    /// Decides without Redis, by policy.
    async fn degrade(
        &self,
        checks: &[Check<'_>],
        replay: Option<&Replay>,
        mode: Mode,
        error: RedisStoreError,
    ) -> Result<Outcome, RedisStoreError> {
        let inner = &*self.inner;
        bump(&inner.counters.degraded);
        if let Some(suppressed) = inner.warn.permit() {
            if error.is_unavailable() {
                tracing::warn!(
                    target: "tollgate_redis",
                    %error,
                    policy = ?inner.policy,
                    suppressed,
                    "rate-limit decision made without Redis"
                );
            } else {
                tracing::warn!(
                    target: "tollgate_redis",
                    %error,
                    policy = ?inner.policy,
                    suppressed,
                    "rate-limit decision made by the failure policy: Redis is reachable but could not decide this request (the circuit breaker stays closed)"
                );
            }
        }
        // `build` makes the fallback store exactly when the policy is `Fallback`.
        match (inner.policy, &inner.fallback) {
            (FailurePolicy::FailClosed, _) => {
                bump(&inner.counters.failed_closed);
                Err(error)
            }
            (FailurePolicy::Fallback { .. }, Some(fallback)) => {
                bump(&inner.counters.fell_back);
                let mut outcome = fallback.decide(checks, replay, mode).await;
                outcome.degraded = true;
                Ok(outcome)
            }
            _ => {
                bump(&inner.counters.failed_open);
                Ok(open_outcome(checks))
            }
        }
    }
}

/// Appends `value` as 32 lowercase hex digits (as `{:032x}`).
fn push_hex(out: &mut String, value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 32];
    for (i, digit) in digits.iter_mut().enumerate() {
        *digit = DIGITS[((value >> ((31 - i) * 4)) & 0xf) as usize];
    }
    out.push_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"));
}

/// Whether the deny cache may answer for `check`: an enforced rule, and not one where the
/// request may be a free replay (Redis alone knows).
fn cached(check: &Check<'_>, replay: bool) -> bool {
    let may_be_free = replay && check.rule.honours_replays();
    !check.rule.is_shadow() && !may_be_free
}

/// The (rule, key) pairs of `checks` the deny cache answers for.
fn cached_pairs<'a>(checks: &'a [Check<'_>], replay: bool) -> impl Iterator<Item = Slot> + 'a {
    checks
        .iter()
        .filter(move |c| cached(c, replay))
        .map(|c| (c.rule.id(), c.key.as_u128()))
}

/// A rule's decision when it was not consulted (Redis unavailable under fail-open, or another
/// rule of the request denied from the deny cache): admitted, at full capacity.
fn not_consulted(rule: &Rule) -> Decision {
    let capacity = rule.algorithm().capacity(rule.quota());
    Decision {
        allowed: true,
        limit: capacity,
        remaining: capacity,
        reset_after: Duration::ZERO,
        retry_after: None,
    }
}

/// Fail-open: admitted, no binding rule (so no made-up rate-limit headers).
fn open_outcome(checks: &[Check<'_>]) -> Outcome {
    Outcome {
        allowed: true,
        binding: None,
        replayed: false,
        degraded: true,
        decisions: checks.iter().map(|c| not_consulted(c.rule)).collect(),
    }
}

impl Store for RedisStore {
    type Error = RedisStoreError;
    const SHARED: bool = true;
    const NAME: &'static str = "redis";

    fn check(
        &self,
        checks: &[Check<'_>],
        replay: Option<&Replay>,
    ) -> impl std::future::Future<Output = Result<Outcome, Self::Error>> + Send {
        self.decide(checks, replay, Mode::Check)
    }

    fn peek(
        &self,
        checks: &[Check<'_>],
    ) -> impl std::future::Future<Output = Result<Outcome, Self::Error>> + Send {
        self.decide(checks, None, Mode::Peek)
    }
}

#[cfg(test)]
mod tests {
    use super::push_hex;

    #[test]
    fn keys_carry_the_digest_as_32_lowercase_hex_digits() {
        for value in [
            0,
            1,
            0xabc,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ] {
            let mut out = String::from("p:");
            push_hex(&mut out, value);
            assert_eq!(out, format!("p:{value:032x}"));
        }
    }
}
