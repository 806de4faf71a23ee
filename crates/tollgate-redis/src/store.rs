//! [`RedisStore`]: the [`Store`] on Redis, and its builder.
//!
//! This module owns the orchestration of one decision: deny cache, circuit breaker, time budget,
//! the script call (or, in Cluster, one call per hash slot and the refunds), and the failure
//! policy. The arithmetic is the script's ([`crate::script`]), the sockets are
//! [`RedisConnection`]'s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use parking_lot::Mutex;
use redis::cluster_routing::Slot;
use tollgate_core::{
    Algorithm, Check, Clock, Decision, Decisions, LogThrottle, MemoryStore, Nanos, Outcome, Quota,
    Replay, Rule, Store, SystemClock,
};

use crate::connection::RedisConnection;
use crate::deny_cache::DenyCache;
use crate::error::RedisStoreError;
use crate::policy::{Admission, Breaker, BreakerConfig, FailurePolicy};
use crate::script::{self, Call, Mode, ReplayArg, Reply, Target};
use crate::stats::{bump, Counters, RedisStoreStats};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "tollgate";
/// The default time budget of one decision.
pub const DEFAULT_BUDGET: Duration = Duration::from_millis(50);
/// How long a Cluster refund may take (it runs on, past the caller's budget).
const REFUND_TIMEOUT: Duration = Duration::from_secs(1);

/// The default capacity of the local deny cache, in (rule, key) denials.
pub const DEFAULT_DENY_CACHE_CAPACITY: usize = 10_000;

/// Rate-limit state in Redis, shared by every instance of an API. Cloning is cheap and shares
/// the connection, caches and counters.
///
/// One request is one script call (`EVALSHA`): every rule is decided against Redis `TIME`, and
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
            .finish_non_exhaustive()
    }
}

struct Inner {
    conn: RedisConnection,
    prefix: Box<str>,
    budget: Duration,
    policy: FailurePolicy,
    fallback: Option<Fallback>,
    breaker: Breaker,
    deny_cache: Option<DenyCache>,
    /// The local clock (deny cache, fallback store); in explicit-time mode, also Redis's "now".
    clock: LocalClock,
    explicit: bool,
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

/// The local store used by [`FailurePolicy::Fallback`], and its scaled rules.
struct Fallback {
    store: MemoryStore<LocalClock>,
    instances: u32,
    rules: Mutex<HashMap<RuleSignature, Rule>>,
}

type RuleSignature = (u64, Quota, Algorithm, u64, bool, bool);

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

    /// Builds the store. Call it inside a Tokio runtime when the policy is
    /// [`FailurePolicy::Fallback`], so the local store sweeps itself in the background.
    pub fn build(self) -> RedisStore {
        let explicit = self.explicit;
        let clock = LocalClock(
            self.clock
                .unwrap_or_else(|| Arc::new(SystemClock::new()) as Arc<dyn Clock>),
        );
        let fallback = match self.policy {
            FailurePolicy::Fallback { instances } => Some(Fallback {
                store: MemoryStore::builder().clock(clock.clone()).build(),
                instances: instances.max(1),
                rules: Mutex::new(HashMap::new()),
            }),
            _ => None,
        };
        RedisStore {
            inner: Arc::new(Inner {
                conn: self.conn,
                prefix: self.prefix.into_boxed_str(),
                budget: self.budget,
                policy: self.policy,
                fallback,
                breaker: Breaker::new(self.breaker),
                deny_cache: self.deny_cache.map(DenyCache::new),
                clock,
                explicit,
                counters: Counters::default(),
                warn: LogThrottle::new(self.warn_interval),
            }),
        }
    }
}

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
            warn_interval: Duration::from_secs(1),
        }
    }

    /// Loads the script into Redis (every primary, in Cluster), so that the first decision does
    /// not pay a `NOSCRIPT` round trip. Optional: a missing script is loaded on demand.
    pub async fn load_script(&self) -> Result<(), RedisStoreError> {
        self.inner.conn.load_script().await
    }

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
        format!("{}:{}:{}", self.inner.prefix, rule.name(), key.to_hex())
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

    async fn decide(
        &self,
        checks: &[Check<'_>],
        replay: Option<&Replay>,
        peek: bool,
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
        let replay = replay.filter(|_| !peek && checks.iter().any(|c| c.rule.honours_replays()));
        if checks.is_empty() {
            return Ok(Outcome::new(checks, Decisions::new(), false));
        }
        let sent = inner.clock.now();
        if !peek {
            if let Some(outcome) = self.cached_denial(checks, replay.is_some(), sent) {
                bump(&inner.counters.deny_cache_hits);
                return Ok(outcome);
            }
        }
        if inner.breaker.admit(inner.budget) == Admission::Skip {
            bump(&inner.counters.short_circuited);
            let cool_down = inner.breaker.config().cool_down;
            let error = RedisStoreError::CircuitOpen {
                failures: inner.breaker.config().failures,
                cool_down,
            };
            return self.degrade(checks, replay, peek, error).await;
        }
        bump(&inner.counters.redis_calls);
        let result =
            tokio::time::timeout(inner.budget, self.remote(checks, replay, peek, sent)).await;
        let error = match result {
            Ok(Ok(outcome)) => {
                if inner.breaker.success() {
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
                bump(&inner.counters.breaker_trips);
            }
        } else {
            // Redis answered: it is reachable, whatever went wrong with this request. A script
            // or data error must not switch limiting off for every key.
            bump(&inner.counters.script_errors);
            if inner.breaker.success() {
                tracing::info!(target: "tollgate_redis", "Redis answers again; circuit breaker closed");
            }
        }
        self.degrade(checks, replay, peek, error).await
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
                let may_be_free = replay && c.rule.honours_replays();
                if !c.rule.is_shadow() && !may_be_free {
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

    fn targets(&self, checks: &[Check<'_>]) -> Vec<Target> {
        checks
            .iter()
            .map(|c| Target {
                rule: c.rule.clone(),
                key: self.redis_key(c.rule, c.key),
            })
            .collect()
    }

    fn explicit_now(&self) -> Option<Nanos> {
        self.inner.explicit.then(|| self.inner.clock.now())
    }

    async fn call(&self, call: &Call<'_>) -> Result<Reply, RedisStoreError> {
        let values = self.inner.conn.invoke(&call.invocation()).await?;
        // Refunds and idempotency records report no decisions.
        let decided = if call.mode.decides() {
            call.targets
        } else {
            &[]
        };
        Reply::parse(&values, decided)
    }

    /// The whole Redis side of one decision. `replay` is given only when a rule honours it.
    async fn remote(
        &self,
        checks: &[Check<'_>],
        replay: Option<&Replay>,
        peek: bool,
        sent: Nanos,
    ) -> Result<Outcome, RedisStoreError> {
        let targets = self.targets(checks);
        let replay_key = replay.map(|r| (self.replay_key(r), r));
        let groups = if self.inner.conn.is_cluster() {
            slot_groups(&targets, replay_key.as_ref().map(|(k, _)| k.as_str()))
        } else {
            Vec::new()
        };
        if groups.len() <= 1 {
            let now = self.explicit_now();
            let call = if peek {
                Call::peek(now, &targets)
            } else {
                let replay = match &replay_key {
                    Some((key, r)) => ReplayArg::Record(key, r),
                    None => ReplayArg::None,
                };
                Call::check(now, &targets, replay)
            };
            let reply = self.call(&call).await?;
            let outcome = Outcome::new(checks, reply.decisions.into(), reply.replayed);
            if !peek {
                self.remember_denials(checks, &outcome, sent);
            }
            return Ok(outcome);
        }
        let replay = replay_key.map(|(k, r)| (k, *r));
        self.remote_cluster(checks, targets, groups, replay, peek, sent)
            .await
    }

    /// Cluster, keys on several hash slots: one call per slot, in parallel; a denial in one slot
    /// refunds what the others charged.
    ///
    /// The whole exchange runs in its own task, so that once slots are charged, the refunds are
    /// made even if the caller gives up (budget exhausted, request cancelled).
    async fn remote_cluster(
        &self,
        checks: &[Check<'_>],
        targets: Vec<Target>,
        groups: Vec<Vec<usize>>,
        replay: Option<(String, Replay)>,
        peek: bool,
        sent: Nanos,
    ) -> Result<Outcome, RedisStoreError> {
        let store = self.clone();
        let task =
            tokio::spawn(
                async move { store.cluster_exchange(targets, groups, replay, peek).await },
            );
        let (decisions, replayed) = task.await.map_err(|e| {
            RedisStoreError::Protocol(format!("the Cluster exchange task failed: {e}"))
        })??;
        let outcome = Outcome::new(checks, decisions, replayed);
        if !peek {
            self.remember_denials(checks, &outcome, sent);
        }
        Ok(outcome)
    }

    /// The Cluster exchange: take the free replay first (its record may live on another slot),
    /// then decide every slot, the rules that honour replays at no cost if one was taken; if
    /// any slot denies, refund the slots that charged and give the replay back.
    async fn cluster_exchange(
        &self,
        targets: Vec<Target>,
        groups: Vec<Vec<usize>>,
        replay: Option<(String, Replay)>,
        peek: bool,
    ) -> Result<(Decisions, bool), RedisStoreError> {
        // The replay record's own slot needs no decision call.
        let groups: Vec<Vec<usize>> = groups.into_iter().filter(|g| !g.is_empty()).collect();
        let group_targets: Vec<Vec<Target>> = groups
            .iter()
            .map(|g| g.iter().map(|&i| targets[i].clone()).collect())
            .collect();
        let now = self.explicit_now();

        let mut replayed = false;
        if let Some((key, r)) = &replay {
            replayed = self
                .call(&Call::record(Mode::TakeReplay, now, key, r))
                .await?
                .allowed;
        }
        let replay_arg = if replayed {
            ReplayArg::Taken
        } else {
            ReplayArg::None
        };
        let replies = join_all(group_targets.iter().map(|t| async move {
            let call = if peek {
                Call::peek(now, t)
            } else {
                Call::check(now, t, replay_arg)
            };
            self.call(&call).await
        }))
        .await;

        // Every rule's decision, if every slot answered.
        let mut decisions: Vec<Option<Decision>> = vec![None; targets.len()];
        for (group, reply) in groups.iter().zip(&replies) {
            if let Ok(reply) = reply {
                for (&i, d) in group.iter().zip(&reply.decisions) {
                    decisions[i] = Some(*d);
                }
            }
        }
        let decisions: Option<Decisions> = decisions.into_iter().collect();
        let allowed = decisions.as_ref().is_some_and(|d| {
            d.iter()
                .zip(&targets)
                .all(|(d, t)| d.allowed || t.rule.is_shadow())
        });
        if !peek && !allowed {
            // Denied (or a slot failed): give back what the slots that admitted have charged.
            // A slot's reply is `allowed` when none of its enforced rules denied: it then wrote
            // every rule of it that admitted, except those a free replay passed at no cost.
            let refunds = group_targets.iter().zip(&replies).filter_map(|(t, reply)| {
                let reply = reply.as_ref().ok().filter(|r| r.allowed)?;
                let charged: Vec<Target> = t
                    .iter()
                    .zip(&reply.decisions)
                    .filter(|(t, d)| d.allowed && !(replayed && t.rule.honours_replays()))
                    .map(|(t, _)| t.clone())
                    .collect();
                (!charged.is_empty()).then_some((charged, reply.now))
            });
            let refunds = join_all(refunds.map(|(charged, at)| self.refund(charged, at, now)));
            let give_back = async {
                if let (true, Some((key, r))) = (replayed, &replay) {
                    self.return_replay(key, r, now).await;
                }
            };
            futures_util::future::join(refunds, give_back).await;
        }
        let Some(decisions) = decisions else {
            let error = replies.into_iter().find_map(Result::err);
            return Err(error.unwrap_or_else(|| RedisStoreError::Protocol("lost error".into())));
        };
        if !peek && allowed && !replayed {
            if let Some((key, r)) = &replay {
                let call = Call::record(Mode::CreateReplay, now, key, r);
                if let Err(error) = self.call(&call).await {
                    // The request was charged; only a later free replay is lost.
                    if let Some(suppressed) = self.inner.warn.permit() {
                        tracing::warn!(target: "tollgate_redis", %error, suppressed, "could not record an idempotency key; a repeat will be charged");
                    }
                }
            }
        }
        Ok((decisions, replayed && allowed))
    }

    /// Reverses a charge made at `charged_at` on one slot.
    async fn refund(&self, charged: Vec<Target>, charged_at: Nanos, now: Option<Nanos>) {
        let call = Call::refund(now, &charged, charged_at);
        self.undo(
            &call,
            "could not refund a partial charge; it stays until its state expires",
        )
        .await;
    }

    /// Gives back a free replay taken for a request that another slot denied.
    async fn return_replay(&self, key: &str, replay: &Replay, now: Option<Nanos>) {
        let call = Call::record(Mode::ReturnReplay, now, key, replay);
        self.undo(&call, "could not give back a free replay of a denied request; one fewer repeat of it passes free")
            .await;
    }

    /// Runs a call that undoes part of a denied Cluster request, counting it as a refund.
    async fn undo(&self, call: &Call<'_>, failed: &'static str) {
        let counters = &self.inner.counters;
        // It runs in the exchange's own task, so it may take longer than a decision: never
        // less than the store's budget.
        let timeout = REFUND_TIMEOUT.max(self.inner.budget);
        let error = match tokio::time::timeout(timeout, self.call(call)).await {
            Ok(Ok(_)) => {
                bump(&counters.refunds);
                return;
            }
            Ok(Err(error)) => error,
            Err(_) => RedisStoreError::Timeout { budget: timeout },
        };
        bump(&counters.refund_failures);
        if let Some(suppressed) = self.inner.warn.permit() {
            tracing::warn!(target: "tollgate_redis", %error, suppressed, "{failed}");
        }
    }

    /// Decides without Redis, by policy.
    async fn degrade(
        &self,
        checks: &[Check<'_>],
        replay: Option<&Replay>,
        peek: bool,
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
        match inner.policy {
            FailurePolicy::FailClosed => {
                bump(&inner.counters.failed_closed);
                Err(error)
            }
            FailurePolicy::Fallback { .. } if inner.fallback.is_some() => {
                bump(&inner.counters.fell_back);
                let fallback = inner.fallback.as_ref().expect("checked");
                let rules: Vec<Rule> = checks.iter().map(|c| fallback.rule(c.rule)).collect();
                let local: Vec<Check<'_>> = rules
                    .iter()
                    .zip(checks)
                    .map(|(rule, c)| Check { rule, key: c.key })
                    .collect();
                let result = if peek {
                    fallback.store.peek(&local).await
                } else {
                    fallback.store.check(&local, replay).await
                };
                // The figures describe the local, scaled limits: what this instance enforces now.
                match result {
                    Ok(outcome) => Ok(outcome),
                    Err(never) => match never {},
                }
            }
            _ => {
                bump(&inner.counters.failed_open);
                Ok(open_outcome(checks))
            }
        }
    }
}

impl Fallback {
    /// `rule` with its limit and burst divided by the instance count (cached).
    fn rule(&self, rule: &Rule) -> Rule {
        if self.instances <= 1 {
            return rule.clone();
        }
        let signature = (
            rule.id(),
            *rule.quota(),
            rule.algorithm(),
            rule.cost(),
            rule.is_shadow(),
            rule.honours_replays(),
        );
        let mut rules = self.rules.lock();
        if rules.len() > 4096 {
            rules.clear();
        }
        rules
            .entry(signature)
            .or_insert_with(|| scaled_rule(rule, self.instances))
            .clone()
    }
}

/// `rule` with its limit and burst divided by `instances` (never below the rule's cost, so the
/// rule stays valid), or `rule` itself if that cannot be built.
pub(crate) fn scaled_rule(rule: &Rule, instances: u32) -> Rule {
    let quota = rule.quota();
    let n = u64::from(instances.max(1));
    let cost = rule.cost();
    let limit = (quota.limit() / n).max(1);
    let burst = (quota.burst() / n).max(1);
    let (limit, burst) = match rule.algorithm() {
        Algorithm::Gcra => (limit, burst.max(cost)),
        _ => (limit.max(cost), burst),
    };
    Quota::new(limit, quota.period())
        .and_then(|q| q.with_burst(burst))
        .ok()
        .and_then(|q| {
            Rule::builder(rule.name(), q)
                .algorithm(rule.algorithm())
                .cost(cost)
                .shadow(rule.is_shadow())
                .honour_replays(rule.honours_replays())
                .build()
                .ok()
        })
        .unwrap_or_else(|| rule.clone())
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
        decisions: checks.iter().map(|c| not_consulted(c.rule)).collect(),
    }
}

/// Indices of the targets per hash slot, in order of first appearance; the replay key's slot
/// counts as a slot of its own when no target shares it.
fn slot_groups(targets: &[Target], replay_key: Option<&str>) -> Vec<Vec<usize>> {
    let mut slots: Vec<Slot> = Vec::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let slot = Slot::for_key(&t.key);
        match slots.iter().position(|s| *s == slot) {
            Some(g) => groups[g].push(i),
            None => {
                slots.push(slot);
                groups.push(vec![i]);
            }
        }
    }
    if let Some(key) = replay_key {
        if !slots.contains(&Slot::for_key(key)) {
            groups.push(Vec::new());
        }
    }
    groups
}

impl Store for RedisStore {
    type Error = RedisStoreError;
    const SHARED: bool = true;

    fn check(
        &self,
        checks: &[Check<'_>],
        replay: Option<&Replay>,
    ) -> impl std::future::Future<Output = Result<Outcome, Self::Error>> + Send {
        self.decide(checks, replay, false)
    }

    fn peek(
        &self,
        checks: &[Check<'_>],
    ) -> impl std::future::Future<Output = Result<Outcome, Self::Error>> + Send {
        self.decide(checks, None, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_rules_stay_valid() {
        let rule = Rule::builder("r", Quota::per_minute(600).unwrap())
            .build()
            .unwrap();
        let scaled = scaled_rule(&rule, 4);
        assert_eq!(scaled.quota().limit(), 150);
        assert_eq!(scaled.quota().burst(), 150);
        assert_eq!(scaled.quota().period(), rule.quota().period());
        assert_eq!(scaled.name(), "r");
        let costly = Rule::builder("c", Quota::per_second(10).unwrap())
            .algorithm(Algorithm::FixedWindow)
            .cost(5)
            .build()
            .unwrap();
        assert_eq!(scaled_rule(&costly, 100).quota().limit(), 5);
        assert_eq!(scaled_rule(&rule, 1).quota().limit(), 600);
    }
}
