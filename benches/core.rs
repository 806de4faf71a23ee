//! The core, side by side with governor: one decision per algorithm, and the memory store against
//! governor's keyed limiter (same key type, same quota) on one hot key, 10 k keys and 1 M keys.
//!
//! Run: `cargo bench --bench core`. Compare ratios within a group, not absolute times.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use governor::{Quota as GovernorQuota, RateLimiter};
use tollgate::tollgate_core::algorithm::{
    FixedWindow, Gcra, SlidingLog, SlidingWindow, StateMachine,
};
use tollgate::{Check, Key, KeySecret, MemoryStore, Quota, Rule};

/// A generous quota, so both limiters take the "admit and write" path, the common one.
const PER_SECOND: u32 = 1_000_000_000;

fn quota() -> Quota {
    Quota::per_second(u64::from(PER_SECOND)).unwrap()
}

fn governor_quota() -> GovernorQuota {
    GovernorQuota::per_second(NonZeroU32::new(PER_SECOND).unwrap())
}

/// One decision of each algorithm (state in a local, time moving 1 µs a call, 1,000/s so the
/// sliding log holds up to 1,000 entries), with governor's direct limiter as the peer.
fn algorithms(c: &mut Criterion) {
    // What a store runs: the decision, then the charge in place.
    fn run<M: StateMachine>(quota: &Quota) -> impl FnMut() -> bool + '_ {
        let mut state: Option<M::State> = None;
        let mut now = 1_700_000_000_000_000_000u64;
        move || {
            now += 1_000;
            let decision = M::check(state.as_ref(), now, quota, 1);
            if decision.allowed {
                if let Some(fresh) = M::commit(state.as_mut(), now, quota, 1) {
                    state = Some(fresh);
                }
            }
            decision.allowed
        }
    }
    let q = Quota::per_second(1_000).unwrap();
    let mut group = c.benchmark_group("algorithms");
    group.throughput(Throughput::Elements(1));
    let mut gcra = run::<Gcra>(&q);
    group.bench_function("tollgate/gcra", |b| b.iter(|| black_box(gcra())));
    let mut fixed = run::<FixedWindow>(&q);
    group.bench_function("tollgate/fixed_window", |b| b.iter(|| black_box(fixed())));
    let mut counter = run::<SlidingWindow>(&q);
    group.bench_function("tollgate/sliding_window", |b| {
        b.iter(|| black_box(counter()))
    });
    let mut log = run::<SlidingLog>(&q);
    group.bench_function("tollgate/sliding_log", |b| b.iter(|| black_box(log())));
    let governor = RateLimiter::direct(GovernorQuota::per_second(NonZeroU32::new(1_000).unwrap()));
    group.bench_function("governor/direct_gcra", |b| {
        b.iter(|| black_box(governor.check().is_ok()))
    });
    group.finish();
}

fn keys(n: usize) -> Vec<Key> {
    (0..n as u64)
        .map(|i| KeySecret::DEFAULT.key().part(&i.to_le_bytes()).finish())
        .collect()
}

/// The memory store against governor's keyed (DashMap) limiter, both keyed by the same 128-bit
/// digest, on 1, 10 k and 1 M keys visited round-robin.
fn memory_store(c: &mut Criterion) {
    let rule = Rule::builder("bench", quota()).build().unwrap();
    let mut group = c.benchmark_group("memory_store");
    group.throughput(Throughput::Elements(1));
    for n in [1usize, 10_000, 1_000_000] {
        let keys = keys(n);
        let label = match n {
            1 => "hot_key".to_string(),
            10_000 => "10k_keys".to_string(),
            _ => "1M_keys".to_string(),
        };

        let store = MemoryStore::builder().sweep_interval(None).build();
        for key in &keys {
            store.check_now(
                &[Check {
                    rule: &rule,
                    key: *key,
                }],
                None,
            );
        }
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("tollgate", &label), &keys, |b, keys| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                let checks = [Check {
                    rule: &rule,
                    key: keys[i],
                }];
                black_box(store.check_now(&checks, None).allowed)
            })
        });

        let governor = RateLimiter::<u128, _, _>::keyed(governor_quota());
        for key in &keys {
            let _ = governor.check_key(&key.as_u128());
        }
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("governor", &label), &keys, |b, keys| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(governor.check_key(&keys[i].as_u128()).is_ok())
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = algorithms, memory_store
}
criterion_main!(benches);
