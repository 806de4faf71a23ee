use std::collections::VecDeque;

use crate::algorithm::StateMachine;
use crate::clock::Nanos;
use crate::decision::Decision;
use crate::quota::Quota;

/// Sliding-window log: exactly `limit` in any interval of length `period`.
///
/// "1,000 requests in any 1 hour interval are allowed, the 1,001st is not." The state remembers
/// every admitted request still inside the window, so memory grows with the limit: use it when
/// the limit is a contract, and one of the O(1) algorithms otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct SlidingLog;

/// A sliding log's state: admitted requests still in the window, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlidingLogState {
    /// `(admitted at, cost)`, sorted by time.
    pub entries: VecDeque<(Nanos, u64)>,
    /// The sum of the entries' costs, so that the cost in the window is this minus the expired
    /// entries at the front: a decision costs O(expired), not O(entries).
    pub total: u64,
    /// When the newest entry leaves the window.
    pub expires_at: Nanos,
}

impl StateMachine for SlidingLog {
    type State = SlidingLogState;

    fn decide(
        state: Option<&SlidingLogState>,
        now: Nanos,
        quota: &Quota,
        cost: u64,
    ) -> (Decision, Option<SlidingLogState>) {
        let limit = quota.limit();
        let period = quota.period_nanos();
        // An entry counts while `at > now - period`: one admitted exactly `period` ago has left.
        let live = |at: Nanos| at.saturating_add(period) > now;
        let entries = state.map(|s| &s.entries);
        let used = state.map_or(0, |s| live_cost(s, now, quota));
        let newest = entries.and_then(|e| e.back()).map(|(at, _)| *at);

        if used + cost <= limit {
            let mut next = SlidingLogState::default();
            next.entries
                .extend(entries.into_iter().flatten().filter(|(at, _)| live(*at)));
            next.total = used + cost;
            if cost > 0 {
                // Keep the log sorted even if the clock went back.
                let pos = next.entries.partition_point(|(at, _)| *at <= now);
                match pos.checked_sub(1).map(|i| &mut next.entries[i]) {
                    Some((at, c)) if *at == now => *c += cost,
                    _ => next.entries.insert(pos, (now, cost)),
                }
            }
            let newest = next.entries.back().map_or(now, |(at, _)| *at);
            next.expires_at = newest.saturating_add(period);
            let reset_after = if next.entries.is_empty() {
                0
            } else {
                next.expires_at.saturating_sub(now)
            };
            let decision = Decision::allow(limit, limit - used - cost, reset_after);
            (decision, Some(next))
        } else {
            // Wait until enough of the oldest entries have left the window.
            let excess = used + cost - limit;
            let mut freed = 0;
            let mut retry_after = period;
            for (at, c) in entries.into_iter().flatten().filter(|(at, _)| live(*at)) {
                freed += c;
                if freed >= excess {
                    retry_after = at + period - now;
                    break;
                }
            }
            let reset_after = newest.map_or(0, |n| (n + period).saturating_sub(now));
            let decision =
                Decision::deny(limit, limit.saturating_sub(used), reset_after, retry_after);
            (decision, None)
        }
    }

    fn expires_at(state: &SlidingLogState) -> Nanos {
        state.expires_at
    }

    fn check(state: Option<&SlidingLogState>, now: Nanos, quota: &Quota, cost: u64) -> Decision {
        let Some(log) = state else {
            return Self::decide(None, now, quota, cost).0;
        };
        let used = live_cost(log, now, quota);
        if cost == 0 || used + cost > quota.limit() {
            // Peeks and denials: `decide` builds no new log for a denial, and peeks are rare.
            return Self::decide(state, now, quota, cost).0;
        }
        // Admitted: the figures of the log `decide` would build, without building it.
        let newest = log.entries.back().map_or(now, |(at, _)| (*at).max(now));
        let reset_after = newest.saturating_add(quota.period_nanos()) - now;
        Decision::allow(quota.limit(), quota.limit() - used - cost, reset_after)
    }

    fn commit(
        state: Option<&mut SlidingLogState>,
        now: Nanos,
        quota: &Quota,
        cost: u64,
    ) -> Option<SlidingLogState> {
        let Some(log) = state else {
            return Self::decide(None, now, quota, cost).1;
        };
        if cost == 0 || live_cost(log, now, quota) + cost > quota.limit() {
            return None;
        }
        let period = quota.period_nanos();
        // The log is sorted, so expired entries are at the front; the new one goes at the back
        // (or in order, if the clock went back), exactly as `decide` builds it.
        while let Some(&(at, c)) = log.entries.front() {
            if at.saturating_add(period) > now {
                break;
            }
            log.entries.pop_front();
            log.total -= c;
        }
        log.total += cost;
        let pos = log.entries.partition_point(|(at, _)| *at <= now);
        match pos.checked_sub(1).map(|i| &mut log.entries[i]) {
            Some((at, c)) if *at == now => *c += cost,
            _ => log.entries.insert(pos, (now, cost)),
        }
        let newest = log.entries.back().map_or(now, |(at, _)| *at);
        log.expires_at = newest.saturating_add(period);
        None
    }
}

/// Cost admitted within the window that ends at `now`: the total less the expired entries,
/// which the sorted log keeps at its front.
fn live_cost(log: &SlidingLogState, now: Nanos, quota: &Quota) -> u64 {
    let period = quota.period_nanos();
    let expired: u64 = log
        .entries
        .iter()
        .take_while(|(at, _)| at.saturating_add(period) <= now)
        .map(|(_, c)| c)
        .sum();
    log.total - expired
}
