//! Limits shared by several instances: concurrency, Cluster slots and refunds, clocks that
//! disagree.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use tollgate_core::{
    Algorithm, Check, Clock, Key, KeySecret, ManualClock, Nanos, Quota, Rule, Store, SystemClock,
};
use tollgate_redis::{FailurePolicy, RedisConnection, RedisStore};

use crate::support::{command_stats, patient, patient_cluster, TestCluster, TestRedis};

fn unique_key(label: &str) -> Key {
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    KeySecret::DEFAULT
        .key()
        .part(label.as_bytes())
        .part(&nonce.to_le_bytes())
        .finish()
}

/// Stores for tests that must never degrade: a generous budget (debug build, 2 cores, hundreds
/// of concurrent callers) and fail-closed, so a degraded decision shows as an error.
fn strict(connection: RedisConnection) -> RedisStore {
    RedisStore::builder(connection)
        .budget(Duration::from_secs(5))
        .failure_policy(FailurePolicy::FailClosed)
        .build()
}

/// Fires `n` concurrent checks, alternating between the stores; returns how many were admitted.
async fn admitted(stores: &[RedisStore], checks: &[Check<'_>], n: usize) -> usize {
    let results = join_all((0..n).map(|i| {
        let store = &stores[i % stores.len()];
        async move {
            store
                .check(checks, None)
                .await
                .expect("no degraded decision")
        }
    }))
    .await;
    results.iter().filter(|o| o.allowed).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_admit_exactly_the_limit_under_600_concurrent_requests() {
    let redis = TestRedis::start().await;
    // Two API instances: one with a connection manager, one with a deadpool pool.
    let a = strict(patient(redis.url()).await);
    let pool = deadpool_redis::Config::from_url(redis.url())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let b = strict(pool.into());
    for algorithm in Algorithm::ALL {
        let rule = Rule::builder("burst", Quota::per_day(100).unwrap())
            .algorithm(algorithm)
            .build()
            .unwrap();
        let checks = [Check {
            rule: &rule,
            key: unique_key(algorithm.name()),
        }];
        let n = admitted(&[a.clone(), b.clone()], &checks, 600).await;
        assert_eq!(n, 100, "{algorithm:?}: admitted {n} of 600, limit 100");
        let left = a.peek(&checks).await.unwrap();
        assert_eq!(left.decisions[0].remaining, 0, "{algorithm:?}");
    }
    for store in [&a, &b] {
        assert_eq!(store.stats().degraded, 0);
    }
}

/// Two keys whose Redis keys live on different Cluster nodes.
async fn keys_on_two_nodes(
    cluster: &TestCluster,
    store: &RedisStore,
    a: &Rule,
    b: &Rule,
) -> (Key, Key) {
    let mut admin = cluster.node(0).await;
    let mut slot = async |k: String| -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(k)
            .query_async(&mut admin)
            .await
            .unwrap()
    };
    let ka = unique_key("a");
    let node = |s: u16| usize::from(s) * 3 / 16384;
    let na = node(slot(store.redis_key(a, ka)).await);
    for i in 0u32.. {
        let kb = KeySecret::DEFAULT
            .key()
            .part(&ka.as_u128().to_le_bytes())
            .part(&i.to_le_bytes())
            .finish();
        if node(slot(store.redis_key(b, kb)).await) != na {
            return (ka, kb);
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_stacked_rules_on_different_nodes_count_exactly_and_refund() {
    let cluster = TestCluster::start().await;
    let one = strict(patient_cluster(cluster.urls()).await);
    let two = strict(patient_cluster(cluster.urls()).await);
    let per_token = Rule::builder("per_token", Quota::per_day(10).unwrap())
        .build()
        .unwrap();
    let per_ip = Rule::builder("per_ip", Quota::per_day(5).unwrap())
        .algorithm(Algorithm::SlidingLog)
        .build()
        .unwrap();

    // Sequential: the 6th and later requests are denied by per_ip; per_token, on another node,
    // admits them and is refunded every time.
    let (kt, ki) = keys_on_two_nodes(&cluster, &one, &per_token, &per_ip).await;
    let checks = [
        Check {
            rule: &per_token,
            key: kt,
        },
        Check {
            rule: &per_ip,
            key: ki,
        },
    ];
    for i in 0..12 {
        let outcome = one.check(&checks, None).await.unwrap();
        assert_eq!(outcome.allowed, i < 5, "request {i}");
        if i >= 5 {
            assert!(outcome.decisions[0].allowed && !outcome.decisions[1].allowed);
            assert_eq!(outcome.binding, Some(1));
        }
    }
    let now = one.peek(&checks).await.unwrap();
    assert_eq!(
        now.decisions[0].remaining, 5,
        "per_token charged only for admitted requests"
    );
    assert_eq!(now.decisions[1].remaining, 0);
    // The first denial went to Redis (and was refunded); the rest hit the deny cache.
    assert_eq!(one.stats().refunds, 1);
    assert_eq!(one.stats().deny_cache_hits, 6);

    // Concurrent, two instances, fresh keys: exactly 5 admitted, and once every refund is in,
    // per_token is charged exactly 5. Its quota is above the concurrency: with 10, charges still
    // awaiting their refund (the documented window) could exhaust it for a moment and deny
    // requests per_ip would admit, which is the design, not what this test measures.
    let wide = Rule::builder("per_token_wide", Quota::per_day(1_000).unwrap())
        .build()
        .unwrap();
    let (kt, ki) = keys_on_two_nodes(&cluster, &one, &wide, &per_ip).await;
    let checks = [
        Check {
            rule: &wide,
            key: kt,
        },
        Check {
            rule: &per_ip,
            key: ki,
        },
    ];
    let n = admitted(&[one.clone(), two.clone()], &checks, 300).await;
    assert_eq!(n, 5);
    let now = one.peek(&checks).await.unwrap();
    assert_eq!(now.decisions[0].remaining, 1_000 - 5);
    assert_eq!(now.decisions[1].remaining, 0);
    let stats = [one.stats(), two.stats()];
    assert!(stats.iter().map(|s| s.refunds).sum::<u64>() > 0);
    assert!(stats
        .iter()
        .all(|s| s.degraded == 0 && s.refund_failures == 0));
}

/// A clock `offset` nanoseconds ahead of (or behind) the system clock.
struct Skewed {
    base: SystemClock,
    ahead: bool,
    offset: Nanos,
}

impl Clock for Skewed {
    fn now(&self) -> Nanos {
        if self.ahead {
            self.base.now() + self.offset
        } else {
            self.base.now() - self.offset
        }
    }
}

#[tokio::test]
async fn instances_whose_clocks_differ_by_seconds_agree() {
    let redis = TestRedis::start().await;
    let skew = 7_000_000_000; // 7 s each way: 14 s apart
    let ahead = Skewed {
        base: SystemClock::new(),
        ahead: true,
        offset: skew,
    };
    let behind = Skewed {
        base: SystemClock::new(),
        ahead: false,
        offset: skew,
    };
    assert!(ahead.now() - behind.now() >= 2 * skew - 1_000_000);
    let rule = Rule::builder(
        "interval",
        Quota::min_interval(Duration::from_secs(2)).unwrap(),
    )
    .build()
    .unwrap();

    // Server TIME: the local clocks (used only by the deny cache) do not matter.
    let a = RedisStore::builder(RedisConnection::connect(redis.url()).await.unwrap())
        .local_clock(ahead)
        .build();
    let b = RedisStore::builder(RedisConnection::connect(redis.url()).await.unwrap())
        .local_clock(behind)
        .build();
    let checks = [Check {
        rule: &rule,
        key: unique_key("skew"),
    }];
    assert!(a.check(&checks, None).await.unwrap().allowed);
    let denied = b.check(&checks, None).await.unwrap();
    assert!(
        !denied.allowed,
        "the instance 14 s behind sees the same state"
    );
    let wait = denied.retry_after().unwrap();
    assert!(
        wait > Duration::from_millis(1_500) && wait <= Duration::from_secs(2),
        "{wait:?}"
    );
    // And the other way round, on another key: the one ahead is refused just the same.
    let checks = [Check {
        rule: &rule,
        key: unique_key("skew-2"),
    }];
    assert!(b.check(&checks, None).await.unwrap().allowed);
    let sent = std::time::Instant::now();
    let denied = a.check(&checks, None).await.unwrap();
    assert!(!denied.allowed);
    let first_wait = denied.retry_after().unwrap();
    assert!(first_wait <= Duration::from_secs(2));
    // The instance ahead now answers from its deny cache, which counts Redis's wait down on the
    // instance's own clock: the wait shrinks by the time that passed (measured here, on a
    // monotonic clock), never jumps by the 7 s its clock is off Redis's, and never grows. (1 ms
    // for the wall clock the skewed clocks read against the monotonic one.)
    let pause = Duration::from_millis(100);
    tokio::time::sleep(pause).await;
    let hits = a.stats().deny_cache_hits;
    let again = a.check(&checks, None).await.unwrap();
    let passed = sent.elapsed();
    assert_eq!(a.stats().deny_cache_hits, hits + 1, "answered locally");
    let wait = again.retry_after().unwrap();
    assert!(!again.allowed);
    assert!(
        wait <= first_wait - pause && wait + passed + Duration::from_millis(1) >= first_wait,
        "first {first_wait:?}, then {wait:?} after {passed:?}"
    );

    // The counterfactual: had each instance decided by its own clock, the one behind would be
    // told to wait 16 s for a 2 s interval (and, the other way round, the one ahead would be
    // admitted at once: twice the limit).
    let clock_a = ManualClock::new(SystemClock::new().now() + skew);
    let clock_b = ManualClock::new(SystemClock::new().now() - skew);
    let own_a = RedisStore::builder(RedisConnection::connect(redis.url()).await.unwrap())
        .explicit_time(clock_a)
        .deny_cache(None)
        .build();
    let own_b = RedisStore::builder(RedisConnection::connect(redis.url()).await.unwrap())
        .explicit_time(clock_b)
        .deny_cache(None)
        .build();
    let checks = [Check {
        rule: &rule,
        key: unique_key("own-clocks"),
    }];
    assert!(own_a.check(&checks, None).await.unwrap().allowed);
    let off = own_b.check(&checks, None).await.unwrap();
    assert!(off.retry_after().unwrap() > Duration::from_secs(15));
    let checks = [Check {
        rule: &rule,
        key: unique_key("own-clocks-2"),
    }];
    assert!(own_b.check(&checks, None).await.unwrap().allowed);
    assert!(
        own_a.check(&checks, None).await.unwrap().allowed,
        "by their own clocks the instances would admit twice"
    );
}

#[tokio::test]
async fn the_deny_cache_answers_locally_with_a_shrinking_retry_after() {
    let redis = TestRedis::start().await;
    let clock = ManualClock::new(1_800_000_000_123_456_789);
    let store = RedisStore::builder(RedisConnection::connect(redis.url()).await.unwrap())
        .explicit_time(clock.clone())
        .build();
    let uncached = RedisStore::builder(RedisConnection::connect(redis.url()).await.unwrap())
        .explicit_time(clock.clone())
        .deny_cache(None)
        .build();
    let rule = Rule::builder("a", Quota::min_interval(Duration::from_secs(1)).unwrap())
        .build()
        .unwrap();
    let other = Rule::builder("b", Quota::per_day(1_000).unwrap())
        .build()
        .unwrap();
    let key = unique_key("deny-cache");
    let checks = [Check { rule: &rule, key }];
    assert!(store.check(&checks, None).await.unwrap().allowed);
    let first = store.check(&checks, None).await.unwrap();
    assert_eq!(first.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(store.stats().redis_calls, 2);

    clock.advance(Duration::from_nanos(300_000_001));
    let cached = store.check(&checks, None).await.unwrap();
    let truth = uncached.check(&checks, None).await.unwrap();
    assert_eq!(store.stats().deny_cache_hits, 1);
    assert_eq!(store.stats().redis_calls, 2, "Redis was not asked");
    assert_eq!(
        cached.retry_after(),
        Some(Duration::from_nanos(699_999_999))
    );
    assert_eq!(
        cached, truth,
        "the same answer Redis gives, to the nanosecond"
    );

    // A stacked request that includes the denied (rule, key) is denied locally too, whatever
    // the other rule says; that rule is reported as not consulted.
    let stacked = [
        Check {
            rule: &other,
            key: unique_key("other"),
        },
        Check { rule: &rule, key },
    ];
    let local = store.check(&stacked, None).await.unwrap();
    assert!(!local.allowed);
    assert_eq!(local.binding, Some(1));
    assert_eq!(local.decisions[0].remaining, 1_000);
    assert_eq!(store.stats().redis_calls, 2);

    // An idempotency key changes nothing for a rule that does not honour replays: denied
    // locally.
    let replay = tollgate_core::Replay {
        key: unique_key("idem"),
        ttl: Duration::from_secs(60),
        max_replays: 1,
    };
    let local = store.check(&checks, Some(&replay)).await.unwrap();
    assert!(!local.allowed && !local.replayed);
    assert_eq!(store.stats().redis_calls, 2);
    // A rule that honours replays asks Redis: the request may be a free replay there.
    let replayable = Rule::builder("c", Quota::min_interval(Duration::from_secs(1)).unwrap())
        .honour_replays(true)
        .build()
        .unwrap();
    let rkey = unique_key("replayable");
    let rchecks = [Check {
        rule: &replayable,
        key: rkey,
    }];
    assert!(store.check(&rchecks, Some(&replay)).await.unwrap().allowed);
    assert!(!store.check(&rchecks, None).await.unwrap().allowed);
    assert_eq!(store.stats().redis_calls, 4);
    let replayed = store.check(&rchecks, Some(&replay)).await.unwrap();
    assert!(replayed.allowed && replayed.replayed, "{replayed:?}");
    assert_eq!(store.stats().redis_calls, 5);

    // When the wait is over, Redis is asked again and admits.
    clock.advance(Duration::from_nanos(699_999_999));
    assert!(store.check(&checks, None).await.unwrap().allowed);
    assert_eq!(store.stats().redis_calls, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abusive_client_does_not_turn_into_redis_load() {
    let redis = TestRedis::start().await;
    let store = RedisStore::connect(redis.url()).await.unwrap();
    let rule = Rule::builder("login", Quota::per_minute(5).unwrap())
        .algorithm(Algorithm::FixedWindow)
        .build()
        .unwrap();
    let checks = [Check {
        rule: &rule,
        key: unique_key("abuser"),
    }];
    let store = Arc::new(store);
    let mut denied = 0;
    for _ in 0..1_000 {
        let outcome = store.check(&checks, None).await.unwrap();
        denied += usize::from(!outcome.allowed);
        if !outcome.allowed {
            assert!(outcome.retry_after().unwrap() <= Duration::from_secs(60));
        }
    }
    // A fixed window might roll over during the run; at most twice 5 admitted, then.
    assert!(denied >= 990, "{denied}");
    let stats = store.stats();
    assert!(
        stats.redis_calls <= 12,
        "{} Redis calls for 1000 requests",
        stats.redis_calls
    );
    assert!(stats.deny_cache_hits >= 988);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_flood_from_a_denied_key_shares_one_redis_call() {
    const CALLERS: usize = 256;
    const PER_CALLER: usize = 8;
    let redis = TestRedis::start().await;
    let mut admin = redis.admin().await;
    let rule = Rule::builder("flood", Quota::per_hour(1).unwrap())
        .build()
        .unwrap();
    let key = unique_key("cold-flood");
    let checks = [Check { rule: &rule, key }];
    // Another instance spent the key: this one has never heard of it.
    let other = strict(patient(redis.url()).await);
    assert!(other.check(&checks, None).await.unwrap().allowed);
    let store = Arc::new(strict(patient(redis.url()).await));
    store.load_script().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut admin)
        .await
        .unwrap();
    let callers = (0..CALLERS).map(|_| {
        let store = Arc::clone(&store);
        let rule = rule.clone();
        tokio::spawn(async move {
            let checks = [Check { rule: &rule, key }];
            for _ in 0..PER_CALLER {
                let outcome = store.check(&checks, None).await.unwrap();
                assert!(!outcome.allowed, "{outcome:?}");
            }
        })
    });
    for caller in callers.collect::<Vec<_>>() {
        caller.await.unwrap();
    }
    let requests = (CALLERS * PER_CALLER) as f64;
    // Every command Redis executed, the script's own included.
    let commands: u64 = command_stats(&mut admin)
        .await
        .iter()
        .filter(|(name, _, _)| !matches!(name.as_str(), "info" | "config"))
        .map(|(_, calls, _)| calls)
        .sum();
    let stats = store.stats();
    assert!(
        commands as f64 / requests <= 0.01,
        "{commands} Redis commands for {requests} denied requests ({stats:?})"
    );
    assert_eq!(stats.redis_calls, 1, "{stats:?}");
    // Whether the others waited for that call (`coalesced`) or came after it depends on how the
    // tasks were scheduled; either way they were answered locally.
    assert_eq!(
        stats.deny_cache_hits,
        CALLERS as u64 * PER_CALLER as u64 - 1
    );
}
