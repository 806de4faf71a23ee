//! Limits charged by the response ([`Limit::charge_on`](crate::Limit::charge_on)): decided
//! before the request runs by a peek, which charges nothing; held by a count of the requests
//! in flight, so that no more run at once than the limit has left; charged once the response
//! shows a status that counts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::StatusCode;
use smallvec::SmallVec;
use tollgate_core::{Decision, Outcome, Store};

use super::plan::Plan;
use super::Limiter;
use crate::metrics::StoreOp;

/// What a request refused because its place is taken by requests in flight is told to wait:
/// about the time one of them takes to answer.
const IN_FLIGHT_RETRY: Duration = Duration::from_secs(1);

/// (rule id, key) of a limit charged by the response.
type Slot = (u64, u128);

/// Requests in flight per limit and key, in this process.
#[derive(Default)]
pub(crate) struct InFlight(Mutex<HashMap<Slot, u64>>);

/// A request's places in flight, given back when it is dropped: after its charge, or when
/// the request is refused, fails or is abandoned.
pub(crate) struct Held {
    in_flight: Arc<InFlight>,
    slots: SmallVec<[(Slot, u64); 2]>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut counts = self
            .in_flight
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (slot, cost) in &self.slots {
            if let Some(count) = counts.get_mut(slot) {
                *count = count.saturating_sub(*cost);
                if *count == 0 {
                    counts.remove(slot);
                }
            }
        }
    }
}

impl<S: Store> Limiter<S> {
    /// Decides a plan with limits charged by the response: every limit is peeked; a limit
    /// charged by the response passes only if what it has left covers the requests of its key
    /// already in flight; then the limits charged up front are checked and charged as usual.
    /// The places taken in flight come back with an admitted outcome.
    pub(crate) async fn decide_deferred(
        &self,
        plan: &Plan,
        span: &tracing::Span,
    ) -> (Result<Outcome, S::Error>, Option<Held>) {
        let all = self.store_checks(plan, plan.all());
        let watch = self.counters.stopwatch(span);
        let peeked = self.store.peek(&all).await;
        self.counters.store_time(StoreOp::Peek, watch, span);
        let peeked = match peeked {
            Ok(outcome) if outcome.decisions.len() == all.len() => outcome,
            // `verdict` reports what cannot be used.
            other => return (other, None),
        };
        let upfront = plan.upfront().len();
        let degraded = peeked.degraded;
        let mut decisions = peeked.decisions;
        let (mut gated, held) = {
            let mut counts = self
                .in_flight
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut slots = SmallVec::new();
            for (i, check) in all.iter().enumerate().skip(upfront) {
                let slot = (check.rule.id(), check.key.as_u128());
                let held = counts.get(&slot).copied().unwrap_or(0);
                let cost = check.rule.cost();
                let decision = &mut decisions[i];
                if decision.allowed && decision.remaining < held.saturating_add(cost) {
                    *decision = Decision {
                        allowed: false,
                        remaining: 0,
                        retry_after: Some(IN_FLIGHT_RETRY),
                        ..*decision
                    };
                }
                slots.push((slot, cost));
            }
            let gated = Outcome::new(&all, decisions, false);
            let held = gated.allowed.then(|| {
                for (slot, cost) in &slots {
                    *counts.entry(*slot).or_default() += cost;
                }
                Held {
                    in_flight: Arc::clone(&self.in_flight),
                    slots,
                }
            });
            (gated, held)
        };
        // A peek the failure policy answered stays a degraded decision.
        gated.degraded = degraded;
        let Some(held) = held else {
            return (Ok(gated), None);
        };
        if upfront == 0 {
            return (Ok(gated), Some(held));
        }
        match self.check(plan, span).await {
            Ok(charged) if charged.decisions.len() == upfront => {
                let mut decisions = gated.decisions;
                decisions[..upfront].copy_from_slice(&charged.decisions);
                let mut outcome = Outcome::new(&all, decisions, charged.replayed);
                outcome.degraded = degraded || charged.degraded;
                let held = outcome.allowed.then_some(held);
                (Ok(outcome), held)
            }
            other => (other, None),
        }
    }

    /// Charges the limits the response's `status` counts for, each on its own (one already
    /// spent by requests that ran meanwhile is left as it is: it refuses the next ones).
    pub(crate) async fn charge_deferred(&self, plan: &Plan, status: StatusCode) {
        for i in plan.deferred() {
            if !self.limit(plan.limit_of(i)).charge_on.contains(&status) {
                continue;
            }
            let checks = self.store_checks(plan, i..i + 1);
            match self.store.check(&checks, None).await {
                Ok(_) => {}
                Err(error) => {
                    if let Some(suppressed) = self.store_log.permit() {
                        tracing::error!(
                            %error,
                            suppressed,
                            rule = checks[0].rule.name(),
                            "rate limiter store failed to charge a response; it goes uncounted"
                        );
                    }
                }
            }
        }
    }
}
