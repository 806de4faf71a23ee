use crate::algorithm::StateMachine;
use crate::clock::Nanos;
use crate::decision::Decision;
use crate::quota::Quota;

/// Generic cell rate algorithm: the default.
///
/// The state is one instant, the theoretical arrival time (TAT): when the bucket will be whole
/// again. Each request of cost `c` pushes it `c * T` later (`T = period / limit`); a request is
/// admitted when that leaves the TAT at most `burst * T` ahead of now. Equivalent to a token
/// bucket of `burst` tokens refilled one every `T`, with no refill timer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gcra;

/// GCRA's state: the theoretical arrival time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraState {
    /// When the quota will be whole again.
    pub tat: Nanos,
}

impl StateMachine for Gcra {
    type State = GcraState;

    fn decide(
        state: Option<&GcraState>,
        now: Nanos,
        quota: &Quota,
        cost: u64,
    ) -> (Decision, Option<GcraState>) {
        let interval = quota.interval_nanos();
        let tolerance = quota.burst() * interval; // <= 2^52: MAX_BURST_SPAN_NANOS
                                                  // How far ahead of now the quota is already committed.
        let used = state.map_or(0, |s| s.tat.saturating_sub(now));
        let wanted = used.saturating_add(cost * interval);
        if wanted <= tolerance {
            let remaining = (tolerance - wanted) / interval;
            let decision = Decision::allow(quota.burst(), remaining, wanted);
            (decision, Some(GcraState { tat: now + wanted }))
        } else {
            let remaining = tolerance.saturating_sub(used) / interval;
            // After waiting `wanted - tolerance`, `used` has shrunk by as much.
            let decision = Decision::deny(quota.burst(), remaining, used, wanted - tolerance);
            (decision, None)
        }
    }

    fn expires_at(state: &GcraState) -> Nanos {
        state.tat
    }
}
