//! Counters of what the store did, for dashboards and alerts: [`RedisStoreStats`]; with the
//! `metrics` feature also `tollgate_breaker_open{store="redis"}` (a gauge, 1 while the circuit
//! breaker is open) and `tollgate_deny_cache_hits_total` through the `metrics` facade,
//! registered when the store is built (install the exporter first).

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a [`RedisStore`](crate::RedisStore)'s counters since it was built (shared by
/// its clones). Every decision made without Redis is counted in `degraded` and in exactly one
/// of `failed_open`, `failed_closed`, `fell_back`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStoreStats {
    /// Decisions that asked Redis (one script call each; in Cluster, one per hash slot the
    /// request's keys fall on, plus refunds and idempotency records).
    pub redis_calls: u64,
    /// Redis calls that failed because Redis was unavailable: connection errors, `LOADING`,
    /// `BUSY`, cluster down... and exhausted budgets. These count towards the circuit breaker.
    pub redis_failures: u64,
    /// Redis calls that failed although Redis answered: a script error, a refused command
    /// (authentication, ACL), an unexpected reply. Decided by the failure policy, logged, and
    /// never counted towards the circuit breaker.
    pub script_errors: u64,
    /// Of `redis_failures`, those that exhausted the time budget.
    pub timeouts: u64,
    /// Decisions made without Redis (the failure policy applied).
    pub degraded: u64,
    /// Degraded decisions admitted by [`FailurePolicy::FailOpen`](crate::FailurePolicy::FailOpen).
    pub failed_open: u64,
    /// Degraded decisions refused by [`FailurePolicy::FailClosed`](crate::FailurePolicy::FailClosed).
    pub failed_closed: u64,
    /// Degraded decisions made by the local fallback store.
    pub fell_back: u64,
    /// Times the circuit breaker opened.
    pub breaker_trips: u64,
    /// Decisions answered by policy without trying Redis because the breaker was open.
    pub short_circuited: u64,
    /// Requests denied by the local deny cache without asking Redis.
    pub deny_cache_hits: u64,
    /// Requests that missed the deny cache while another request on one of their (rule, key)
    /// pairs was asking Redis, and waited for its answer (those it denied are also counted in
    /// `deny_cache_hits`; the others then asked Redis themselves).
    pub coalesced: u64,
    /// Charges reversed, and free replays given back, because the request was denied after
    /// they were made: Cluster per-slot charges another slot denied, and
    /// [fixed-window counters](crate::RedisStoreBuilder::fixed_window_counters) of a denied
    /// request (one per refund call).
    pub refunds: u64,
    /// Refunds that failed (the charge stays until its state expires; a replay not given back
    /// means a repeat of that request is charged).
    pub refund_failures: u64,
}

#[derive(Debug)]
pub(crate) struct Counters {
    pub redis_calls: AtomicU64,
    pub redis_failures: AtomicU64,
    pub script_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub degraded: AtomicU64,
    pub failed_open: AtomicU64,
    pub failed_closed: AtomicU64,
    pub fell_back: AtomicU64,
    pub breaker_trips: AtomicU64,
    pub short_circuited: AtomicU64,
    pub deny_cache_hits: AtomicU64,
    pub coalesced: AtomicU64,
    pub refunds: AtomicU64,
    pub refund_failures: AtomicU64,
    #[cfg(feature = "metrics")]
    exported: Exported,
}

#[cfg(feature = "metrics")]
#[derive(Debug)]
struct Exported {
    breaker_open: metrics::Gauge,
    deny_cache_hits: metrics::Counter,
}

#[cfg(feature = "metrics")]
impl Exported {
    fn new() -> Self {
        let breaker_open = metrics::gauge!("tollgate_breaker_open", "store" => "redis");
        breaker_open.set(0.0);
        Self {
            breaker_open,
            deny_cache_hits: metrics::counter!("tollgate_deny_cache_hits_total"),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn new() -> Self {
        let zero = || AtomicU64::new(0);
        Self {
            redis_calls: zero(),
            redis_failures: zero(),
            script_errors: zero(),
            timeouts: zero(),
            degraded: zero(),
            failed_open: zero(),
            failed_closed: zero(),
            fell_back: zero(),
            breaker_trips: zero(),
            short_circuited: zero(),
            deny_cache_hits: zero(),
            coalesced: zero(),
            refunds: zero(),
            refund_failures: zero(),
            #[cfg(feature = "metrics")]
            exported: Exported::new(),
        }
    }

    pub(crate) fn deny_cache_hit(&self) {
        bump(&self.deny_cache_hits);
        #[cfg(feature = "metrics")]
        self.exported.deny_cache_hits.increment(1);
    }

    pub(crate) fn breaker_opened(&self) {
        bump(&self.breaker_trips);
        #[cfg(feature = "metrics")]
        self.exported.breaker_open.set(1.0);
    }

    pub(crate) fn breaker_closed(&self) {
        #[cfg(feature = "metrics")]
        self.exported.breaker_open.set(0.0);
    }

    pub(crate) fn snapshot(&self) -> RedisStoreStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RedisStoreStats {
            redis_calls: get(&self.redis_calls),
            redis_failures: get(&self.redis_failures),
            script_errors: get(&self.script_errors),
            timeouts: get(&self.timeouts),
            degraded: get(&self.degraded),
            failed_open: get(&self.failed_open),
            failed_closed: get(&self.failed_closed),
            fell_back: get(&self.fell_back),
            breaker_trips: get(&self.breaker_trips),
            short_circuited: get(&self.short_circuited),
            deny_cache_hits: get(&self.deny_cache_hits),
            coalesced: get(&self.coalesced),
            refunds: get(&self.refunds),
            refund_failures: get(&self.refund_failures),
        }
    }
}
