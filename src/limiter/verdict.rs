//! The verdict: what the store's answer means for the client, in four steps: check the answer,
//! count it, render the headers, and, when denied, build the refusal.

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use tollgate_core::{Outcome, Store};

use super::plan::Plan;
use super::Limiter;
use crate::head::RequestHead;
use crate::response::{unavailable, Binding, Denial, RateLimitHeaders, Reported};

/// What to do with a decided request.
pub(crate) enum Verdict {
    /// Call the inner service and add these headers to its response.
    Admit(RateLimitHeaders),
    /// Answer with this response; the inner service is not called.
    Respond(Response<Full<Bytes>>),
}

/// Why a store's answer cannot be used.
enum Unusable<'a, E> {
    Failed(&'a E),
    Nonsense(&'static str),
}

impl<S: Store> Limiter<S> {
    /// What the store's answer means for the client; counts it, logs what deserves it, and
    /// records it in `span` (the request's decision span).
    pub(crate) fn verdict(
        &self,
        plan: &Plan,
        answer: &Result<Outcome, S::Error>,
        req: &RequestHead<'_>,
        span: &tracing::Span,
    ) -> Verdict {
        let Some(outcome) = self.usable(plan, answer) else {
            span.record("outcome", "error");
            return Verdict::Respond(unavailable());
        };
        if !span.is_disabled() {
            span.record(
                "outcome",
                if outcome.allowed { "allowed" } else { "denied" },
            );
            if let (Some(i), Some(decision)) = (outcome.binding, outcome.binding_decision()) {
                span.record("rule", self.rule_at(plan, i).0.name());
                span.record("remaining", decision.remaining);
            }
        }
        self.count(plan, outcome);
        let headers = self.headers_for(plan, outcome);
        if outcome.allowed {
            Verdict::Admit(headers)
        } else {
            Verdict::Respond(self.deny(plan, outcome, headers, req))
        }
    }

    /// The store's outcome, if it is an answer to this plan: one decision per check, and a
    /// binding decision among them. Otherwise it is logged, counted as an error of every
    /// applicable limit, and `None` (the client gets a 503).
    fn usable<'a>(
        &self,
        plan: &Plan,
        answer: &'a Result<Outcome, S::Error>,
    ) -> Option<&'a Outcome> {
        let unusable = match answer {
            Ok(outcome) if outcome.decisions.len() != plan.len() => {
                Unusable::Nonsense("answered with the wrong number of decisions")
            }
            Ok(outcome) if outcome.binding.is_some_and(|b| b >= plan.len()) => {
                Unusable::Nonsense("named a binding decision it did not make")
            }
            Ok(outcome) => return Some(outcome),
            Err(error) => Unusable::Failed(error),
        };
        if let Some(suppressed) = self.store_log.permit() {
            match unusable {
                Unusable::Failed(error) => {
                    tracing::error!(%error, suppressed, "rate limiter store failed; answering 503");
                }
                Unusable::Nonsense(what) => tracing::error!(
                    checks = plan.len(),
                    suppressed,
                    "rate limiter store {what}; answering 503"
                ),
            }
        }
        self.applied(plan).for_each(|l| l.counters.error());
        None
    }

    /// Counts each limit's decision: allowed, denied or shadow-denied (logged, throttled).
    fn count(&self, plan: &Plan, outcome: &Outcome) {
        for (limit, decision) in self.applied(plan).zip(&outcome.decisions) {
            let counters = &limit.counters;
            if outcome.degraded {
                // The store's failure policy answered: not this limit's own decision.
                counters.degraded();
            } else if limit.rule.is_shadow() && !decision.allowed {
                counters.shadow_denied();
                if let Some(suppressed) = limit.shadow_log.permit() {
                    tracing::info!(
                        rule = limit.rule.name(),
                        retry_after_ms = decision.retry_after.map_or(0, |d| d.as_millis()),
                        suppressed,
                        "shadow rule would have denied the request"
                    );
                }
            } else if outcome.allowed {
                counters.allowed();
                if self.is_near_limit(decision) {
                    counters.near_limit();
                }
            } else if !decision.allowed {
                counters.denied();
            }
        }
        if outcome.replayed {
            self.counters.replay();
        }
    }

    /// Whether an admitted decision leaves less than the near-limit share of its limit.
    fn is_near_limit(&self, decision: &tollgate_core::Decision) -> bool {
        u128::from(decision.remaining) * 100
            < u128::from(decision.limit) * u128::from(self.near_limit_percent)
    }

    /// The rate-limit headers: the binding decision's figures, every enforced limit's policy.
    fn headers_for(&self, plan: &Plan, outcome: &Outcome) -> RateLimitHeaders {
        let reported = (0..plan.len())
            .map(|i| self.rule_at(plan, i))
            .zip(&outcome.decisions)
            .filter(|((rule, _), _)| !rule.is_shadow())
            .map(|((rule, policy), decision)| Reported {
                name: rule.name(),
                policy,
                decision,
            });
        let binding = outcome.binding.zip(outcome.binding_decision());
        let binding = binding.map(|(i, decision)| Binding {
            decision,
            limit: &self.limit(plan.limit_of(i)).limit_value,
        });
        self.headers.headers(binding, reported)
    }

    /// The refusal of a denied request: the responder's answer to the binding limit (the longest
    /// wait among those that refused), with the rate-limit headers it did not set itself.
    fn deny(
        &self,
        plan: &Plan,
        outcome: &Outcome,
        headers: RateLimitHeaders,
        req: &RequestHead<'_>,
    ) -> Response<Full<Bytes>> {
        // `usable` checked that a binding decision is one of the plan's.
        let (Some(binding), Some(decision)) = (outcome.binding, outcome.binding_decision()) else {
            if let Some(suppressed) = self.store_log.permit() {
                tracing::error!(
                    suppressed,
                    "rate limiter store denied a request without a binding rule; answering 503"
                );
            }
            return unavailable();
        };
        let (rule, _) = self.rule_at(plan, binding);
        let denial = Denial::new(rule, decision, *req);
        tracing::debug!(
            rule = rule.name(),
            retry_after = denial.retry_after_secs(),
            "request denied"
        );
        let mut response = (self.responder)(&denial);
        headers.apply(response.headers_mut());
        response
    }
}
