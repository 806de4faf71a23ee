//! tollgate's GCRA agrees with governor's on random arrival sequences.
//!
//! Intended difference: governor's emission interval is `period / limit` rounded down, ours is
//! rounded up (so the long-run rate never exceeds the quota). The quotas here have a period that
//! is a whole multiple of the limit, where both are exact; governor's `tau = T * (burst - 1)` with
//! its `t0 >= tat - tau` test is then the same inequality as ours.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as _, FakeRelativeClock};
use governor::{Quota as GovernorQuota, RateLimiter};
use proptest::prelude::*;
use tollgate_core::conformance::BASE;
use tollgate_core::{Check, KeySecret, ManualClock, MemoryStore, Quota, Rule};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn gcra_decisions_agree_with_governor(
        interval_ms in 1u64..2_000,
        burst in 1u32..20,
        arrivals in prop::collection::vec((0u64..3_000, 1u32..4), 1..200),
    ) {
        let interval = Duration::from_millis(interval_ms);
        let ours = Quota::new(u64::from(burst), interval * burst).unwrap();
        let theirs = GovernorQuota::with_period(interval)
            .unwrap()
            .allow_burst(NonZeroU32::new(burst).unwrap());

        let gov_clock = FakeRelativeClock::default();
        let governor = RateLimiter::direct_with_clock(theirs, gov_clock.clone());
        let clock = ManualClock::new(BASE);
        let store = MemoryStore::builder().clock(clock.clone()).sweep_interval(None).build();
        let key = KeySecret::DEFAULT.key().part(b"k").finish();

        for (gap_ms, cost) in arrivals {
            let gap = Duration::from_millis(gap_ms);
            gov_clock.advance(gap);
            clock.advance(gap);
            let cost = cost.min(burst);
            let rule = Rule::builder("r", ours).cost(u64::from(cost)).build().unwrap();
            let outcome = store.check_now(&[Check { rule: &rule, key }], None);
            let theirs = governor
                .check_n(NonZeroU32::new(cost).unwrap())
                .expect("cost within burst");
            match theirs {
                Ok(()) => prop_assert!(outcome.allowed, "governor admits, we deny"),
                Err(not_until) => {
                    prop_assert!(!outcome.allowed, "governor denies, we admit");
                    prop_assert_eq!(
                        outcome.retry_after(),
                        Some(not_until.wait_time_from(gov_clock.now()))
                    );
                }
            }
        }
    }
}
