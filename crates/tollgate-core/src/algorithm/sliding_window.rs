use crate::algorithm::{window_start, StateMachine};
use crate::clock::Nanos;
use crate::decision::Decision;
use crate::quota::Quota;

/// Sliding-window counter: near-exact "N in any window" in O(1).
///
/// Keeps the counts of the current and the previous fixed window. A request at `elapsed` into
/// the current window sees `ceil(previous * (period - elapsed) / period) + current` as used: the
/// part of the previous window the sliding window still overlaps, assuming its requests were
/// spread evenly. Rounding up keeps the estimate on the safe side.
#[derive(Debug, Clone, Copy, Default)]
pub struct SlidingWindow;

/// A sliding-window counter's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindowState {
    /// End of the window after the current one: when the state stops mattering. (The current
    /// window ends one period earlier; keeping only this instant saves 8 bytes a key.)
    pub expires_at: Nanos,
    /// Cost admitted in the window before the current one.
    pub previous: u64,
    /// Cost admitted in the current window.
    pub current: u64,
}

/// `floor(a * b / c)`, exact.
fn mul_div(a: u64, b: u64, c: u64) -> u64 {
    (u128::from(a) * u128::from(b) / u128::from(c)) as u64
}

impl StateMachine for SlidingWindow {
    type State = SlidingWindowState;

    fn decide(
        state: Option<&SlidingWindowState>,
        now: Nanos,
        quota: &Quota,
        cost: u64,
    ) -> (Decision, Option<SlidingWindowState>) {
        let limit = quota.limit();
        let period = quota.period_nanos();
        let aligned_end = window_start(now, period) + period;
        let (window_end, previous, current) = match state.map(|s| (s.expires_at - period, s)) {
            // The same window (or a later one, if the clock went back).
            Some((end, s)) if end > now => (end, s.previous, s.current),
            // The state's window just ended: it becomes the previous one.
            Some((end, s)) if end + period == aligned_end => (aligned_end, s.current, 0),
            _ => (aligned_end, 0, 0),
        };
        let start = window_end - period;
        let left = period - (now.max(start) - start); // of the current window, in (0, period]
                                                      // ceil(previous * left / period)
        let weighted =
            (u128::from(previous) * u128::from(left)).div_ceil(u128::from(period)) as u64;
        let used = weighted + current;

        let reset_after = |current: u64| {
            if current > 0 {
                window_end + period - now
            } else if previous > 0 {
                window_end - now
            } else {
                0
            }
        };

        if used + cost <= limit {
            let current = current + cost;
            let decision = Decision::allow(limit, limit - used - cost, reset_after(current));
            let next = SlidingWindowState {
                expires_at: window_end + period,
                previous,
                current,
            };
            (decision, Some(next))
        } else {
            let retry_at = earliest_admission(window_end, period, previous, current, limit, cost);
            let decision = Decision::deny(
                limit,
                limit.saturating_sub(used),
                reset_after(current),
                retry_at - now,
            );
            (decision, None)
        }
    }

    fn expires_at(state: &SlidingWindowState) -> Nanos {
        state.expires_at
    }
}

/// The first instant at which a request of `cost` passes, if nothing else is admitted first.
///
/// In a window with `p` weighted from the previous one and `room` left after the current count,
/// the request passes once `ceil(p * left / period) <= room`, i.e. once
/// `left <= floor(room * period / p)`. If that does not happen before the window ends, the same
/// reasoning applies to the next window, where the current count becomes the previous one.
fn earliest_admission(
    window_end: Nanos,
    period: u64,
    previous: u64,
    current: u64,
    limit: u64,
    cost: u64,
) -> Nanos {
    let start = window_end - period;
    if let Some(room) = limit.checked_sub(current + cost) {
        if previous > 0 {
            let at = window_end.saturating_sub(mul_div(room, period, previous));
            if at < window_end {
                return at.max(start);
            }
        }
    }
    // Next window: `current` is the previous count and nothing is current yet.
    let room = limit - cost;
    if current == 0 {
        return window_end;
    }
    let free_left = mul_div(room, period, current).min(period);
    window_end + period - free_left
}
