//! A flood of distinct keys, faster than they expire, against a store with default settings:
//! memory stays under the default cap and the store's housekeeping stays O(1) per request.
//!
//! Alone in its test binary so no other test's allocations are counted. Work is counted by the
//! store itself ([`MemoryStore::stats`]), not timed, so the bound holds on a loaded machine.

use tollgate_core::conformance::BASE;
use tollgate_core::{Check, Key, ManualClock, MemoryStats, MemoryStore, Quota, Rule};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

/// A quarter more than the default cap: every shard fills, then evicts for the rest of the flood.
const KEYS: u64 = MemoryStore::DEFAULT_MAX_KEYS as u64 * 5 / 4;
/// Bytes per GCRA key the footprint test allows at a million keys.
const BYTES_PER_KEY: usize = 64;

/// Distinct, uniformly spread keys as a keyed digest would give them, without hashing each one
/// (which would double the test's time in a debug build).
fn key(i: u64) -> Key {
    let mix = |x: u64| {
        let x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    };
    Key::from_u128((u128::from(mix(i)) << 64) | u128::from(mix(!i)))
}

/// The cost bound, checked as the flood goes: a sweep visits every key of a shard once per
/// half a shard of inserts, and an eviction probes a few dozen buckets, never the shard.
fn assert_cheap(stats: &MemoryStats) {
    assert!(
        stats.swept <= 3 * stats.inserts,
        "{} entries swept for {} inserts",
        stats.swept,
        stats.inserts
    );
    assert!(
        stats.probed <= 32 * stats.evictions,
        "{} buckets probed for {} evictions",
        stats.probed,
        stats.evictions
    );
}

#[test]
fn a_flood_of_distinct_keys_stays_under_the_default_cap_at_constant_cost() {
    // The clock stands still, so every key stays live: only eviction can make room.
    let clock = ManualClock::new(BASE);
    let before = counting_alloc::live();
    let store = MemoryStore::builder()
        .clock(clock)
        .sweep_interval(None)
        .build();
    let rule = Rule::builder("per_client", Quota::per_minute(10).unwrap())
        .build()
        .unwrap();
    let cap = MemoryStore::DEFAULT_MAX_KEYS;
    for i in 0..KEYS {
        let outcome = store.check_now(
            &[Check {
                rule: &rule,
                key: key(i),
            }],
            None,
        );
        assert!(outcome.allowed, "a full store still admits a new key");
        if i % 65_536 == 0 {
            let stats = store.stats();
            assert!(stats.keys <= cap, "{} keys held after {i}", stats.keys);
            assert_cheap(&stats);
        }
    }

    let stats = store.stats();
    let held = (counting_alloc::live() - before) as usize;
    println!("{stats:?}, {held} bytes held");
    assert!(stats.keys <= cap, "{} keys held", stats.keys);
    assert!(
        stats.keys >= cap * 99 / 100,
        "the cap is used: {}",
        stats.keys
    );
    assert!(
        held <= cap * BYTES_PER_KEY,
        "{held} bytes held, {} per key of the cap",
        held / cap
    );
    assert_eq!(stats.inserts, KEYS);
    assert!(stats.evictions >= KEYS - cap as u64);

    assert_cheap(&stats);
    let swept = stats.swept as f64 / stats.inserts as f64;
    let probed = stats.probed as f64 / stats.evictions as f64;
    println!("{swept:.2} entries swept per insert, {probed:.1} buckets probed per eviction");
}
