//! Every algorithm against a simple reference model, on random arrivals; then the same with a
//! clock that steps back, and one unit test per "clock went back" branch of the window
//! algorithms.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::clock::saturating_nanos as nanos;
use crate::quota::MAX_PERIOD_NANOS;

/// Runs arrivals `(step since the previous arrival, cost)` through a machine from an empty
/// state; a negative step is the clock going back. Checks on the way that `commit` and `check`
/// (what stores use) agree with `decide` (the spec).
///
/// Only the sliding log overrides `check`, so for the other three `check = decide` holds by
/// construction: the comparison is there so that a future override is covered from its first
/// day. The sliding log's override is what it tests today (with every strategy below, including
/// a clock that steps back), on the request's cost and on the probes a store sends (0 and 1).
fn simulate<M: StateMachine>(
    quota: &Quota,
    arrivals: &[(i64, u64)],
) -> Vec<(Nanos, u64, Decision, Option<M::State>)>
where
    M::State: PartialEq + std::fmt::Debug,
{
    let mut state: Option<M::State> = None;
    let mut now: Nanos = START;
    let mut out = Vec::new();
    for &(step, cost) in arrivals {
        now = now
            .checked_add_signed(step)
            .expect("arrivals stay near START");
        let (decision, next) = M::decide(state.as_ref(), now, quota, cost);
        assert_eq!(
            decision.allowed,
            next.is_some(),
            "a new state exactly when admitted"
        );
        for probe in [cost, 0, 1] {
            let (expected, _) = M::decide(state.as_ref(), now, quota, probe);
            assert_eq!(
                M::check(state.as_ref(), now, quota, probe),
                expected,
                "check = decide (cost {probe})"
            );
        }
        let mut in_place = state.clone();
        let fresh = M::commit(in_place.as_mut(), now, quota, cost);
        let committed = if in_place.is_some() { in_place } else { fresh };
        let before = state.clone();
        if let Some(next) = next {
            state = Some(next);
        }
        assert_eq!(committed, state, "commit = decide's new state");
        out.push((now, cost, decision, before));
    }
    out
}

/// Where every simulation starts: a whole second, so windows of whole milliseconds align on it.
const START: Nanos = 1_700_000_000_000_000_000;

/// A limit: mostly small, so that a hundred arrivals reach it and cross window boundaries full,
/// sometimes large (up to 10,000), where costs and intervals are far from 1.
fn limits() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 1u64..=20, 1 => 21u64..=10_000]
}

/// A burst for `limit`: GCRA accepts any (the window algorithms ignore it), so from 1 to four
/// times the limit, with the edges (1, the limit) drawn on purpose.
fn bursts(limit: u64) -> impl Strategy<Value = u64> {
    prop_oneof![Just(1), Just(limit), 1..=limit, limit..=limit * 4,]
}

/// A quota with a period of 1 ns to 10 s (often a whole number of ms), a limit it can hold, and a
/// burst below, at or above the limit.
fn quotas() -> impl Strategy<Value = Quota> {
    (
        limits(),
        prop_oneof![
            1u64..=10_000_000_000,
            (1u64..=10_000).prop_map(|m| m * 1_000_000)
        ],
    )
        .prop_filter_map("rate too high", |(limit, period)| {
            Quota::new(limit, Duration::from_nanos(period)).ok()
        })
        .prop_flat_map(|q| (Just(q), bursts(q.limit())))
        .prop_filter_map("burst too large", |(q, burst)| q.with_burst(burst).ok())
}

/// Costs within `capacity`: often 1 (a large limit is then reached only slowly), sometimes a
/// random share of it, sometimes all of it.
fn costs(capacity: u64) -> impl Strategy<Value = u64> {
    prop_oneof![Just(1), 1..=capacity.min(3), 1..=capacity, Just(capacity)]
}

/// Arrivals moving forwards, with gaps on the scale of the quota's interval and period.
fn arrivals(quota: Quota, capacity: u64) -> impl Strategy<Value = Vec<(i64, u64)>> {
    prop::collection::vec((forward(quota), costs(capacity)), 1..120)
}

fn forward(quota: Quota) -> impl Strategy<Value = i64> {
    let interval = quota.interval_nanos() as i64;
    let period = quota.period_nanos() as i64;
    prop_oneof![Just(0), 0..=interval * 2, 0..=period * 2, Just(interval)]
}

/// Arrivals where one step in five goes back, by up to three periods: a clock that is not
/// monotonic (or stores fed by several clocks). Forward steps are as in [`arrivals`], so that
/// the state is in use when the clock goes back.
fn arrivals_stepping_back(quota: Quota, capacity: u64) -> impl Strategy<Value = Vec<(i64, u64)>> {
    let interval = quota.interval_nanos() as i64;
    let period = quota.period_nanos() as i64;
    let step = prop_oneof![
        4 => forward(quota),
        1 => prop_oneof![1..=interval * 2, 1..=period * 3].prop_map(|back| -back),
    ];
    prop::collection::vec((step, costs(capacity)), 1..120)
}

fn quota_and_arrivals(algorithm: Algorithm) -> impl Strategy<Value = (Quota, Vec<(i64, u64)>)> {
    quotas().prop_flat_map(move |q| (Just(q), arrivals(q, algorithm.capacity(&q))))
}

fn quota_and_arrivals_stepping_back(
    algorithm: Algorithm,
) -> impl Strategy<Value = (Quota, Vec<(i64, u64)>)> {
    quotas().prop_flat_map(move |q| (Just(q), arrivals_stepping_back(q, algorithm.capacity(&q))))
}

/// Waiting exactly `retry_after` after a denial is admitted; one nanosecond less is not.
fn assert_retry_after_exact<M: StateMachine>(
    quota: &Quota,
    runs: &[(Nanos, u64, Decision, Option<M::State>)],
) -> Result<(), TestCaseError> {
    for (now, cost, decision, before) in runs {
        if let Some(wait) = decision.retry_after {
            let wait = nanos(wait);
            prop_assert!(!decision.allowed && wait > 0);
            let (later, _) = M::decide(before.as_ref(), now + wait, quota, *cost);
            prop_assert!(
                later.allowed,
                "not admitted after waiting retry_after={wait}"
            );
            let (earlier, _) = M::decide(before.as_ref(), now + wait - 1, quota, *cost);
            prop_assert!(!earlier.allowed, "retry_after={wait} is not the earliest");
        } else {
            prop_assert!(decision.allowed);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn gcra_is_a_token_bucket_of_burst_tokens((quota, arrivals) in quota_and_arrivals(Algorithm::Gcra)) {
        let runs = simulate::<Gcra>(&quota, &arrivals);
        // Reference: a bucket of burst * T nanoseconds of credit, refilled one per nanosecond.
        let t = quota.interval_nanos();
        let full = quota.burst() * t;
        let (mut level, mut last) = (full, runs[0].0);
        let mut admitted: Vec<(Nanos, u64)> = Vec::new();
        for (now, cost, decision, _) in &runs {
            level = (level + (now - last)).min(full);
            last = *now;
            let admit = level >= cost * t;
            prop_assert_eq!(decision.allowed, admit, "at {}", now);
            if admit {
                level -= cost * t;
                admitted.push((*now, *cost));
            }
            prop_assert_eq!(decision.limit, quota.burst());
            prop_assert_eq!(decision.remaining, level / t);
            // Until the bucket is full again.
            prop_assert_eq!(nanos(decision.reset_after), full - level);
        }
        // Never more than burst + elapsed / interval between any two admissions.
        for (i, (ti, _)) in admitted.iter().enumerate() {
            let mut sum = 0;
            for (tj, cj) in &admitted[i..] {
                sum += cj;
                prop_assert!(sum <= quota.burst() + (tj - ti) / t);
            }
        }
        assert_retry_after_exact::<Gcra>(&quota, &runs)?;
    }

    #[test]
    fn fixed_window_admits_the_limit_per_window_and_resets_on_its_end(
        (quota, arrivals) in quota_and_arrivals(Algorithm::FixedWindow)
    ) {
        let runs = simulate::<FixedWindow>(&quota, &arrivals);
        let period = quota.period_nanos();
        let mut per_window = std::collections::HashMap::<u64, u64>::new();
        for (now, cost, decision, _) in &runs {
            let used = per_window.entry(now / period).or_default();
            let admit = *used + cost <= quota.limit();
            prop_assert_eq!(decision.allowed, admit);
            if admit {
                *used += cost;
            }
            prop_assert_eq!(decision.limit, quota.limit());
            prop_assert_eq!(decision.remaining, quota.limit() - *used);
            prop_assert_eq!(nanos(decision.reset_after), period - now % period);
        }
        assert_retry_after_exact::<FixedWindow>(&quota, &runs)?;
    }

    #[test]
    fn sliding_log_admits_the_limit_in_any_window_and_resets_when_the_newest_leaves(
        (quota, arrivals) in quota_and_arrivals(Algorithm::SlidingLog)
    ) {
        let runs = simulate::<SlidingLog>(&quota, &arrivals);
        let period = quota.period_nanos();
        let mut admitted: Vec<(Nanos, u64)> = Vec::new();
        for (now, cost, decision, _) in &runs {
            let live = |admitted: &[(Nanos, u64)]| -> Vec<(Nanos, u64)> {
                admitted.iter().copied().filter(|(at, _)| at + period > *now).collect()
            };
            let used: u64 = live(&admitted).iter().map(|(_, c)| c).sum();
            let admit = used + cost <= quota.limit();
            prop_assert_eq!(decision.allowed, admit);
            if admit {
                admitted.push((*now, *cost));
            }
            let in_window = live(&admitted);
            let used_after: u64 = in_window.iter().map(|(_, c)| c).sum();
            prop_assert_eq!(decision.limit, quota.limit());
            prop_assert_eq!(decision.remaining, quota.limit().saturating_sub(used_after));
            // Until the newest entry in the window leaves it; zero for an empty window.
            let reset = in_window.iter().map(|(at, _)| at + period - now).max().unwrap_or(0);
            prop_assert_eq!(nanos(decision.reset_after), reset, "at {}", now);
        }
        // In any window (t - period, t] ending at an admission: at most `limit`.
        for (t, _) in &admitted {
            let sum: u64 = admitted
                .iter()
                .filter(|(at, _)| at <= t && at + period > *t)
                .map(|(_, c)| c)
                .sum();
            prop_assert!(sum <= quota.limit());
        }
        assert_retry_after_exact::<SlidingLog>(&quota, &runs)?;
    }

    #[test]
    fn sliding_window_matches_its_estimate_from_history(
        (quota, arrivals) in quota_and_arrivals(Algorithm::SlidingWindow)
    ) {
        let runs = simulate::<SlidingWindow>(&quota, &arrivals);
        let period = quota.period_nanos();
        let mut admitted: Vec<(Nanos, u64)> = Vec::new();
        for (now, cost, decision, _) in &runs {
            let window = now / period;
            let sum_in = |admitted: &[(Nanos, u64)], w: u64| -> u64 {
                admitted.iter().filter(|(at, _)| at / period == w).map(|(_, c)| c).sum()
            };
            let previous = if window > 0 { sum_in(&admitted, window - 1) } else { 0 };
            let current = sum_in(&admitted, window);
            let left = period - now % period;
            let weighted = (u128::from(previous) * u128::from(left)).div_ceil(u128::from(period)) as u64;
            let admit = weighted + current + cost <= quota.limit();
            prop_assert_eq!(decision.allowed, admit, "at {}", now);
            if admit {
                admitted.push((*now, *cost));
            }
            let current = sum_in(&admitted, window);
            // Never more than the limit in one fixed window.
            prop_assert!(current <= quota.limit());
            prop_assert_eq!(decision.limit, quota.limit());
            prop_assert_eq!(decision.remaining, quota.limit().saturating_sub(weighted + current));
            // Until the estimate is back to zero: the end of the next window while the current
            // one holds a count, else the end of this one while the previous one does.
            let window_end = (window + 1) * period;
            let reset = if current > 0 {
                window_end + period - now
            } else if previous > 0 {
                window_end - now
            } else {
                0
            };
            prop_assert_eq!(nanos(decision.reset_after), reset, "at {}", now);
        }
        assert_retry_after_exact::<SlidingWindow>(&quota, &runs)?;
    }
}

// # A clock that goes back
//
// A `now` earlier than the instants in the stored state (a clock stepped back, or stores fed by
// several clocks). The documented behaviour: no panic and no underflow, never admitting more than
// the state allows (what was admitted "in the future" still counts), and a denial's `retry_after`
// is still above zero and exact.

/// Shifts a decision's waits by `by` nanoseconds: the answer at `now` when the algorithm decides
/// as if at `now + by`.
fn waits_longer_by(decision: Decision, by: u64) -> Decision {
    let by = Duration::from_nanos(by);
    Decision {
        reset_after: decision.reset_after + by,
        retry_after: decision.retry_after.map(|w| w + by),
        ..decision
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn gcra_counts_what_is_ahead_of_a_clock_that_steps_back(
        (quota, arrivals) in quota_and_arrivals_stepping_back(Algorithm::Gcra)
    ) {
        let runs = simulate::<Gcra>(&quota, &arrivals);
        let t = quota.interval_nanos();
        for (now, cost, decision, before) in &runs {
            // Everything committed ahead of now is in use, however far ahead.
            let used = before.map_or(0, |s| s.tat.saturating_sub(*now));
            let admit = used + cost * t <= quota.burst() * t;
            prop_assert_eq!(decision.allowed, admit, "at {}", now);
            let used = if admit { used + cost * t } else { used };
            prop_assert_eq!(decision.remaining, (quota.burst() * t - used.min(quota.burst() * t)) / t);
            prop_assert_eq!(nanos(decision.reset_after), used);
        }
        assert_retry_after_exact::<Gcra>(&quota, &runs)?;
    }

    #[test]
    fn fixed_window_keeps_a_later_windows_count_when_the_clock_steps_back(
        (quota, arrivals) in quota_and_arrivals_stepping_back(Algorithm::FixedWindow)
    ) {
        let runs = simulate::<FixedWindow>(&quota, &arrivals);
        let period = quota.period_nanos();
        for (now, cost, decision, before) in &runs {
            match before {
                // The state's window is later than now's: decided as at that window's start,
                // with the waits running from now.
                Some(s) if s.window_end - period > *now => {
                    let start = s.window_end - period;
                    let (at_start, _) = FixedWindow::decide(Some(s), start, &quota, *cost);
                    prop_assert_eq!(*decision, waits_longer_by(at_start, start - now));
                    prop_assert_eq!(decision.allowed, s.count + cost <= quota.limit());
                }
                // Now is in the state's window: as without a step back.
                Some(s) if s.window_end > *now => {
                    let admit = s.count + cost <= quota.limit();
                    prop_assert_eq!(decision.allowed, admit);
                    let used = if admit { s.count + cost } else { s.count };
                    prop_assert_eq!(decision.remaining, quota.limit() - used);
                    prop_assert_eq!(nanos(decision.reset_after), s.window_end - now);
                }
                // The state's window has ended (or there is none): a fresh window.
                _ => {
                    prop_assert!(decision.allowed);
                    prop_assert_eq!(nanos(decision.reset_after), period - now % period);
                }
            }
        }
        assert_retry_after_exact::<FixedWindow>(&quota, &runs)?;
    }

    #[test]
    fn sliding_log_counts_entries_ahead_of_a_clock_that_steps_back(
        (quota, arrivals) in quota_and_arrivals_stepping_back(Algorithm::SlidingLog)
    ) {
        let runs = simulate::<SlidingLog>(&quota, &arrivals);
        let period = quota.period_nanos();
        // Reference: what the log holds, unsorted. An entry counts while `at + period > now`,
        // so one ahead of now counts; expired entries are dropped when a request is admitted.
        let mut log: Vec<(Nanos, u64)> = Vec::new();
        for (now, cost, decision, before) in &runs {
            let live: Vec<(Nanos, u64)> =
                log.iter().copied().filter(|(at, _)| at + period > *now).collect();
            let used: u64 = live.iter().map(|(_, c)| c).sum();
            let admit = used + cost <= quota.limit();
            prop_assert_eq!(decision.allowed, admit, "at {}", now);
            if admit {
                log = live;
                log.push((*now, *cost));
            }
            let in_window: Vec<_> = log.iter().filter(|(at, _)| at + period > *now).collect();
            let used_after: u64 = in_window.iter().map(|(_, c)| c).sum();
            prop_assert_eq!(decision.remaining, quota.limit().saturating_sub(used_after));
            let reset = in_window.iter().map(|(at, _)| at + period - now).max().unwrap_or(0);
            prop_assert_eq!(nanos(decision.reset_after), reset, "at {}", now);
            // The stored log stays sorted, whatever order the entries came in.
            if let Some(s) = before {
                prop_assert!(s.entries.iter().zip(s.entries.iter().skip(1)).all(|(a, b)| a.0 < b.0));
            }
        }
        assert_retry_after_exact::<SlidingLog>(&quota, &runs)?;
    }

    #[test]
    fn sliding_window_weighs_the_previous_window_in_full_before_the_current_one_starts(
        (quota, arrivals) in quota_and_arrivals_stepping_back(Algorithm::SlidingWindow)
    ) {
        let runs = simulate::<SlidingWindow>(&quota, &arrivals);
        let period = quota.period_nanos();
        for (now, cost, decision, before) in &runs {
            let Some(s) = before else { continue };
            let start = s.expires_at - 2 * period;
            if *now < start {
                // Decided as at the current window's start (the previous count weighs in full),
                // with the waits running from now.
                let (at_start, next_at_start) = SlidingWindow::decide(Some(s), start, &quota, *cost);
                prop_assert_eq!(*decision, waits_longer_by(at_start, start - now));
                let admit = s.previous + s.current + cost <= quota.limit();
                prop_assert_eq!(decision.allowed, admit);
                let used = s.previous + s.current + if admit { *cost } else { 0 };
                prop_assert_eq!(decision.remaining, quota.limit().saturating_sub(used));
                let (_, next) = SlidingWindow::decide(Some(s), *now, &quota, *cost);
                prop_assert_eq!(next, next_at_start);
            }
        }
        assert_retry_after_exact::<SlidingWindow>(&quota, &runs)?;
    }
}

/// `x` ms after [`START`] (negative: before). `START` is a whole second, so the 1 s windows of
/// the unit tests below start on every `ms(k * 1_000)`.
fn ms(x: i64) -> Nanos {
    START.checked_add_signed(x * 1_000_000).unwrap()
}

/// The branch `Some(s) if s.window_end > now` of `FixedWindow::decide` with `window_end` more than
/// a period after now.
#[test]
fn fixed_window_denies_by_a_later_windows_count_and_waits_for_its_end() {
    let quota = Quota::per_second(3).unwrap();
    let (_, state) = FixedWindow::decide(None, ms(500), &quota, 2);
    let state = state.unwrap();
    assert_eq!(state.window_end, ms(1_000));

    // 2.5 s back: the window of ms(-2_000) would start empty; the stored count still holds.
    let now = ms(-2_000);
    let (admitted, next) = FixedWindow::decide(Some(&state), now, &quota, 1);
    assert!(admitted.allowed);
    assert_eq!(
        (admitted.remaining, admitted.reset_after),
        (0, Duration::from_millis(3_000))
    );
    let next = next.unwrap();
    assert_eq!(
        next,
        FixedWindowState {
            window_end: ms(1_000),
            count: 3
        }
    );

    let (denied, none) = FixedWindow::decide(Some(&next), now, &quota, 1);
    assert!(!denied.allowed && none.is_none());
    assert_eq!(denied.remaining, 0);
    assert_eq!(denied.retry_after, Some(Duration::from_millis(3_000)));
    assert!(
        !FixedWindow::decide(Some(&next), ms(999), &quota, 1)
            .0
            .allowed
    );
    assert!(
        FixedWindow::decide(Some(&next), ms(1_000), &quota, 1)
            .0
            .allowed
    );
}

/// `SlidingLog`'s branches for entries ahead of now: `live` keeps them, the new entry is inserted
/// in order (`partition_point`, before a later entry; merged with an equal one), `reset_after`
/// runs to the newest entry's exit, and a denial waits for the oldest entries to leave; in
/// `decide`, `check` (`.max(now)`) and `commit`.
#[test]
fn sliding_log_counts_and_orders_entries_ahead_of_a_clock_that_went_back() {
    let quota = Quota::per_second(4).unwrap();
    let mut state = None;
    let step = |state: &mut Option<SlidingLogState>, at: Nanos, cost: u64| {
        let (decision, next) = SlidingLog::decide(state.as_ref(), at, &quota, cost);
        assert_eq!(
            SlidingLog::check(state.as_ref(), at, &quota, cost),
            decision
        );
        let mut in_place = state.clone();
        let fresh = SlidingLog::commit(in_place.as_mut(), at, &quota, cost);
        if let Some(next) = next {
            *state = Some(next);
        }
        assert_eq!(in_place.or(fresh), *state, "commit = decide");
        decision
    };
    assert!(step(&mut state, ms(0), 1).allowed);
    assert!(step(&mut state, ms(800), 1).allowed);

    // Back to 200 ms: between the two entries. The newest (800 ms) still sets the reset.
    let d = step(&mut state, ms(200), 1);
    assert!(d.allowed);
    assert_eq!(
        (d.remaining, d.reset_after),
        (1, Duration::from_millis(1_600))
    );
    let d = step(&mut state, ms(200), 1);
    assert_eq!((d.allowed, d.remaining), (true, 0));
    let log = state.clone().unwrap();
    let entries: Vec<_> = log.entries.iter().copied().collect();
    assert_eq!(entries, [(ms(0), 1), (ms(200), 2), (ms(800), 1)]);
    assert_eq!((log.total, log.expires_at), (4, ms(1_800)));

    // Back to -500 ms, before every entry: all four count, so the log is full.
    let d = step(&mut state, ms(-500), 1);
    assert!(!d.allowed);
    assert_eq!(d.remaining, 0);
    assert_eq!(
        d.reset_after,
        Duration::from_millis(2_300),
        "until 800 ms + 1 s"
    );
    assert_eq!(
        d.retry_after,
        Some(Duration::from_millis(1_500)),
        "until 0 ms + 1 s"
    );
    assert!(!SlidingLog::decide(Some(&log), ms(999), &quota, 1).0.allowed);
    assert!(
        SlidingLog::decide(Some(&log), ms(1_000), &quota, 1)
            .0
            .allowed
    );
    // A request of 2 waits for the 200 ms entry too.
    let d = step(&mut state, ms(-500), 2);
    assert_eq!(d.retry_after, Some(Duration::from_millis(1_700)));
}

/// `SlidingWindow::decide`'s branch `Some((end, s)) if end > now` with now before the current
/// window's start (`now.max(start)` picks the start), and `earliest_admission` from there.
#[test]
fn sliding_window_before_its_current_window_counts_the_previous_one_in_full() {
    let quota = Quota::per_second(10).unwrap();
    let (_, s) = SlidingWindow::decide(None, ms(100), &quota, 4);
    let (_, s) = SlidingWindow::decide(s.as_ref(), ms(1_200), &quota, 3);
    let state = s.unwrap();
    assert_eq!(
        state,
        SlidingWindowState {
            expires_at: ms(3_000),
            previous: 4,
            current: 3
        }
    );

    // Back to 500 ms, before the current window (1 s to 2 s): the previous 4 weigh in full.
    let now = ms(500);
    let (d, next) = SlidingWindow::decide(Some(&state), now, &quota, 3);
    assert!(d.allowed);
    assert_eq!(
        (d.remaining, d.reset_after),
        (0, Duration::from_millis(2_500))
    );
    let next = next.unwrap();
    assert_eq!(
        next,
        SlidingWindowState {
            expires_at: ms(3_000),
            previous: 4,
            current: 6
        }
    );
    assert_eq!(SlidingWindow::check(Some(&state), now, &quota, 3), d);

    // Full: room 10 - 6 - 1 = 3 of the previous 4, i.e. once 3/4 of a period is left, at 1.25 s.
    let (denied, none) = SlidingWindow::decide(Some(&next), now, &quota, 1);
    assert!(!denied.allowed && none.is_none());
    assert_eq!(denied.retry_after, Some(Duration::from_millis(750)));
    assert_eq!(denied.reset_after, Duration::from_millis(2_500));
    // Too much for this window (6 + 5 > 10): the next one, where the 6 are the previous count.
    let (denied, _) = SlidingWindow::decide(Some(&next), now, &quota, 5);
    // ceil(6 * left / 1 s) <= 5 once left <= 5/6 s, i.e. at 2 s + 1/6 s.
    assert_eq!(
        denied.retry_after,
        Some(Duration::from_nanos(1_666_666_667))
    );
}

#[test]
fn arithmetic_holds_at_the_extremes() {
    let now: Nanos = 1_700_000_000_000_000_000;
    for quota in [
        Quota::per_day(1).unwrap(),
        Quota::per_second(1_000_000_000).unwrap(),
        Quota::new(1_000_000_000, Duration::from_nanos(MAX_PERIOD_NANOS)).unwrap(),
        Quota::new(1, Duration::from_nanos(MAX_PERIOD_NANOS)).unwrap(),
    ] {
        for algorithm in Algorithm::ALL {
            let first = decide_empty(algorithm, now, &quota, algorithm.capacity(&quota));
            assert!(first.allowed, "{algorithm:?} {quota:?}");
            assert_eq!(first.remaining, 0);
        }
        // Fill the bucket, then the denial's retry_after lands exactly on the next admission.
        let (d, s) = Gcra::decide(None, now, &quota, quota.burst());
        assert!(d.allowed);
        let (denied, _) = Gcra::decide(s.as_ref(), now, &quota, 1);
        let wait = nanos(denied.retry_after.unwrap());
        assert_eq!(wait, quota.interval_nanos());
        assert!(Gcra::decide(s.as_ref(), now + wait, &quota, 1).0.allowed);
    }
}

fn decide_empty(algorithm: Algorithm, now: Nanos, quota: &Quota, cost: u64) -> Decision {
    match algorithm {
        Algorithm::FixedWindow => FixedWindow::decide(None, now, quota, cost).0,
        Algorithm::SlidingLog => SlidingLog::decide(None, now, quota, cost).0,
        Algorithm::SlidingWindow => SlidingWindow::decide(None, now, quota, cost).0,
        Algorithm::Gcra => Gcra::decide(None, now, quota, cost).0,
    }
}

/// Stores and logs spell each algorithm by a distinct lowercase name.
#[test]
fn every_algorithm_has_its_documented_name() {
    let names: Vec<_> = Algorithm::ALL.iter().map(|a| a.name()).collect();
    assert_eq!(
        names,
        ["gcra", "fixed_window", "sliding_log", "sliding_window"]
    );
}
