//! Many threads on the same keys: exact counts, and no rule charged for a request another rule
//! denied.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tollgate_core::conformance::BASE;
use tollgate_core::{Algorithm, Check, KeySecret, ManualClock, MemoryStore, Quota, Rule};

const THREADS: u64 = 8;

fn store(clock: &ManualClock) -> MemoryStore<ManualClock> {
    MemoryStore::builder()
        .clock(clock.clone())
        .shards(4) // few shards: more contention
        .sweep_interval(None)
        .build()
}

fn rule(name: &str, limit: u64, algorithm: Algorithm) -> Rule {
    Rule::builder(name, Quota::per_minute(limit).unwrap())
        .algorithm(algorithm)
        .build()
        .unwrap()
}

/// Runs `per_thread` requests on each of `THREADS` threads; returns how many were admitted.
fn hammer(per_thread: u64, request: impl Fn(u64) -> bool + Sync) -> u64 {
    let admitted = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (admitted, request) = (&admitted, &request);
            s.spawn(move || {
                for i in 0..per_thread {
                    if request(t * per_thread + i) {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    admitted.into_inner()
}

#[test]
fn one_key_admits_exactly_the_limit_per_window_for_every_algorithm() {
    for algorithm in Algorithm::ALL {
        let clock = ManualClock::new(BASE);
        let store = store(&clock);
        let rule = rule("hot", 1_000, algorithm);
        let key = KeySecret::DEFAULT.key().part(b"one client").finish();
        let checks = [Check { rule: &rule, key }];
        let admitted = hammer(500, |_| store.check_now(&checks, None).allowed);
        assert_eq!(admitted, 1_000, "{algorithm:?}");

        // The next window (GCRA: a full refill) admits exactly the limit again.
        clock.advance(Duration::from_secs(120));
        let admitted = hammer(500, |_| store.check_now(&checks, None).allowed);
        assert_eq!(admitted, 1_000, "{algorithm:?}, second window");
    }
}

#[test]
fn a_request_denied_by_one_rule_charges_no_other_rule() {
    for algorithm in Algorithm::ALL {
        let clock = ManualClock::new(BASE);
        let store = store(&clock);
        let wide = rule("wide", 100_000, algorithm);
        let narrow = rule("narrow", 50, algorithm);
        let client = KeySecret::DEFAULT.key().part(b"shared bucket").finish();
        // Requests alternate between two narrow buckets, all sharing the wide one.
        let narrow_keys = [
            KeySecret::DEFAULT.key().part(b"a").finish(),
            KeySecret::DEFAULT.key().part(b"b").finish(),
        ];
        let admitted = hammer(400, |n| {
            let checks = [
                Check {
                    rule: &wide,
                    key: client,
                },
                Check {
                    rule: &narrow,
                    key: narrow_keys[(n % 2) as usize],
                },
            ];
            store.check_now(&checks, None).allowed
        });
        assert_eq!(admitted, 100, "{algorithm:?}");

        // The wide bucket was charged for the 100 admitted requests and nothing else.
        let peek = futures_lite_block_on(tollgate_core::Store::peek(
            &store,
            &[Check {
                rule: &wide,
                key: client,
            }],
        ));
        assert_eq!(peek.decisions[0].remaining, 100_000 - 100, "{algorithm:?}");
    }
}

/// The memory store's futures are ready at once.
fn futures_lite_block_on<T>(
    f: impl std::future::Future<Output = Result<T, std::convert::Infallible>>,
) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
        .unwrap_or_else(|never| match never {})
}
