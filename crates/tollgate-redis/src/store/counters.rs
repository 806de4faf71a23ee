//! Fixed-window counters ([`RedisStoreBuilder::fixed_window_counters`](super::RedisStoreBuilder::fixed_window_counters)):
//! a fixed window decided by plain `INCRBY`, without the script.
//!
//! This module owns the counter protocol (one pipeline per decision: `SET <key> 0 NX PX <ttl>`
//! then `INCRBY <key> <cost>` per rule, `GET` where nothing is charged), the refund of a denied
//! request (`DECRBY` + `PEXPIRE`, one more round trip, only on denial), the repair of a counter
//! key that does not hold an integer, and the exchange of a request that mixes counters with
//! rules the script decides (the same steps as the Cluster exchange: free replay first, every
//! group in parallel, refunds of what was charged if anything denies).
//!
//! Each window is its own key, `<rule key>:<window index>` (the window index is `now / period`,
//! windows aligned on multiples of the period since the epoch as the core's `FixedWindow`), a
//! shape the script never writes: the two modes never read each other's state.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{join, join_all};
use redis::cluster_routing::Slot;
use redis::Value;
use tollgate_core::{
    saturating_nanos, Algorithm, Check, Decision, Decisions, Nanos, Outcome, Replay, Rule,
};

use super::RedisStore;
use crate::error::RedisStoreError;
use crate::script::{Call, Mode, ReplayArg, Reply, Target};
use crate::stats::bump;

/// How long a refund may take (it runs on, past the caller's budget), at least.
const REFUND_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a window's key outlives its window, on top of the refund timeout: clock skew
/// between instances (an instance whose clock is behind still counts in the window another
/// instance has left) and the refund of a charge made at the very end of a window.
const TTL_SLACK: Duration = Duration::from_secs(1);

/// Counts above this are not restored by a repair (see [`repair`](RedisStore::repair)): no
/// limit the core accepts comes near it, so such a value is corruption, not a count.
const MAX_RESTORED_COUNT: i64 = 1 << 53;

const NANOS_PER_MILLI: u64 = 1_000_000;

/// One fixed-window rule of a request, in counter mode: the key of the window `now` is in.
#[derive(Debug, Clone)]
struct Counter {
    /// Index of the check in the request.
    index: usize,
    /// `<rule key>:<window index>`.
    key: String,
    rule: Rule,
    /// Time until the window ends, in ns.
    reset_after: u64,
    /// The key's expiry, in ms: the window's end plus the slack.
    ttl_ms: u64,
}

impl Counter {
    /// Charges this counter in `pipe`: `SET NX PX` first, so that a new key has its expiry
    /// from the start, then `INCRBY` (its reply, the count after the charge, is the one kept).
    fn push_charge(&self, pipe: &mut redis::Pipeline) {
        pipe.cmd("SET")
            .arg(&self.key)
            .arg(0)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms)
            .ignore();
        pipe.cmd("INCRBY").arg(&self.key).arg(self.rule.cost());
    }
    fn new(index: usize, target: &Target, now: Nanos, slack: Duration) -> Self {
        let period = saturating_nanos(target.rule.quota().period());
        let window = now / period;
        let window_end = (window + 1) * period;
        let reset_after = window_end - now;
        let slack_ms = u64::try_from(slack.as_millis()).unwrap_or(u64::MAX);
        Self {
            index,
            key: {
                // One allocation, sized for `:` and up to 20 digits (`format!` grows its buffer).
                let mut key = String::with_capacity(target.key.len() + 21);
                key.push_str(&target.key);
                let _ = write!(key, ":{window}");
                key
            },
            rule: target.rule.clone(),
            reset_after,
            ttl_ms: reset_after
                .div_ceil(NANOS_PER_MILLI)
                .saturating_add(slack_ms),
        }
    }

    fn limit(&self) -> u64 {
        self.rule.quota().limit()
    }

    /// The decision of a charge that brought the count to `count`.
    fn charged(&self, count: u64) -> Decision {
        let limit = self.limit();
        if count <= limit {
            allow(limit, limit - count, self.reset_after)
        } else {
            // What was used before this request's charge, as the core reports a denial.
            let before = count - self.rule.cost();
            deny(limit, limit.saturating_sub(before), self.reset_after)
        }
    }

    /// The decision of a look that charges nothing at a count of `count`: a peek (would the
    /// rule's cost pass?) or a free replay (cost 0).
    fn looked(&self, count: u64, cost: u64) -> Decision {
        let limit = self.limit();
        if count.saturating_add(cost) <= limit {
            allow(limit, limit - count, self.reset_after)
        } else {
            deny(limit, limit.saturating_sub(count), self.reset_after)
        }
    }
}

fn allow(limit: u64, remaining: u64, reset_after: u64) -> Decision {
    Decision {
        allowed: true,
        limit,
        remaining,
        reset_after: Duration::from_nanos(reset_after),
        retry_after: None,
    }
}

/// A fixed window denies until it ends, which is never now (the window holds `now`).
fn deny(limit: u64, remaining: u64, reset_after: u64) -> Decision {
    Decision {
        allowed: false,
        limit,
        remaining,
        reset_after: Duration::from_nanos(reset_after),
        retry_after: Some(Duration::from_nanos(reset_after.max(1))),
    }
}

/// A counter's value as a count: absent is 0; anything that is not an integer (another type,
/// garbage) is fresh state, as the script treats state it cannot read; a negative count (a
/// refund that raced the key's loss) is 0.
fn count_of(value: &Value) -> u64 {
    let n = match value {
        Value::Int(n) => *n,
        Value::BulkString(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(0),
        _ => 0,
    };
    u64::try_from(n).unwrap_or(0)
}

/// A counter group's answer.
struct CounterReply {
    /// One per counter of the group, in order.
    decisions: Vec<Decision>,
    /// Whether each counter was charged (its `INCRBY` ran), in order.
    charged: Vec<bool>,
}

/// What a script group or a counter group answered.
enum Answer {
    Script(Result<Reply, RedisStoreError>),
    Counters(Result<CounterReply, RedisStoreError>),
}

/// A future run in the caller's task until it completes; dropped after its first poll and
/// before it completes, it finishes in a task of its own (spawned only then: a task per request
/// costs far more than the exchange itself, mostly in moving the future into it). Dropped before
/// its first poll, it never starts, so nothing was sent and nothing is owed.
struct FinishOnDrop<T: Send + 'static> {
    exchange: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
    started: bool,
}

impl<T: Send + 'static> FinishOnDrop<T> {
    /// Takes the future boxed already: a future is moved by copying all of it, and this one
    /// is large, so it is built in its box once and never moved again.
    fn new(exchange: Pin<Box<dyn Future<Output = T> + Send>>) -> Self {
        Self {
            exchange: Some(exchange),
            started: false,
        }
    }
}

impl<T: Send + 'static> Future for FinishOnDrop<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.started = true;
        let exchange = self
            .exchange
            .as_mut()
            .expect("FinishOnDrop polled after completion");
        let output = std::task::ready!(exchange.as_mut().poll(cx));
        self.exchange = None;
        Poll::Ready(output)
    }
}

impl<T: Send + 'static> Drop for FinishOnDrop<T> {
    fn drop(&mut self) {
        if let (true, Some(exchange)) = (self.started, self.exchange.take()) {
            // Without a runtime (it is shutting down) a spawned task would be dropped anyway.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                drop(runtime.spawn(exchange));
            }
        }
    }
}

/// Indices of `keys` per hash slot, in order of first appearance.
fn by_slot<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<Vec<usize>> {
    let mut slots: Vec<Slot> = Vec::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, key) in keys.enumerate() {
        let slot = Slot::for_key(key);
        match slots.iter().position(|s| *s == slot) {
            Some(g) => groups[g].push(i),
            None => {
                slots.push(slot);
                groups.push(vec![i]);
            }
        }
    }
    groups
}

impl RedisStore {
    /// How long a window's key outlives its window.
    fn counter_slack(&self) -> Duration {
        self.refund_timeout() + TTL_SLACK
    }

    fn refund_timeout(&self) -> Duration {
        REFUND_TIMEOUT.max(self.inner.budget)
    }

    /// A request with at least one fixed-window rule, in counter mode. Its exchange runs in the
    /// caller's task and, if the caller gives up once it has started (budget exhausted, request
    /// cancelled), finishes in a task of its own, so that charged counters are still refunded.
    pub(super) async fn remote_counters(
        &self,
        checks: &[Check<'_>],
        targets: Vec<Target>,
        replay: Option<(String, Replay)>,
        mode: Mode,
        sent: Nanos,
    ) -> Result<Outcome, RedisStoreError> {
        let store = self.clone();
        let (decisions, replayed) = FinishOnDrop::new(Box::pin(async move {
            store.counter_exchange(targets, replay, mode, sent).await
        }))
        .await?;
        Ok(self.outcome(checks, decisions, replayed, mode, sent))
    }

    /// The counters' exchange: take the free replay first (if any rule honours it), then decide
    /// the counters (one pipeline per hash slot) and the other rules (one script call per hash
    /// slot) in parallel; refund what was charged if the request is denied, and every counter
    /// a shadow rule charged past its limit.
    async fn counter_exchange(
        &self,
        targets: Vec<Target>,
        replay: Option<(String, Replay)>,
        mode: Mode,
        now: Nanos,
    ) -> Result<(Decisions, bool), RedisStoreError> {
        let cluster = self.inner.conn.is_cluster();
        if !cluster
            && replay.is_none()
            && targets
                .iter()
                .all(|t| t.rule.algorithm() == Algorithm::FixedWindow)
        {
            return self.counters_only(&targets, mode, now).await;
        }
        let slack = self.counter_slack();
        let (windows, scripted): (Vec<usize>, Vec<usize>) = (0..targets.len())
            .partition(|&i| targets[i].rule.algorithm() == Algorithm::FixedWindow);
        let counters: Vec<Counter> = windows
            .iter()
            .map(|&i| Counter::new(i, &targets[i], now, slack))
            .collect();
        let counter_groups: Vec<Vec<Counter>> = if cluster {
            by_slot(counters.iter().map(|c| c.key.as_str()))
                .into_iter()
                .map(|g| g.into_iter().map(|i| counters[i].clone()).collect())
                .collect()
        } else {
            vec![counters]
        };
        let script_groups: Vec<(Vec<usize>, Vec<Target>)> = if scripted.is_empty() {
            Vec::new()
        } else if cluster {
            by_slot(scripted.iter().map(|&i| targets[i].key.as_str()))
                .into_iter()
                .map(|g| {
                    let indices: Vec<usize> = g.into_iter().map(|j| scripted[j]).collect();
                    let group = indices.iter().map(|&i| targets[i].clone()).collect();
                    (indices, group)
                })
                .collect()
        } else {
            let group = scripted.iter().map(|&i| targets[i].clone()).collect();
            vec![(scripted, group)]
        };
        let script_now = self.explicit_now();

        let mut replayed = false;
        if let Some((key, r)) = &replay {
            // Boxed, as every path most requests do not take: the exchange's future is as large
            // as its largest step, and every request moves it.
            replayed = Box::pin(self.call(Call::take_replay(script_now, key, r)))
                .await?
                .allowed;
        }
        let replay_arg = if replayed {
            ReplayArg::Taken
        } else {
            ReplayArg::None
        };
        let (script_replies, counter_replies) = join(
            join_all(
                script_groups
                    .iter()
                    .map(|(_, t)| self.call(Call::decide(mode, script_now, t, replay_arg))),
            ),
            join_all(
                counter_groups
                    .iter()
                    .map(|g| self.counters_decide(g, mode, replayed)),
            ),
        )
        .await;
        let answers: Vec<Answer> = script_replies
            .into_iter()
            .map(Answer::Script)
            .chain(counter_replies.into_iter().map(Answer::Counters))
            .collect();

        // Every rule's decision, if every group answered.
        let mut decisions: Vec<Option<Decision>> = vec![None; targets.len()];
        let script_count = script_groups.len();
        for (g, answer) in answers.iter().enumerate() {
            match answer {
                Answer::Script(Ok(reply)) => {
                    for (&i, d) in script_groups[g].0.iter().zip(&reply.decisions) {
                        decisions[i] = Some(*d);
                    }
                }
                Answer::Counters(Ok(reply)) => {
                    for (c, d) in counter_groups[g - script_count]
                        .iter()
                        .zip(&reply.decisions)
                    {
                        decisions[c.index] = Some(*d);
                    }
                }
                _ => {}
            }
        }
        let decisions: Option<Decisions> = decisions.into_iter().collect();
        let allowed = decisions.as_ref().is_some_and(|d| {
            d.iter()
                .zip(&targets)
                .all(|(d, t)| d.allowed || t.rule.is_shadow())
        });

        if mode == Mode::Check {
            // Counters: give back every charge of a denied request, and a shadow rule's charge
            // past its limit (a shadow rule is charged only when it admits).
            let mut counter_refunds: Vec<(String, u64, u64)> = Vec::new();
            // Scripts: a denied request's slots that admitted reverse their charge (a slot's
            // reply is `allowed` when none of its enforced rules denied: it then wrote every
            // rule of it that admitted, except those a free replay passed at no cost).
            let mut script_refunds: Vec<(Vec<Target>, Nanos)> = Vec::new();
            for (g, answer) in answers.iter().enumerate() {
                match answer {
                    Answer::Counters(Ok(reply)) => {
                        let group = &counter_groups[g - script_count];
                        for ((c, d), &charged) in
                            group.iter().zip(&reply.decisions).zip(&reply.charged)
                        {
                            if charged && (!allowed || !d.allowed) {
                                counter_refunds.push((c.key.clone(), c.rule.cost(), c.ttl_ms));
                            }
                        }
                    }
                    Answer::Script(Ok(reply)) if !allowed && reply.allowed => {
                        let charged: Vec<Target> = script_groups[g]
                            .1
                            .iter()
                            .zip(&reply.decisions)
                            .filter(|(t, d)| d.allowed && !(replayed && t.rule.honours_replays()))
                            .map(|(t, _)| t.clone())
                            .collect();
                        if !charged.is_empty() {
                            script_refunds.push((charged, reply.now));
                        }
                    }
                    _ => {}
                }
            }
            let counters = async {
                if !counter_refunds.is_empty() {
                    self.refund_counters(counter_refunds).await;
                }
            };
            let scripts = join_all(script_refunds.iter().map(|(charged, at)| {
                self.undo(
                    Call::refund(script_now, charged, *at),
                    "could not refund a partial charge; it stays until its state expires",
                )
            }));
            let give_back = async {
                if let (true, false, Some((key, r))) = (replayed, allowed, &replay) {
                    self.undo(Call::return_replay(script_now, key, r), "could not give back a free replay of a denied request; one fewer repeat of it passes free").await;
                }
            };
            Box::pin(join(join(counters, scripts), give_back)).await;
        }
        let Some(decisions) = decisions else {
            let error = answers.into_iter().find_map(|a| match a {
                Answer::Script(Err(e)) | Answer::Counters(Err(e)) => Some(e),
                _ => None,
            });
            return Err(error.unwrap_or_else(|| RedisStoreError::Protocol("lost error".into())));
        };
        if mode == Mode::Check && allowed && !replayed {
            if let Some((key, r)) = &replay {
                if let Err(error) =
                    Box::pin(self.call(Call::create_replay(script_now, key, r))).await
                {
                    // The request was charged; only a later free replay is lost.
                    if let Some(suppressed) = self.inner.warn.permit() {
                        tracing::warn!(target: "tollgate_redis", %error, suppressed, "could not record an idempotency key; a repeat will be charged");
                    }
                }
            }
        }
        Ok((decisions, replayed && allowed))
    }

    /// The common case, on one Redis: every rule a fixed window and no replay. The steps of
    /// [`counter_exchange`](Self::counter_exchange) with a single group: one pipeline, then the
    /// refunds of a denied request (and of a shadow rule charged past its limit).
    async fn counters_only(
        &self,
        targets: &[Target],
        mode: Mode,
        now: Nanos,
    ) -> Result<(Decisions, bool), RedisStoreError> {
        let slack = self.counter_slack();
        let counters: Vec<Counter> = targets
            .iter()
            .enumerate()
            .map(|(i, t)| Counter::new(i, t, now, slack))
            .collect();
        let reply = self.counters_decide(&counters, mode, false).await?;
        let allowed = reply
            .decisions
            .iter()
            .zip(targets)
            .all(|(d, t)| d.allowed || t.rule.is_shadow());
        if mode == Mode::Check {
            let refunds: Vec<(String, u64, u64)> = counters
                .iter()
                .zip(&reply.decisions)
                .zip(&reply.charged)
                .filter(|((_, d), &charged)| charged && (!allowed || !d.allowed))
                .map(|((c, _), _)| (c.key.clone(), c.rule.cost(), c.ttl_ms))
                .collect();
            if !refunds.is_empty() {
                Box::pin(self.refund_counters(refunds)).await;
            }
        }
        Ok((reply.decisions.into_iter().collect(), false))
    }

    /// One counter group (one hash slot, or every counter on one Redis): `Check` charges each
    /// counter (`SET NX PX` so a new key has its expiry from the start, then `INCRBY`), except
    /// those a taken free replay passes, which are only read; `Peek` reads them all.
    async fn counters_decide(
        &self,
        group: &[Counter],
        mode: Mode,
        replayed: bool,
    ) -> Result<CounterReply, RedisStoreError> {
        let charges: Vec<bool> = group
            .iter()
            .map(|c| mode == Mode::Check && !(replayed && c.rule.honours_replays()))
            .collect();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (c, &charge) in group.iter().zip(&charges) {
            if charge {
                c.push_charge(&mut pipe);
            } else {
                pipe.cmd("GET").arg(&c.key);
            }
        }
        let values = self.inner.conn.pipeline(&pipe).await?;
        if values.len() != group.len() {
            return Err(RedisStoreError::Protocol(format!(
                "{} replies to a pipeline of {} counters",
                values.len(),
                group.len()
            )));
        }
        // Counts after the charge; keys whose INCRBY failed (not an integer) are repaired.
        let mut counts: Vec<u64> = vec![0; group.len()];
        let mut broken: Vec<usize> = Vec::new();
        let mut negative: Vec<(usize, i64)> = Vec::new();
        for (i, ((c, &charge), value)) in group.iter().zip(&charges).zip(&values).enumerate() {
            if !charge {
                counts[i] = count_of(value);
                continue;
            }
            match value {
                Value::Int(n) => {
                    let cost = c.rule.cost() as i64;
                    if *n < cost {
                        // The key held a negative count: not state this store writes
                        // (at most a refund racing the key's loss). Counted from zero.
                        negative.push((i, cost - n));
                        counts[i] = c.rule.cost();
                    } else {
                        counts[i] = *n as u64;
                    }
                }
                _ => broken.push(i),
            }
        }
        if !negative.is_empty() {
            let mut pipe = redis::pipe();
            for &(i, up) in &negative {
                pipe.cmd("INCRBY").arg(&group[i].key).arg(up).ignore();
            }
            Box::pin(self.inner.conn.pipeline(&pipe)).await?;
        }
        if !broken.is_empty() {
            for (i, count) in Box::pin(self.repair(group, &broken)).await? {
                counts[i] = count;
            }
        }
        let decisions = group
            .iter()
            .zip(&charges)
            .zip(&counts)
            .map(|((c, &charge), &count)| {
                if charge {
                    c.charged(count)
                } else if mode == Mode::Peek {
                    c.looked(count, c.rule.cost())
                } else {
                    c.looked(count, 0)
                }
            })
            .collect();
        Ok(CounterReply {
            decisions,
            charged: charges,
        })
    }

    /// Counter keys that hold something other than an integer (garbage, another type): fresh
    /// state, as the script treats state it cannot read. `GETDEL` takes the value away, then
    /// the key is charged from zero; if `GETDEL` returned a count after all (another request
    /// repaired the key first and charged it), that count is added back, so no charge is
    /// lost. A key of another type (`GETDEL` refuses it) is deleted with `DEL`. Returns the
    /// count of each repaired counter.
    async fn repair(
        &self,
        group: &[Counter],
        broken: &[usize],
    ) -> Result<Vec<(usize, u64)>, RedisStoreError> {
        let mut done = Vec::with_capacity(broken.len());
        let mut pending: Vec<usize> = broken.to_vec();
        let mut restores: Vec<(usize, i64)> = Vec::new();
        for delete in ["GETDEL", "DEL"] {
            if pending.is_empty() {
                break;
            }
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &i in &pending {
                let c = &group[i];
                pipe.cmd(delete).arg(&c.key);
                c.push_charge(&mut pipe);
            }
            let values = self.inner.conn.pipeline(&pipe).await?;
            let mut again = Vec::new();
            for (&i, pair) in pending.iter().zip(values.chunks(2)) {
                let restored = match (delete, pair.first()) {
                    ("GETDEL", Some(Value::BulkString(bytes))) => std::str::from_utf8(bytes)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .filter(|v| (1..=MAX_RESTORED_COUNT).contains(v))
                        .unwrap_or(0),
                    _ => 0,
                };
                match pair.get(1) {
                    Some(Value::Int(n)) if *n >= 0 => {
                        if restored > 0 {
                            restores.push((i, restored));
                        }
                        done.push((i, (*n + restored) as u64));
                    }
                    _ => again.push(i),
                }
            }
            pending = again;
        }
        if let Some(&i) = pending.first() {
            return Err(RedisStoreError::Protocol(format!(
                "the fixed-window counter {:?} is written with something other than an integer as fast as it is repaired",
                group[i].key
            )));
        }
        if !restores.is_empty() {
            let mut pipe = redis::pipe();
            for &(i, v) in &restores {
                pipe.cmd("INCRBY").arg(&group[i].key).arg(v).ignore();
            }
            self.inner.conn.pipeline(&pipe).await?;
        }
        Ok(done)
    }

    /// Gives back charges of `(key, cost, ttl ms)`, in one pipeline per hash slot: `DECRBY`,
    /// and `PEXPIRE` so that a key the refund creates (the window's key expired or was evicted
    /// in between) expires too. A refund that leaves a negative count found the charge gone
    /// with its key: it is undone (`INCRBY`), so a count never stays below zero.
    async fn refund_counters(&self, refunds: Vec<(String, u64, u64)>) {
        let groups = if self.inner.conn.is_cluster() {
            by_slot(refunds.iter().map(|(k, _, _)| k.as_str()))
        } else {
            vec![(0..refunds.len()).collect()]
        };
        let timeout = self.refund_timeout();
        let counters = &self.inner.counters;
        let refunds = &refunds;
        join_all(groups.iter().map(|group| async move {
            let run = async {
                let mut pipe = redis::pipe();
                for &i in group {
                    let (key, cost, ttl) = &refunds[i];
                    pipe.cmd("DECRBY").arg(key).arg(*cost);
                    pipe.cmd("PEXPIRE").arg(key).arg(*ttl).ignore();
                }
                let left = self.inner.conn.pipeline(&pipe).await?;
                if left.len() != group.len() {
                    return Err(RedisStoreError::Protocol(format!(
                        "{} replies to a refund of {} counters",
                        left.len(),
                        group.len()
                    )));
                }
                let mut undo = redis::pipe();
                let mut any = false;
                for (&i, left) in group.iter().zip(&left) {
                    if matches!(left, Value::Int(n) if *n < 0) {
                        let (key, cost, _) = &refunds[i];
                        undo.cmd("INCRBY").arg(key).arg(*cost).ignore();
                        any = true;
                    }
                }
                if any {
                    self.inner.conn.pipeline(&undo).await?;
                }
                Ok::<(), RedisStoreError>(())
            };
            let error = match tokio::time::timeout(timeout, run).await {
                Ok(Ok(())) => {
                    bump(&counters.refunds);
                    return;
                }
                Ok(Err(error)) => error,
                Err(_) => RedisStoreError::Timeout { budget: timeout },
            };
            bump(&counters.refund_failures);
            if let Some(suppressed) = self.inner.warn.permit() {
                tracing::warn!(target: "tollgate_redis", %error, suppressed, "could not refund a denied request's fixed-window counters; the charge stays until the window ends");
            }
        }))
        .await;
    }
}
