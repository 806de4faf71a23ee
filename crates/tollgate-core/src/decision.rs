//! What a limiter answers: one [`Decision`] per rule, gathered into an [`Outcome`] per request.

use std::time::Duration;

use smallvec::SmallVec;

use crate::store::Check;

/// One rule's answer for one request.
///
/// The figures describe the state *after* this request: `remaining` already counts it when it was
/// admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the rule admits the request.
    pub allowed: bool,
    /// The most requests the rule admits at once: the limit per window, or the GCRA burst.
    pub limit: u64,
    /// Requests (of cost 1) that would still be admitted right now.
    pub remaining: u64,
    /// Time until the window resets (window algorithms) or the quota is whole again (GCRA,
    /// sliding log). Zero when nothing is in use.
    pub reset_after: Duration,
    /// Denied only: the exact earliest time from now at which the same request would be admitted.
    /// Never zero. A client that waits exactly this long is admitted (absent other traffic).
    pub retry_after: Option<Duration>,
}

impl Decision {
    pub(crate) fn allow(limit: u64, remaining: u64, reset_after: u64) -> Self {
        Self {
            allowed: true,
            limit,
            remaining,
            reset_after: Duration::from_nanos(reset_after),
            retry_after: None,
        }
    }

    pub(crate) fn deny(limit: u64, remaining: u64, reset_after: u64, retry_after: u64) -> Self {
        debug_assert!(
            retry_after > 0,
            "a denial must name a wait longer than zero"
        );
        Self {
            allowed: false,
            limit,
            remaining,
            reset_after: Duration::from_nanos(reset_after),
            retry_after: Some(Duration::from_nanos(retry_after.max(1))),
        }
    }
}

/// Decisions of one request, one per [`Check`], in the order the checks were given.
pub type Decisions = SmallVec<[Decision; 4]>;

/// A store's answer for one request: every rule's decision and the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the request may pass: no enforced rule denied it.
    pub allowed: bool,
    /// Index (into the checks and `decisions`) of the decision whose figures a client should see:
    /// the most restrictive enforced rule. `None` only when no enforced rule applied.
    pub binding: Option<usize>,
    /// The request repeated an idempotency key already charged and was admitted as a free
    /// replay: the rules that [honour replays](crate::Rule::honours_replays) did not charge it.
    /// Never set on a denied request.
    pub replayed: bool,
    /// Decided without the store's own state: a shared store's failure policy answered (a
    /// Redis store failing open, or deciding on its local fallback). Never set by the memory
    /// store.
    pub degraded: bool,
    /// One decision per check, in order.
    pub decisions: Decisions,
}

impl Outcome {
    /// Gathers decisions into an outcome. Every store builds its outcome here, so "most
    /// restrictive" means the same thing everywhere.
    ///
    /// Denied: the binding decision is the enforced denial with the longest `retry_after`, since
    /// the request passes only once every rule admits it (ties go to the later rule). Allowed:
    /// the enforced decision with the fewest `remaining`, ties going to the longer
    /// `reset_after`, then to the earlier rule. Shadow rules never bind.
    pub fn new(checks: &[Check<'_>], decisions: Decisions, replayed: bool) -> Self {
        let mut outcome = Self {
            allowed: false,
            binding: None,
            replayed,
            degraded: false,
            decisions,
        };
        outcome.settle(checks);
        outcome
    }

    /// No decisions yet: [`settle`](Self::settle) once they are in.
    #[inline]
    pub(crate) fn empty(replayed: bool) -> Self {
        Self {
            allowed: false,
            binding: None,
            replayed,
            degraded: false,
            decisions: Decisions::new(),
        }
    }

    /// [`new`](Self::new) in place: sets `allowed` and `binding` from `decisions`. An outcome
    /// is a few hundred bytes, so the memory store builds it where it returns it.
    #[inline]
    pub(crate) fn settle(&mut self, checks: &[Check<'_>]) {
        debug_assert_eq!(checks.len(), self.decisions.len());
        let enforced = || {
            checks
                .iter()
                .zip(&self.decisions)
                .enumerate()
                .filter(|(_, (c, _))| !c.rule.is_shadow())
                .map(|(i, (_, d))| (i, d))
        };
        let allowed = enforced().all(|(_, d)| d.allowed);
        let binding = if allowed {
            enforced()
                .min_by(|(_, a), (_, b)| {
                    a.remaining
                        .cmp(&b.remaining)
                        .then(b.reset_after.cmp(&a.reset_after))
                })
                .map(|(i, _)| i)
        } else {
            enforced()
                .filter(|(_, d)| !d.allowed)
                .max_by_key(|(_, d)| d.retry_after)
                .map(|(i, _)| i)
        };
        self.allowed = allowed;
        self.binding = binding;
        // A replay that another rule denied took no free replay.
        self.replayed &= allowed;
    }

    /// The binding decision, if any rule applied.
    pub fn binding_decision(&self) -> Option<&Decision> {
        self.binding.map(|i| &self.decisions[i])
    }

    /// Denied only: how long until the request would pass.
    pub fn retry_after(&self) -> Option<Duration> {
        self.binding_decision().and_then(|d| d.retry_after)
    }
}
