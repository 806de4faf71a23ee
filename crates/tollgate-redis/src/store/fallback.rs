//! The local store of [`FailurePolicy::Fallback`](crate::FailurePolicy::Fallback): decisions
//! made in this process while Redis cannot make them.
//!
//! This module owns the memory store it decides with and the scaled rules: each limit divided by
//! the expected number of instances, so that together they admit about what Redis would.

use std::collections::HashMap;

use parking_lot::Mutex;
use tollgate_core::{Algorithm, Check, MemoryStore, Outcome, Quota, Replay, Rule, Store};

use super::LocalClock;
use crate::script::Mode;

/// The local store used by [`FailurePolicy::Fallback`](crate::FailurePolicy::Fallback), and
/// its scaled rules.
pub(super) struct Fallback {
    store: MemoryStore<LocalClock>,
    instances: u32,
    rules: Mutex<HashMap<RuleSignature, Rule>>,
}

type RuleSignature = (u64, Quota, Algorithm, u64, bool, bool);

impl Fallback {
    /// A fallback for `instances` instances (at least one), on `clock`. Inside a Tokio runtime,
    /// its store sweeps itself in the background.
    pub(super) fn new(clock: LocalClock, instances: u32) -> Self {
        Self {
            store: MemoryStore::builder().clock(clock).build(),
            instances: instances.max(1),
            rules: Mutex::new(HashMap::new()),
        }
    }

    /// Decides `checks` locally in `mode`, against the scaled rules. The figures describe the
    /// local, scaled limits: what this instance enforces now.
    pub(super) async fn decide(
        &self,
        checks: &[Check<'_>],
        replay: Option<&Replay>,
        mode: Mode,
    ) -> Outcome {
        let rules: Vec<Rule> = checks.iter().map(|c| self.rule(c.rule)).collect();
        let local: Vec<Check<'_>> = rules
            .iter()
            .zip(checks)
            .map(|(rule, c)| Check { rule, key: c.key })
            .collect();
        let result = match mode {
            Mode::Peek => self.store.peek(&local).await,
            _ => self.store.check(&local, replay).await,
        };
        match result {
            Ok(outcome) => outcome,
            Err(never) => match never {},
        }
    }

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
fn scaled_rule(rule: &Rule, instances: u32) -> Rule {
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
