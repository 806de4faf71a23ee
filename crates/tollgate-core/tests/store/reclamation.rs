//! State that can no longer affect a decision is reclaimed without the user calling anything.

use std::time::{Duration, Instant};

use tollgate_core::conformance::BASE;
use tollgate_core::{Algorithm, Check, KeySecret, ManualClock, MemoryStore, Quota, Rule};

const KEYS: u64 = 1_000_000;

fn one_off_keys(store: &MemoryStore<ManualClock>, rule: &Rule, salt: u64) {
    for i in 0..KEYS {
        let key = KeySecret::DEFAULT
            .key()
            .part(&salt.to_le_bytes())
            .part(&i.to_le_bytes())
            .finish();
        assert!(store.check_now(&[Check { rule, key }], None).allowed);
    }
}

#[test]
fn a_background_sweep_releases_a_million_keys_after_the_horizon() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let clock = ManualClock::new(BASE);
    let store = runtime.block_on(async {
        MemoryStore::builder()
            .clock(clock.clone())
            .sweep_interval(Some(Duration::from_millis(20)))
            .build()
    });
    let rule = Rule::builder("per_client", Quota::per_second(1).unwrap())
        .build()
        .unwrap();
    one_off_keys(&store, &rule, 0);
    // The clock stands still, so sweeps find nothing to drop, and a million keys fit under the
    // default cap: every key still in use is kept.
    let stats = store.stats();
    assert_eq!((stats.keys as u64, stats.evictions), (KEYS, 0), "{stats:?}");

    // One second later every key's quota is whole again: nothing left that could matter.
    clock.advance(Duration::from_secs(1));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} keys left after 10 s",
            store.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn without_a_runtime_inserts_sweep_as_they_go() {
    // Built outside any Tokio runtime: no background task, only amortised sweeping.
    let clock = ManualClock::new(BASE);
    let store = MemoryStore::builder().clock(clock.clone()).build();
    let rule = Rule::builder("per_client", Quota::per_second(1).unwrap())
        .build()
        .unwrap();
    one_off_keys(&store, &rule, 0);
    clock.advance(Duration::from_secs(2));
    one_off_keys(&store, &rule, 1);
    // The first million expired before the second arrived, and each shard sweeps after
    // inserting half as many keys as it holds, so every shard has swept them (before it filled:
    // nothing was evicted) and holds only the second million.
    let stats = store.stats();
    assert_eq!((stats.keys as u64, stats.evictions), (KEYS, 0), "{stats:?}");
}

#[test]
fn a_key_cap_bounds_the_store_under_a_flood_of_distinct_keys() {
    let clock = ManualClock::new(BASE);
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .shards(16)
        .max_keys(10_000)
        .sweep_interval(None)
        .build();
    let rule = Rule::builder("per_client", Quota::per_minute(10).unwrap())
        .build()
        .unwrap();
    for i in 0u64..100_000 {
        let key = KeySecret::DEFAULT.key().part(&i.to_le_bytes()).finish();
        assert!(store.check_now(&[Check { rule: &rule, key }], None).allowed);
    }
    // Each of the 16 shards holds its share, 625 keys, and evicts one per new key after that.
    let stats = store.stats();
    assert_eq!(
        (stats.keys, stats.evictions),
        (10_000, 100_000 - 10_000),
        "{stats:?}"
    );
}

/// Eviction forgives what matters least: a flood of keys charged once each never evicts a key
/// that is at its limit, for the algorithms whose state says so (see `MemoryStore`'s
/// "Capacity" section for the sliding log).
#[test]
fn a_key_at_its_limit_outlives_a_flood_of_one_request_keys() {
    for algorithm in [
        Algorithm::Gcra,
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
    ] {
        let store = MemoryStore::builder()
            .clock(ManualClock::new(BASE))
            .shards(2)
            .max_keys(1_000)
            .sweep_interval(None)
            .build();
        let rule = Rule::builder("per_client", Quota::per_minute(10).unwrap())
            .algorithm(algorithm)
            .build()
            .unwrap();
        let abuser = [Check {
            rule: &rule,
            key: KeySecret::DEFAULT.key().part(b"abuser").finish(),
        }];
        while store.check_now(&abuser, None).allowed {}
        for i in 0u64..50_000 {
            let key = KeySecret::DEFAULT.key().part(&i.to_le_bytes()).finish();
            assert!(store.check_now(&[Check { rule: &rule, key }], None).allowed);
        }
        assert!(
            store.stats().evictions >= 49_000,
            "{algorithm:?}: the cap was hit: {:?}",
            store.stats()
        );
        assert!(
            !store.check_now(&abuser, None).allowed,
            "{algorithm:?}: the flood reset the abuser's bucket"
        );
    }
}

/// A full shard evicts the soonest-expiring key of its sample, whichever algorithm holds it.
#[test]
fn eviction_picks_the_soonest_expiring_key_across_algorithms() {
    let store = MemoryStore::builder()
        .clock(ManualClock::new(BASE))
        .shards(1)
        .max_keys(2)
        .sweep_interval(None)
        .build();
    let hourly = Rule::builder("hourly", Quota::per_hour(2).unwrap())
        .build()
        .unwrap();
    let per_second = Rule::builder("per_second", Quota::per_second(2).unwrap())
        .algorithm(Algorithm::FixedWindow)
        .build()
        .unwrap();
    let key = |name: &[u8]| KeySecret::DEFAULT.key().part(name).finish();
    let (a, b, c) = (key(b"a"), key(b"b"), key(b"c"));
    let check = |rule, key| store.check_now(&[Check { rule, key }], None).decisions[0];
    assert_eq!(check(&hourly, a).remaining, 1);
    assert_eq!(check(&per_second, b).remaining, 1);
    // Full: `c` evicts `b`, whose window ends within a second, not `a`, held for half an hour.
    assert_eq!(check(&hourly, c).remaining, 1);
    assert_eq!(store.stats().evictions, 1);
    assert_eq!(check(&hourly, a).remaining, 0, "a was kept");
    assert_eq!(check(&per_second, b).remaining, 1, "b started afresh");
}

/// What `peek` answers, from a store that answers at once.
fn peek_now(store: &MemoryStore<ManualClock>, checks: &[Check<'_>]) -> tollgate_core::Outcome {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let future = std::pin::pin!(tollgate_core::Store::peek(store, checks));
    match future.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(outcome)) => outcome,
        Poll::Ready(Err(never)) => match never {},
        Poll::Pending => unreachable!("the memory store answers at once"),
    }
}

/// The soonest-expiring key is evicted even when it is alone in a sparse table of its own (one
/// key in four buckets): every eviction probes each table long enough to find it, every time,
/// not only most times.
#[test]
fn eviction_finds_the_soonest_expiring_key_alone_in_its_table_every_time() {
    let store = MemoryStore::builder()
        .clock(ManualClock::new(BASE))
        .shards(1)
        .max_keys(100)
        .sweep_interval(None)
        .build();
    let hourly = Rule::builder("hourly", Quota::per_hour(2).unwrap())
        .build()
        .unwrap();
    let per_second = Rule::builder("per_second", Quota::per_second(2).unwrap())
        .algorithm(Algorithm::FixedWindow)
        .build()
        .unwrap();
    let key = |salt: &[u8], i: u64| {
        KeySecret::DEFAULT
            .key()
            .part(salt)
            .part(&i.to_le_bytes())
            .finish()
    };
    for i in 0..100 {
        let checks = [Check {
            rule: &hourly,
            key: key(b"hourly", i),
        }];
        assert!(store.check_now(&checks, None).allowed);
    }
    for round in 0..1_000 {
        // Full: the per-second key takes an hourly key's place (the only kind there is)...
        let soon = [Check {
            rule: &per_second,
            key: key(b"soon", round),
        }];
        assert_eq!(store.check_now(&soon, None).decisions[0].remaining, 1);
        // ...and the next hourly key evicts it: its window ends within a second.
        let later = [Check {
            rule: &hourly,
            key: key(b"later", round),
        }];
        assert!(store.check_now(&later, None).allowed);
        assert_eq!(store.len(), 100);
        assert_eq!(
            peek_now(&store, &soon).decisions[0].remaining,
            2,
            "round {round}: an hourly key was evicted instead of the per-second key"
        );
    }
}

/// A full shard evicts the soonest-expiring key whatever table the longer-lived keys are in:
/// an hour's state of every algorithm, and an idempotency record, outlive a per-second state.
#[test]
fn eviction_keeps_a_long_lived_key_of_every_table_over_a_short_one() {
    let hour = Quota::per_hour(2).unwrap();
    let replay = tollgate_core::Replay {
        key: KeySecret::DEFAULT.key().part(b"replay").finish(),
        ttl: Duration::from_secs(3600),
        max_replays: 5,
    };
    // (algorithm of the long-lived rule, whether its request leaves an idempotency record)
    let kinds = Algorithm::ALL
        .map(|a| (a, false))
        .into_iter()
        .chain([(Algorithm::Gcra, true)]);
    for (algorithm, replays) in kinds {
        let held = if replays { 2 } else { 1 };
        let store = MemoryStore::builder()
            .clock(ManualClock::new(BASE))
            .shards(1)
            .max_keys(held + 1)
            .sweep_interval(None)
            .build();
        let long = Rule::builder("long", hour)
            .algorithm(algorithm)
            .honour_replays(replays)
            .build()
            .unwrap();
        // The short-lived key gets a table of its own: a sample of 8 drawn from a table of two
        // keys misses one of them once in 256 evictions (the sample is drawn with
        // replacement), which made this test fail when both were fixed windows.
        let short = if algorithm == Algorithm::FixedWindow {
            Algorithm::Gcra
        } else {
            Algorithm::FixedWindow
        };
        let per_second = Rule::builder("per_second", Quota::per_second(2).unwrap())
            .algorithm(short)
            .build()
            .unwrap();
        let hourly = Rule::builder("hourly", hour).build().unwrap();
        let key = |name: &[u8]| KeySecret::DEFAULT.key().part(name).finish();
        let a = [Check {
            rule: &long,
            key: key(b"a"),
        }];
        let b = [Check {
            rule: &per_second,
            key: key(b"b"),
        }];
        let c = [Check {
            rule: &hourly,
            key: key(b"c"),
        }];
        let with_replay = replays.then_some(&replay);
        assert!(store.check_now(&a, with_replay).allowed);
        assert!(store.check_now(&b, None).allowed);
        assert_eq!(store.len(), held + 1);
        // Full: `c` evicts `b`, whose window ends within a second.
        assert!(store.check_now(&c, None).allowed);
        let kind = format!("{algorithm:?} (replays: {replays})");
        assert_eq!(store.stats().evictions, 1, "{kind}");
        assert_eq!(
            peek_now(&store, &b).decisions[0].remaining,
            2,
            "{kind}: b was kept"
        );
        assert_eq!(
            peek_now(&store, &a).decisions[0].remaining,
            1,
            "{kind}: a was evicted"
        );
        if replays {
            let again = store.check_now(&a, with_replay);
            assert!(again.replayed, "{kind}: the idempotency record was evicted");
        }
    }
}

/// The rebuilds that clear a full shard's tombstones count in `stats().swept`, like sweeps: with
/// the clock standing still nothing expires, so an insert adds nothing, every key held (a
/// sweep), every key held but the one just evicted (a rebuild, which comes after the eviction
/// that makes room), or both. Rebuilds come at least `len / 3` inserts apart.
#[test]
fn a_tombstone_rebuild_counts_the_entries_it_moves_as_swept() {
    // 1300 keys fill 63% of 2048 buckets: removals there soon leave enough tombstones for a
    // rebuild (which keys share a group depends on the table's random hasher).
    const CAP: u64 = 1300;
    let store = MemoryStore::builder()
        .clock(ManualClock::new(BASE))
        .shards(1)
        .max_keys(CAP as usize)
        .sweep_interval(None)
        .build();
    let rule = Rule::builder("hourly", Quota::per_hour(10).unwrap())
        .build()
        .unwrap();
    let (mut sweeps, mut rebuilds) = (0, Vec::new());
    let mut i = 0u64;
    while rebuilds.len() < 3 {
        assert!(i < 1_000_000, "{} rebuilds in {i} inserts", rebuilds.len());
        let (held, before) = (store.len() as u64, store.stats().swept);
        let key = KeySecret::DEFAULT.key().part(&i.to_le_bytes()).finish();
        assert!(store.check_now(&[Check { rule: &rule, key }], None).allowed);
        let full = held == CAP;
        match store.stats().swept.checked_sub(before) {
            Some(0) => {}
            Some(n) if n == held => sweeps += 1,
            Some(n) if full && n == CAP - 1 => rebuilds.push(i),
            Some(n) if full && n == CAP + CAP - 1 => {
                sweeps += 1;
                rebuilds.push(i);
            }
            other => panic!("insert {i}: swept grew by {other:?} with {held} keys held"),
        }
        i += 1;
    }
    assert!(sweeps > 0, "no sweep");
    for gap in rebuilds.windows(2) {
        assert!(
            gap[1] - gap[0] >= CAP / 3,
            "rebuilds at inserts {rebuilds:?}"
        );
    }
}

/// At equal expiry, eviction takes the entry that holds least, whichever of the two keys sorts
/// first: a GCRA state (which counts nothing beyond its expiry) before a fixed window holding a
/// request, and a fixed window holding one request before a sliding log of two. (Each key has
/// a table of its own: a sample drawn from a table of two keys misses one once in 256.)
#[test]
fn eviction_at_equal_expiry_takes_the_entry_that_holds_least() {
    // From BASE, on a second, every state below ends at BASE + 1 s.
    let rule = |name: &str, limit, algorithm| {
        Rule::builder(name, Quota::per_second(limit).unwrap())
            .algorithm(algorithm)
            .build()
            .unwrap()
    };
    // (rule of the entry that holds less, requests it holds; the other's rule, its requests)
    let cases = [
        (
            rule("gcra", 1, Algorithm::Gcra),
            1,
            rule("window", 1, Algorithm::FixedWindow),
            1,
        ),
        (
            rule("window", 2, Algorithm::FixedWindow),
            1,
            rule("log", 2, Algorithm::SlidingLog),
            2,
        ),
    ];
    let hourly = Rule::builder("hourly", Quota::per_hour(2).unwrap())
        .build()
        .unwrap();
    for (less, less_held, more, more_held) in &cases {
        // Ties between equal ranks go to the lower slot: were the counts not counted, about
        // half of sixteen pairs of keys would evict the entry that holds more.
        for i in 0u64..16 {
            let store = MemoryStore::builder()
                .clock(ManualClock::new(BASE))
                .shards(1)
                .max_keys(2)
                .sweep_interval(None)
                .build();
            let check = |rule, name: &[u8]| {
                let key = KeySecret::DEFAULT
                    .key()
                    .part(name)
                    .part(&i.to_le_bytes())
                    .finish();
                [Check { rule, key }]
            };
            let (a, b, c) = (check(less, b"a"), check(more, b"b"), check(&hourly, b"c"));
            for (checks, held) in [(&a, less_held), (&b, more_held)] {
                for _ in 0..*held {
                    assert!(store.check_now(checks, None).allowed);
                }
            }
            // Full: `c` evicts one of them.
            assert!(store.check_now(&c, None).allowed);
            assert_eq!(store.stats().evictions, 1);
            let remaining = |checks: &[Check<'_>]| peek_now(&store, checks).decisions[0].remaining;
            let case = format!("{} beside {}, pair {i}", less.name(), more.name());
            let limit = more.quota().limit();
            assert_eq!(remaining(&b), limit - more_held, "{case}: b was evicted");
            assert_eq!(remaining(&a), less.quota().limit(), "{case}: a was kept");
        }
    }
}
