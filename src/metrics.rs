//! Counters of what the limiter decided, per limit: cheap atomics, read through
//! [`RateLimitLayer::metrics`](crate::RateLimitLayer::metrics).

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one limit.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) allowed: AtomicU64,
    pub(crate) denied: AtomicU64,
    pub(crate) shadow_denied: AtomicU64,
    pub(crate) errors: AtomicU64,
}

/// Counts one more event: the one way every counter here moves.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self, name: &str) -> LimitMetrics {
        LimitMetrics {
            name: name.to_owned(),
            allowed: self.allowed.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
            shadow_denied: self.shadow_denied.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// Live counters of the whole layer.
#[derive(Debug, Default)]
pub(crate) struct LayerCounters {
    pub(crate) replayed: AtomicU64,
    pub(crate) exempt: AtomicU64,
    pub(crate) misconfigured: AtomicU64,
}

impl LayerCounters {
    pub(crate) fn replayed(&self) -> u64 {
        self.replayed.load(Ordering::Relaxed)
    }

    pub(crate) fn exempt(&self) -> u64 {
        self.exempt.load(Ordering::Relaxed)
    }

    pub(crate) fn misconfigured(&self) -> u64 {
        self.misconfigured.load(Ordering::Relaxed)
    }
}

/// What one limit decided since the layer was built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitMetrics {
    /// The limit's rule name.
    pub name: String,
    /// Requests it applied to that were admitted.
    pub allowed: u64,
    /// Requests it refused (an enforced rule). A request refused by two rules counts for both.
    pub denied: u64,
    /// Requests it would have refused, had it not been in shadow mode.
    pub shadow_denied: u64,
    /// Requests it applied to that the store could not decide (answered 503).
    pub errors: u64,
}

/// A snapshot of the layer's counters; see [`RateLimitLayer::metrics`](crate::RateLimitLayer::metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// One entry per limit, in the order the limits were added.
    pub limits: Vec<LimitMetrics>,
    /// Requests admitted free as idempotent replays.
    pub replayed: u64,
    /// Requests that passed uncounted, being exempt (see
    /// [`RateLimitBuilder::exempt_ips`](crate::RateLimitBuilder::exempt_ips)).
    pub exempt: u64,
    /// Requests answered 500 because the server gives no peer address.
    pub misconfigured: u64,
}

impl Metrics {
    /// The counters of the limit named `name`.
    pub fn limit(&self, name: &str) -> Option<&LimitMetrics> {
        self.limits.iter().find(|l| l.name == name)
    }
}
