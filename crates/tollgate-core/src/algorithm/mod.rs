//! The four rate-limit algorithms, as pure state machines.
//!
//! Each algorithm is a function from (stored state, now, quota, cost) to (decision, new state):
//! no clock, no I/O, integer arithmetic only. A denied request leaves the state unchanged (the
//! new state is `None`). Stores own the state; the algorithms own the arithmetic, so one table of
//! cases tests them all on every store.
//!
//! | algorithm | "600 per minute" means | memory per key | pick it when |
//! | --- | --- | --- | --- |
//! | [`Gcra`] (default) | 600 at once, then one every 100 ms | 8 bytes | you want smooth, fair limiting |
//! | [`FixedWindow`] | 600 per calendar minute, reset on the minute | 16 bytes | you want what most APIs document |
//! | [`SlidingLog`] | 600 in any 60 s interval, exactly | 16 bytes per request in the window | the limit is a contract |
//! | [`SlidingWindow`] | about 600 in any 60 s (a weighted estimate; at most 600 per calendar minute) | 24 bytes | you want near-exact at O(1) |

mod fixed_window;
mod gcra;
mod sliding_log;
mod sliding_window;

pub use fixed_window::{FixedWindow, FixedWindowState};
pub use gcra::{Gcra, GcraState};
pub use sliding_log::{SlidingLog, SlidingLogState};
pub use sliding_window::{SlidingWindow, SlidingWindowState};

use crate::clock::Nanos;
use crate::decision::Decision;
use crate::quota::Quota;

/// Which algorithm a rule uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Algorithm {
    /// Generic cell rate algorithm (= a token bucket of capacity `burst` refilled one token per
    /// `period / limit`). Smooth, exact, O(1).
    #[default]
    Gcra,
    /// Counts per window aligned on multiples of the period since the Unix epoch
    /// (a one-minute window resets on the minute).
    FixedWindow,
    /// Remembers every admitted request: exactly `limit` in any interval of length `period`.
    SlidingLog,
    /// Sliding-window counter: the previous window's count, weighted by how much of it still
    /// overlaps the sliding window (rounded up), plus the current window's count.
    SlidingWindow,
}

impl Algorithm {
    /// Every algorithm, for tests and benchmarks that cover them all.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Gcra,
        Algorithm::FixedWindow,
        Algorithm::SlidingLog,
        Algorithm::SlidingWindow,
    ];

    /// The most a single request may cost under this algorithm: the burst for GCRA, the limit
    /// for the window algorithms.
    pub fn capacity(self, quota: &Quota) -> u64 {
        match self {
            Algorithm::Gcra => quota.burst(),
            _ => quota.limit(),
        }
    }

    /// A short lowercase name (`gcra`, `fixed_window`, `sliding_log`, `sliding_window`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::SlidingWindow => "sliding_window",
        }
    }
}

/// An algorithm as a pure state machine.
pub trait StateMachine {
    /// What the algorithm remembers per key.
    type State: Clone + Send + Sync + 'static;

    /// Decides a request of weight `cost` arriving at `now`, given the key's state (`None` for a
    /// key never seen or already reclaimed). Returns the new state when the request is admitted,
    /// `None` when it is denied: a denial changes nothing.
    ///
    /// `cost` may be zero, which reports the current figures without using anything (a peek).
    fn decide(
        state: Option<&Self::State>,
        now: Nanos,
        quota: &Quota,
        cost: u64,
    ) -> (Decision, Option<Self::State>);

    /// The instant from which `state` can no longer affect any decision: a store may forget the
    /// key then, with the same answers as if it had kept it.
    fn expires_at(state: &Self::State) -> Nanos;

    /// [`decide`](Self::decide)'s decision alone. Algorithms whose new state is costly to build
    /// (the sliding log) override it; the answer is always the same.
    fn check(state: Option<&Self::State>, now: Nanos, quota: &Quota, cost: u64) -> Decision {
        Self::decide(state, now, quota, cost).0
    }

    /// Charges an admitted request in place: the state becomes the new state
    /// [`decide`](Self::decide) returns (unchanged if it denies). Returns the state to store
    /// when there was none. Stores that decide a whole request first and charge afterwards use
    /// it; the sliding log overrides it to avoid rebuilding its log.
    fn commit(
        state: Option<&mut Self::State>,
        now: Nanos,
        quota: &Quota,
        cost: u64,
    ) -> Option<Self::State> {
        let (_, next) = Self::decide(state.as_deref(), now, quota, cost);
        match (state, next) {
            (Some(state), Some(next)) => {
                *state = next;
                None
            }
            (None, next) => next,
            (Some(_), None) => None,
        }
    }
}

/// Start of the window (aligned on multiples of `period` since the epoch) that holds `now`.
fn window_start(now: Nanos, period: u64) -> Nanos {
    now - now % period
}

#[cfg(test)]
mod tests;
