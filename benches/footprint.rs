//! Bytes per key at 1 M keys: tollgate's memory store against governor's keyed limiter, with the
//! same key type (a 128-bit digest) and quota, measured by a counting allocator. Then whether the
//! memory comes back once the keys' state has expired, without the user calling anything.
//!
//! Run: `cargo bench --bench footprint` (a plain program: it prints its figures).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{Quota as GovernorQuota, RateLimiter};
use tollgate::{Check, KeySecret, ManualClock, MemoryStore, Quota, Rule};

#[path = "../crates/tollgate-core/tests/support/counting_alloc.rs"]
mod counting_alloc;

const KEYS: u64 = 1_000_000;

use counting_alloc::live;

fn main() {
    let keys: Vec<u128> = (0..KEYS)
        .map(|i| {
            KeySecret::DEFAULT
                .key()
                .part(&i.to_le_bytes())
                .finish()
                .as_u128()
        })
        .collect();

    let before = live();
    let clock = ManualClock::new(1_700_000_000_000_000_000);
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .sweep_interval(None)
        .build();
    let rule = Rule::builder("r", Quota::per_second(10).unwrap())
        .build()
        .unwrap();
    for key in &keys {
        let key = tollgate::Key::from_u128(*key);
        store.check_now(&[Check { rule: &rule, key }], None);
    }
    let ours_bytes = live() - before;
    let ours = ours_bytes as f64 / KEYS as f64;

    let before_gov = live();
    let governor =
        RateLimiter::<u128, _, _>::keyed(GovernorQuota::per_second(NonZeroU32::new(10).unwrap()));
    for key in &keys {
        let _ = governor.check_key(key);
    }
    let governor_bytes = live() - before_gov;
    let theirs = governor_bytes as f64 / KEYS as f64;

    println!("footprint at {KEYS} keys (GCRA, 10/s, 128-bit keys)");
    println!("  tollgate MemoryStore: {ours:6.1} bytes/key");
    println!("  governor keyed      : {theirs:6.1} bytes/key");
    println!("  ratio tollgate/governor: {:.2}", ours / theirs);

    // One second later every key is whole again. Ours reclaims as traffic goes on; governor's
    // keeps every key until the user calls `retain_recent`.
    clock.advance(Duration::from_secs(2));
    for i in 0..KEYS / 4 {
        let key = KeySecret::DEFAULT
            .key()
            .part(b"later")
            .part(&i.to_le_bytes())
            .finish();
        store.check_now(&[Check { rule: &rule, key }], None);
    }
    // Governor's map is untouched from here on: whatever changes is ours.
    let after_ours = live() - before - governor_bytes;
    println!(
        "  after the horizon and 250k new keys: tollgate holds {:.0}% of its peak ({} keys), with no call from the user",
        100.0 * after_ours as f64 / ours_bytes as f64,
        store.len()
    );
    println!(
        "  governor holds {} keys until `retain_recent()` is called",
        governor.len()
    );
}
