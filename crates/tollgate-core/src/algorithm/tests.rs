//! Every algorithm against a simple reference model, on random arrivals.

use proptest::prelude::*;

use super::*;
use crate::quota::MAX_PERIOD_NANOS;

/// Runs arrivals `(gap since previous, cost)` through a machine from an empty state, checking
/// on the way that `check` and `commit` (what stores use) agree with `decide` (the spec).
fn simulate<M: StateMachine>(
    quota: &Quota,
    arrivals: &[(u64, u64)],
) -> Vec<(Nanos, u64, Decision, Option<M::State>)>
where
    M::State: PartialEq + std::fmt::Debug,
{
    let mut state: Option<M::State> = None;
    let mut now: Nanos = 1_700_000_000_000_000_000;
    let mut out = Vec::new();
    for &(gap, cost) in arrivals {
        now += gap;
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
                "check = decide"
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

/// A quota with a period of 1 ns to 10 s (often a whole number of ms) and a limit it can hold.
fn quotas() -> impl Strategy<Value = Quota> {
    (
        1u64..=20,
        prop_oneof![
            1u64..=10_000_000_000,
            (1u64..=10_000).prop_map(|m| m * 1_000_000)
        ],
    )
        .prop_filter_map("rate too high", |(limit, period)| {
            Quota::new(limit, std::time::Duration::from_nanos(period)).ok()
        })
}

/// Arrivals whose gaps are on the scale of the quota's interval, and costs within capacity.
fn arrivals(quota: Quota, capacity: u64) -> impl Strategy<Value = Vec<(u64, u64)>> {
    let interval = quota.interval_nanos();
    let gap = prop_oneof![
        Just(0u64),
        0..=interval * 2,
        0..=quota.period_nanos() * 2,
        Just(interval),
    ];
    prop::collection::vec((gap, 1..=capacity), 1..120)
}

fn quota_and_arrivals(algorithm: Algorithm) -> impl Strategy<Value = (Quota, Vec<(u64, u64)>)> {
    quotas()
        .prop_flat_map(|q| (Just(q), 1..=q.limit()))
        .prop_filter_map("burst", |(q, burst)| q.with_burst(burst).ok())
        .prop_flat_map(move |q| {
            let capacity = algorithm.capacity(&q);
            (Just(q), arrivals(q, capacity))
        })
}

/// Waiting exactly `retry_after` after a denial is admitted; one nanosecond less is not.
fn assert_retry_after_exact<M: StateMachine>(
    quota: &Quota,
    runs: &[(Nanos, u64, Decision, Option<M::State>)],
) -> Result<(), TestCaseError> {
    for (now, cost, decision, before) in runs {
        if let Some(wait) = decision.retry_after {
            let wait = wait.as_nanos() as u64;
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
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn gcra_is_a_token_bucket((quota, arrivals) in quota_and_arrivals(Algorithm::Gcra)) {
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
            prop_assert_eq!(decision.remaining, level / t);
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
    fn fixed_window_never_exceeds_the_limit_per_window(
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
            prop_assert_eq!(decision.remaining, quota.limit() - *used);
            prop_assert_eq!(decision.reset_after.as_nanos() as u64, period - now % period);
        }
        assert_retry_after_exact::<FixedWindow>(&quota, &runs)?;
    }

    #[test]
    fn sliding_log_never_exceeds_the_limit_in_any_window(
        (quota, arrivals) in quota_and_arrivals(Algorithm::SlidingLog)
    ) {
        let runs = simulate::<SlidingLog>(&quota, &arrivals);
        let period = quota.period_nanos();
        let mut admitted: Vec<(Nanos, u64)> = Vec::new();
        for (now, cost, decision, _) in &runs {
            let used: u64 = admitted.iter().filter(|(at, _)| at + period > *now).map(|(_, c)| c).sum();
            let admit = used + cost <= quota.limit();
            prop_assert_eq!(decision.allowed, admit);
            if admit {
                admitted.push((*now, *cost));
            }
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
            // Never more than the limit in one fixed window.
            prop_assert!(sum_in(&admitted, window) <= quota.limit());
        }
        assert_retry_after_exact::<SlidingWindow>(&quota, &runs)?;
    }
}

#[test]
fn arithmetic_holds_at_the_extremes() {
    let now: Nanos = 1_700_000_000_000_000_000;
    for quota in [
        Quota::per_day(1).unwrap(),
        Quota::per_second(1_000_000_000).unwrap(),
        Quota::new(
            1_000_000_000,
            std::time::Duration::from_nanos(MAX_PERIOD_NANOS),
        )
        .unwrap(),
        Quota::new(1, std::time::Duration::from_nanos(MAX_PERIOD_NANOS)).unwrap(),
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
        let wait = denied.retry_after.unwrap().as_nanos() as u64;
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
