//! Bytes per key, measured with a counting allocator, and released after the horizon.
//!
//! Alone in its test binary so no other test's allocations are counted.

use std::time::Duration;

use tollgate_core::conformance::BASE;
use tollgate_core::{Algorithm, Check, KeySecret, ManualClock, MemoryStore, Quota, Rule};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

const KEYS: u64 = 1_000_000;

#[test]
fn bytes_per_key_at_a_million_keys_and_release() {
    for (algorithm, bound) in [
        (Algorithm::Gcra, 64),
        (Algorithm::FixedWindow, 80),
        (Algorithm::SlidingWindow, 96),
    ] {
        let clock = ManualClock::new(BASE);
        let before = counting_alloc::live();
        let store = MemoryStore::builder()
            .clock(clock.clone())
            .sweep_interval(None)
            .build();
        let rule = Rule::builder("r", Quota::per_second(10).unwrap())
            .algorithm(algorithm)
            .build()
            .unwrap();
        for i in 0..KEYS {
            let key = KeySecret::DEFAULT.key().part(&i.to_le_bytes()).finish();
            store.check_now(&[Check { rule: &rule, key }], None);
        }
        let held = counting_alloc::live() - before;
        let per_key = held as f64 / KEYS as f64;
        println!("{algorithm:?}: {per_key:.1} bytes per key at {KEYS} keys");
        assert!(
            per_key <= bound as f64,
            "{algorithm:?}: {per_key:.1} bytes per key"
        );

        // After the horizon, the next inserts sweep the expired keys and give the memory back.
        clock.advance(Duration::from_secs(3));
        for i in 0..KEYS / 4 {
            let key = KeySecret::DEFAULT
                .key()
                .part(b"later")
                .part(&i.to_le_bytes())
                .finish();
            store.check_now(&[Check { rule: &rule, key }], None);
        }
        let after = counting_alloc::live() - before;
        println!(
            "{algorithm:?}: {after} bytes held after the horizon, {} keys",
            store.len()
        );
        assert!(
            (after as f64) < held as f64 * 0.6,
            "{algorithm:?}: {after} bytes still held of {held}"
        );
        drop(store);
    }
}
