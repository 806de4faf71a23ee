use crate::algorithm::{window_start, StateMachine};
use crate::clock::Nanos;
use crate::decision::Decision;
use crate::quota::Quota;

/// Fixed window: at most `limit` per window, windows aligned on multiples of the period since
/// the Unix epoch, so a one-minute window resets on the minute.
///
/// The cheapest algorithm, and what most APIs document. Its known weakness: up to `2 * limit`
/// requests can pass around a window boundary.
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedWindow;

/// A fixed window's state: which window, and how much of it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedWindowState {
    /// End of the window the count belongs to.
    pub window_end: Nanos,
    /// Cost admitted in that window.
    pub count: u64,
}

impl StateMachine for FixedWindow {
    type State = FixedWindowState;

    fn decide(
        state: Option<&FixedWindowState>,
        now: Nanos,
        quota: &Quota,
        cost: u64,
    ) -> (Decision, Option<FixedWindowState>) {
        let limit = quota.limit();
        let (window_end, count) = match state {
            // Still the window the state counts (or a later one, if the clock went back).
            Some(s) if s.window_end > now => (s.window_end, s.count),
            _ => (
                window_start(now, quota.period_nanos()) + quota.period_nanos(),
                0,
            ),
        };
        let reset_after = window_end - now;
        if count + cost <= limit {
            let decision = Decision::allow(limit, limit - count - cost, reset_after);
            let count = count + cost;
            (decision, Some(FixedWindowState { window_end, count }))
        } else {
            // The next window starts empty, and a cost never exceeds the limit.
            let remaining = limit.saturating_sub(count);
            let decision = Decision::deny(limit, remaining, reset_after, reset_after);
            (decision, None)
        }
    }

    fn expires_at(state: &FixedWindowState) -> Nanos {
        state.window_end
    }
}
