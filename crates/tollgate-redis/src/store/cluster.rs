//! Redis Cluster: a request whose keys live on several hash slots.
//!
//! This module owns the per-slot exchange (one script call per slot, in parallel, in a task of
//! its own) and what undoes it when a slot denies: the refunds of the slots that charged, and
//! the free replay given back. Keys on one slot never come here: the request path
//! ([`super`]) makes them one atomic call.

use std::time::Duration;

use futures_util::future::join_all;
use redis::cluster_routing::Slot;
use tollgate_core::{Check, Decision, Decisions, Nanos, Outcome, Replay};

use super::RedisStore;
use crate::error::RedisStoreError;
use crate::script::{Call, Mode, ReplayArg, Target};
use crate::stats::bump;

/// How long a Cluster refund may take (it runs on, past the caller's budget).
const REFUND_TIMEOUT: Duration = Duration::from_secs(1);

impl RedisStore {
    /// Cluster, keys on several hash slots: one call per slot, in parallel; a denial in one slot
    /// refunds what the others charged.
    ///
    /// The whole exchange runs in its own task, so that once slots are charged, the refunds are
    /// made even if the caller gives up (budget exhausted, request cancelled).
    pub(super) async fn remote_cluster(
        &self,
        checks: &[Check<'_>],
        targets: Vec<Target>,
        groups: Vec<Vec<usize>>,
        replay: Option<(String, Replay)>,
        mode: Mode,
        sent: Nanos,
    ) -> Result<Outcome, RedisStoreError> {
        let store = self.clone();
        let task =
            tokio::spawn(
                async move { store.cluster_exchange(targets, groups, replay, mode).await },
            );
        let (decisions, replayed) = task.await.map_err(|e| {
            RedisStoreError::Protocol(format!("the Cluster exchange task failed: {e}"))
        })??;
        Ok(self.outcome(checks, decisions, replayed, mode, sent))
    }

    /// The Cluster exchange: take the free replay first (its record may live on another slot),
    /// then decide every slot, the rules that honour replays at no cost if one was taken; if
    /// any slot denies, refund the slots that charged and give the replay back.
    async fn cluster_exchange(
        &self,
        targets: Vec<Target>,
        groups: Vec<Vec<usize>>,
        replay: Option<(String, Replay)>,
        mode: Mode,
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
            replayed = self.call(Call::take_replay(now, key, r)).await?.allowed;
        }
        let replay_arg = if replayed {
            ReplayArg::Taken
        } else {
            ReplayArg::None
        };
        let replies = join_all(
            group_targets
                .iter()
                .map(|t| self.call(Call::decide(mode, now, t, replay_arg))),
        )
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
        if mode == Mode::Check && !allowed {
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
        if mode == Mode::Check && allowed && !replayed {
            if let Some((key, r)) = &replay {
                if let Err(error) = self.call(Call::create_replay(now, key, r)).await {
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
        self.undo(
            Call::refund(now, &charged, charged_at),
            "could not refund a partial charge; it stays until its state expires",
        )
        .await;
    }

    /// Gives back a free replay taken for a request that another slot denied.
    async fn return_replay(&self, key: &str, replay: &Replay, now: Option<Nanos>) {
        self.undo(Call::return_replay(now, key, replay), "could not give back a free replay of a denied request; one fewer repeat of it passes free")
            .await;
    }

    /// Runs a call that undoes part of a denied Cluster request, counting it as a refund.
    pub(super) async fn undo(&self, call: Call<'_>, failed: &'static str) {
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
}

/// Indices of the targets per hash slot, in order of first appearance; the replay key's slot
/// counts as a slot of its own when no target shares it.
pub(super) fn slot_groups(targets: &[Target], replay_key: Option<&str>) -> Vec<Vec<usize>> {
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
