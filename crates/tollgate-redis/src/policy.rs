//! What happens when Redis fails: the [`FailurePolicy`] and the circuit breaker.
//!
//! This module owns the *when* and *how* of degrading; the store calls it around every Redis
//! call. Redis is given a time budget per decision (connection checkout included); an error or
//! an exhausted budget is one failure. After [`BreakerConfig::failures`] consecutive failures the
//! breaker opens: for [`BreakerConfig::cool_down`] no request calls Redis, each is answered by
//! the policy at once. Then one request probes Redis (the others keep answering by policy);
//! success closes the breaker, failure opens it for another cool-down.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How a decision is made when Redis errors, exceeds its time budget, or the circuit breaker is
/// open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Admit the request. Every rule reports an admission with its full capacity as
    /// `remaining` and no reset, and the outcome has no binding rule (`binding: None`), so the
    /// HTTP layer sends no rate-limit headers rather than made-up ones.
    FailOpen,
    /// Refuse to decide: [`Store::check`](tollgate_core::Store::check) returns the
    /// [`RedisStoreError`](crate::RedisStoreError), which the HTTP layer answers with a
    /// `503 Service Unavailable` JSON body.
    FailClosed,
    /// Decide with a local [`MemoryStore`](tollgate_core::MemoryStore) holding the same rules,
    /// each limit (and burst) divided by `instances`, the number of API instances expected to
    /// share the load while Redis is away (1 keeps the limits as they are). The local state
    /// starts empty and is not merged back into Redis.
    Fallback {
        /// Expected number of instances (at least 1).
        instances: u32,
    },
}

impl FailurePolicy {
    /// [`FailurePolicy::Fallback`] with the limits divided by `instances` (at least 1).
    pub fn fallback(instances: u32) -> Self {
        FailurePolicy::Fallback {
            instances: instances.max(1),
        }
    }
}

impl Default for FailurePolicy {
    /// Fail open: a rate limiter that cannot reach its store should not take the API down.
    fn default() -> Self {
        FailurePolicy::FailOpen
    }
}

/// Circuit-breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (default 5; at least 1).
    pub failures: u32,
    /// How long the breaker stays open before one request probes Redis (default 250 ms).
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            cool_down: Duration::from_millis(250),
        }
    }
}

/// Whether a request may call Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Closed: call Redis.
    Call,
    /// Half-open: this request is the probe.
    Probe,
    /// Open: answer by policy without calling Redis.
    Skip,
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is in flight since `since`; if it never reports (its caller was cancelled), another
    /// probe is let through after a cool-down.
    HalfOpen {
        since: Instant,
    },
}

/// The circuit breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Self {
            config: BreakerConfig {
                failures: config.failures.max(1),
                ..config
            },
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    pub(crate) fn config(&self) -> BreakerConfig {
        self.config
    }

    pub(crate) fn admit(&self, budget: Duration) -> Admission {
        self.admit_at(budget, Instant::now())
    }

    /// [`admit`](Self::admit) at `now`: the breaker reads no clock of its own, so its tests step
    /// time exactly instead of sleeping past a margin.
    fn admit_at(&self, budget: Duration, now: Instant) -> Admission {
        let mut state = self.state.lock();
        match *state {
            State::Closed { .. } => Admission::Call,
            State::Open { until } if now < until => Admission::Skip,
            State::HalfOpen { since } if now < since + budget + self.config.cool_down => {
                Admission::Skip
            }
            _ => {
                *state = State::HalfOpen { since: now };
                Admission::Probe
            }
        }
    }

    /// Records a success; returns whether the breaker was closed by it.
    pub(crate) fn success(&self) -> bool {
        let mut state = self.state.lock();
        let was_open = !matches!(*state, State::Closed { .. });
        *state = State::Closed { failures: 0 };
        was_open
    }

    /// Records a failure; returns whether the breaker opened because of it.
    pub(crate) fn failure(&self) -> bool {
        self.failure_at(Instant::now())
    }

    /// [`failure`](Self::failure) at `now`.
    fn failure_at(&self, now: Instant) -> bool {
        let mut state = self.state.lock();
        let until = now + self.config.cool_down;
        match *state {
            State::Closed { failures } if failures + 1 < self.config.failures => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Closed { .. } | State::HalfOpen { .. } => {
                *state = State::Open { until };
                true
            }
            // A call admitted before the breaker opened: it stays open as it was.
            State::Open { .. } => false,
        }
    }

    /// Whether the breaker is open or half-open.
    pub(crate) fn is_open(&self) -> bool {
        !matches!(*self.state.lock(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL_DOWN: Duration = Duration::from_millis(30);
    const BUDGET: Duration = Duration::from_millis(10);
    const NS: Duration = Duration::from_nanos(1);

    #[test]
    fn breaker_opens_probes_and_closes() {
        let breaker = Breaker::new(BreakerConfig {
            failures: 2,
            cool_down: COOL_DOWN,
        });
        let t0 = Instant::now();
        assert_eq!(breaker.admit_at(BUDGET, t0), Admission::Call);
        assert!(!breaker.failure_at(t0));
        assert!(breaker.failure_at(t0), "second consecutive failure opens");
        assert_eq!(breaker.admit_at(BUDGET, t0), Admission::Skip);
        assert_eq!(
            breaker.admit_at(BUDGET, t0 + COOL_DOWN - NS),
            Admission::Skip,
            "open for the whole cool-down"
        );
        let t1 = t0 + COOL_DOWN;
        assert_eq!(breaker.admit_at(BUDGET, t1), Admission::Probe);
        assert_eq!(
            breaker.admit_at(BUDGET, t1),
            Admission::Skip,
            "one probe at a time"
        );
        assert!(breaker.failure_at(t1), "a failed probe opens again");
        assert_eq!(
            breaker.admit_at(BUDGET, t1 + COOL_DOWN - NS),
            Admission::Skip
        );
        let t2 = t1 + COOL_DOWN;
        assert_eq!(breaker.admit_at(BUDGET, t2), Admission::Probe);
        assert!(breaker.success());
        assert_eq!(breaker.admit_at(BUDGET, t2), Admission::Call);
        // A success resets the count.
        assert!(!breaker.failure_at(t2));
        breaker.success();
        assert!(!breaker.failure_at(t2));
    }

    #[test]
    fn a_lost_probe_is_replaced_after_its_budget_and_a_cool_down() {
        let breaker = Breaker::new(BreakerConfig {
            failures: 1,
            cool_down: COOL_DOWN,
        });
        let t0 = Instant::now();
        assert!(breaker.failure_at(t0));
        let probe = t0 + COOL_DOWN;
        assert_eq!(breaker.admit_at(BUDGET, probe), Admission::Probe);
        // The probe's caller was cancelled and never reports back: nobody else calls Redis
        // until the probe's budget and one more cool-down are over, then another probe goes.
        let replaced = probe + BUDGET + COOL_DOWN;
        assert_eq!(breaker.admit_at(BUDGET, replaced - NS), Admission::Skip);
        assert_eq!(breaker.admit_at(BUDGET, replaced), Admission::Probe);
    }
}
