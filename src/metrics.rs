//! Counters of what the limiter decided, per limit: cheap atomics, read through
//! [`RateLimitLayer::metrics`](crate::RateLimitLayer::metrics); and, with the `metrics` feature,
//! the same events through the [`metrics`](https://docs.rs/metrics) facade, so any exporter
//! (Prometheus, StatsD, ...) sees them:
//!
//! | name | kind | labels | counts |
//! | --- | --- | --- | --- |
//! | `tollgate_decisions_total` | counter | `rule`, `outcome` | each limit's decision of a request: `allowed`, `denied`, `shadow_denied`, `degraded` (the store's failure policy decided: Redis failing open or its fallback), `error` (the store failed: a 503); `outcome="exempt"` (with `rule=""`) for exempt requests |
//! | `tollgate_near_limit_total` | counter | `rule` | admitted requests that left less than the near-limit share (default 20%) of the limit: customers about to be limited |
//! | `tollgate_replays_total` | counter | | requests admitted free as idempotent replays |
//! | `tollgate_store_seconds` | histogram | `store`, `op` | the store's time to decide (`op="check"`) or to peek (`op="peek"`, limits charged by the response) |
//!
//! Labels are rule names and fixed words only: never a client's identity. The handles are
//! registered when the layer is built, with the recorder installed then (install the exporter
//! first); the snapshot counts the same events, so both always agree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Live counters of one limit.
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) allowed: AtomicU64,
    pub(crate) denied: AtomicU64,
    pub(crate) shadow_denied: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) degraded: AtomicU64,
    pub(crate) near_limit: AtomicU64,
    exported: exported::Limit,
}

/// Counts one more event: the one way every counter here moves.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn new(rule: &str) -> Self {
        Self {
            allowed: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            shadow_denied: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            degraded: AtomicU64::new(0),
            near_limit: AtomicU64::new(0),
            exported: exported::Limit::new(rule),
        }
    }

    pub(crate) fn allowed(&self) {
        bump(&self.allowed);
        self.exported.allowed();
    }

    pub(crate) fn denied(&self) {
        bump(&self.denied);
        self.exported.denied();
    }

    pub(crate) fn shadow_denied(&self) {
        bump(&self.shadow_denied);
        self.exported.shadow_denied();
    }

    pub(crate) fn error(&self) {
        bump(&self.errors);
        self.exported.error();
    }

    pub(crate) fn degraded(&self) {
        bump(&self.degraded);
        self.exported.degraded();
    }

    pub(crate) fn near_limit(&self) {
        bump(&self.near_limit);
        self.exported.near_limit();
    }

    pub(crate) fn snapshot(&self, name: &str) -> LimitMetrics {
        LimitMetrics {
            name: name.to_owned(),
            allowed: self.allowed.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
            shadow_denied: self.shadow_denied.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            degraded: self.degraded.load(Ordering::Relaxed),
            near_limit: self.near_limit.load(Ordering::Relaxed),
        }
    }
}

/// Live counters of the whole layer.
#[derive(Debug)]
pub(crate) struct LayerCounters {
    pub(crate) replayed: AtomicU64,
    pub(crate) exempt: AtomicU64,
    pub(crate) misconfigured: AtomicU64,
    exported: exported::Layer,
}

/// When a store operation started (a reading of [`timer`]), when its time is wanted.
pub(crate) struct Stopwatch(Option<u64>);

/// The calibrated time-stamp counter that times store operations: a reading costs a few
/// instructions where `Instant::now` is a `clock_gettime` call, and every request with the
/// `metrics` feature takes two. Readings on different cores may disagree; a later reading
/// behind an earlier one gives a time of zero, never a wrapped one.
fn timer() -> &'static quanta::Clock {
    static TIMER: OnceLock<quanta::Clock> = OnceLock::new();
    TIMER.get_or_init(quanta::Clock::new)
}

impl Stopwatch {
    /// Whether the time is wanted (and so [`LayerCounters::store_time`] does something).
    pub(crate) fn is_running(&self) -> bool {
        self.0.is_some()
    }
}

/// A store operation whose time is measured.
#[derive(Clone, Copy)]
pub(crate) enum StoreOp {
    Check,
    Peek,
}

impl LayerCounters {
    /// The counters of a layer on the store called `store` (`Store::NAME`).
    pub(crate) fn new(store: &'static str) -> Self {
        if cfg!(feature = "metrics") {
            // Calibrated here (about a millisecond), not on the first request.
            timer();
        }
        Self {
            replayed: AtomicU64::new(0),
            exempt: AtomicU64::new(0),
            misconfigured: AtomicU64::new(0),
            exported: exported::Layer::new(store),
        }
    }

    pub(crate) fn replay(&self) {
        bump(&self.replayed);
        self.exported.replay();
    }

    pub(crate) fn exempted(&self) {
        bump(&self.exempt);
        self.exported.exempt();
    }

    /// Starts timing a store operation, if anyone will see the time: the `metrics` feature,
    /// or a subscriber listening to the request's debug span, `span`.
    pub(crate) fn stopwatch(&self, span: &tracing::Span) -> Stopwatch {
        let wanted = cfg!(feature = "metrics") || !span.is_disabled();
        Stopwatch(wanted.then(|| timer().raw()))
    }

    /// Records the time of a store operation started at `watch`: in the histogram, and as
    /// `span`'s `store_us`.
    pub(crate) fn store_time(&self, op: StoreOp, watch: Stopwatch, span: &tracing::Span) {
        if let Some(started) = watch.0 {
            let timer = timer();
            let time = timer.delta(started, timer.raw());
            self.exported.store_time(op, time);
            if !span.is_disabled() {
                let micros = u64::try_from(time.as_micros()).unwrap_or(u64::MAX);
                span.record("store_us", micros);
            }
        }
    }

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

/// The exported handles: registered once, at build, so a request only increments.
#[cfg(feature = "metrics")]
mod exported {
    use super::{Duration, StoreOp};
    use metrics::{counter, histogram, Counter, Histogram};

    const DECISIONS: &str = "tollgate_decisions_total";

    #[derive(Debug)]
    pub(crate) struct Limit {
        allowed: Counter,
        denied: Counter,
        shadow_denied: Counter,
        error: Counter,
        degraded: Counter,
        near_limit: Counter,
    }

    impl Limit {
        pub(crate) fn new(rule: &str) -> Self {
            let outcome =
                |o: &'static str| counter!(DECISIONS, "rule" => rule.to_owned(), "outcome" => o);
            Self {
                allowed: outcome("allowed"),
                denied: outcome("denied"),
                shadow_denied: outcome("shadow_denied"),
                error: outcome("error"),
                degraded: outcome("degraded"),
                near_limit: counter!("tollgate_near_limit_total", "rule" => rule.to_owned()),
            }
        }
        pub(crate) fn allowed(&self) {
            self.allowed.increment(1);
        }
        pub(crate) fn denied(&self) {
            self.denied.increment(1);
        }
        pub(crate) fn shadow_denied(&self) {
            self.shadow_denied.increment(1);
        }
        pub(crate) fn error(&self) {
            self.error.increment(1);
        }
        pub(crate) fn degraded(&self) {
            self.degraded.increment(1);
        }
        pub(crate) fn near_limit(&self) {
            self.near_limit.increment(1);
        }
    }

    #[derive(Debug)]
    pub(crate) struct Layer {
        exempt: Counter,
        replays: Counter,
        check: Histogram,
        peek: Histogram,
    }

    impl Layer {
        pub(crate) fn new(store: &'static str) -> Self {
            let seconds = |op: &'static str| histogram!("tollgate_store_seconds", "store" => store, "op" => op);
            Self {
                exempt: counter!(DECISIONS, "rule" => "", "outcome" => "exempt"),
                replays: counter!("tollgate_replays_total"),
                check: seconds("check"),
                peek: seconds("peek"),
            }
        }
        pub(crate) fn exempt(&self) {
            self.exempt.increment(1);
        }
        pub(crate) fn replay(&self) {
            self.replays.increment(1);
        }
        pub(crate) fn store_time(&self, op: StoreOp, time: Duration) {
            match op {
                StoreOp::Check => self.check.record(time.as_secs_f64()),
                StoreOp::Peek => self.peek.record(time.as_secs_f64()),
            }
        }
    }
}

/// Without the `metrics` feature: nothing to register, nothing to time.
#[cfg(not(feature = "metrics"))]
mod exported {
    use super::{Duration, StoreOp};

    #[derive(Debug)]
    pub(crate) struct Limit;

    impl Limit {
        pub(crate) fn new(_rule: &str) -> Self {
            Self
        }
        pub(crate) fn allowed(&self) {}
        pub(crate) fn denied(&self) {}
        pub(crate) fn shadow_denied(&self) {}
        pub(crate) fn error(&self) {}
        pub(crate) fn degraded(&self) {}
        pub(crate) fn near_limit(&self) {}
    }

    #[derive(Debug)]
    pub(crate) struct Layer;

    impl Layer {
        pub(crate) fn new(_store: &'static str) -> Self {
            Self
        }
        pub(crate) fn exempt(&self) {}
        pub(crate) fn replay(&self) {}
        pub(crate) fn store_time(&self, _op: StoreOp, _time: Duration) {}
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
    /// Requests it applied to that the store's failure policy decided (Redis failing open, or
    /// its local fallback): not counted as allowed or denied.
    pub degraded: u64,
    /// Admitted requests that left less than the near-limit share of the limit
    /// ([`RateLimitBuilder::near_limit_percent`](crate::RateLimitBuilder::near_limit_percent)).
    pub near_limit: u64,
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
