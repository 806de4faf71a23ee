//! The script on Redis's own clock (`TIME`), as in production: boundaries, all-or-nothing writes,
//! replays, refunds, format tags, and the TTL of every key.
//!
//! The explicit-time tests (conformance, differential) give every key a TTL of at least a
//! minute, so they cannot see a key that expires too early or too late; these can. Each test
//! either waits on Redis's clock (`redis_now`) or reads instants back from the stored state, so
//! its margins come from the quota, not from how fast the machine is. `scripts/lua-mutants.py`
//! runs this module (with `keyspace` and `http_keyspace`) against each mutation of the script.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tollgate_core::{Algorithm, Check, Key, KeySecret, Nanos, Quota, Replay, Rule, Store};
use tollgate_redis::{FailurePolicy, RedisConnection, RedisStore};

use crate::support::{TestCluster, TestRedis};

const MS: u64 = 1_000_000;

fn nonce() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn key(label: &str) -> Key {
    KeySecret::DEFAULT
        .key()
        .part(label.as_bytes())
        .part(&nonce().to_le_bytes())
        .finish()
}

/// Redis time, no deny cache (every request reaches the script), and fail-closed with a
/// generous budget: a script error or a slow machine shows as an error, never as a
/// made-up decision.
fn store(connection: RedisConnection) -> RedisStore {
    RedisStore::builder(connection)
        .prefix(format!("rt{}", nonce()))
        .deny_cache(None)
        .budget(Duration::from_secs(5))
        .failure_policy(FailurePolicy::FailClosed)
        .build()
}

fn rule(name: &str, algorithm: Algorithm, quota: Quota) -> Rule {
    Rule::builder(name, quota)
        .algorithm(algorithm)
        .build()
        .unwrap()
}

/// Redis's clock, in nanoseconds since the epoch.
pub(crate) async fn redis_now(admin: &mut MultiplexedConnection) -> Nanos {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(admin).await.unwrap();
    s * 1_000_000_000 + us * 1_000
}

/// Sleeps until Redis's clock reads at least `at`.
pub(crate) async fn sleep_until(admin: &mut MultiplexedConnection, at: Nanos) {
    loop {
        let now = redis_now(admin).await;
        if now >= at {
            return;
        }
        tokio::time::sleep(Duration::from_nanos(at - now) + Duration::from_millis(1)).await;
    }
}

async fn get(admin: &mut MultiplexedConnection, key: &str) -> String {
    let v: Option<String> = redis::cmd("GET").arg(key).query_async(admin).await.unwrap();
    v.unwrap_or_default()
}

/// The key's absolute expiry in Unix milliseconds (-1: none, -2: no key).
async fn expiry_ms(admin: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PEXPIRETIME")
        .arg(key)
        .query_async(admin)
        .await
        .unwrap()
}

async fn exists(admin: &mut MultiplexedConnection, key: &str) -> bool {
    let n: u64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(admin)
        .await
        .unwrap();
    n == 1
}

/// The instant (ns) until which the state stored at a key still matters, read from the value:
/// GCRA until its TAT; a fixed window until its end; a sliding-window counter one period after
/// its window's end (the next window reads it as its previous one); a sliding log until its
/// newest entry leaves the window; an idempotency record until it expires.
pub(crate) fn needed_until(value: &str, period: Nanos) -> Nanos {
    let (tag, body) = value.split_at(3);
    let field = |i: usize| -> Nanos { body.split(':').nth(i).unwrap().parse().unwrap() };
    match tag {
        "g1:" | "f1:" | "r1:" => field(0),
        "w1:" => field(0) + period,
        "l1:" => {
            let newest = body.rsplit(',').next().unwrap();
            newest.split(':').next().unwrap().parse::<Nanos>().unwrap() + period
        }
        _ => panic!("unexpected value {value:?}"),
    }
}

/// How late, at most, Redis runs a script's `SET` after the script read `TIME`: microseconds
/// normally, a few milliseconds when a loaded machine deschedules Redis between the two.
pub(crate) const SET_LATENESS_MS: u64 = 25;

/// Asserts that the key outlives its state, and not by more than Redis's rounding and
/// scheduling. Redis keeps expiries in whole milliseconds, counted from when `SET` runs (after
/// the script read `TIME`), and the script rounds the TTL up: the expiry lands in
/// [state end - 2 ms, state end + 2 ms + SET_LATENESS_MS]. A key is deleted only once its
/// expiry has passed.
pub(crate) fn assert_expiry(what: &str, expiry_ms: i64, needed: Nanos) {
    let lo = needed / MS - 2;
    let hi = needed.div_ceil(MS) + 2 + SET_LATENESS_MS;
    assert!(
        expiry_ms >= lo as i64 && expiry_ms <= hi as i64,
        "{what}: expires at {expiry_ms} ms, its state matters until {needed} ns \
         (allowed {lo}..={hi} ms)"
    );
}

#[tokio::test]
async fn every_algorithm_admits_exactly_its_limit_then_denies_with_the_exact_wait() {
    let redis = TestRedis::start().await;
    let store = store(RedisConnection::connect(redis.url()).await.unwrap());
    let hour = Duration::from_secs(3_600);
    for algorithm in Algorithm::ALL {
        let what = algorithm.name();
        let rule = rule(what, algorithm, Quota::per_hour(3).unwrap());
        let checks = [Check {
            rule: &rule,
            key: key(what),
        }];
        let start = Instant::now();
        let first = store.check(&checks, None).await.unwrap();
        assert!(first.allowed, "{what}");
        assert_eq!(first.decisions[0].remaining, 2, "{what}");
        // A peek reports the figures as they stand, charging nothing.
        let peek = store.peek(&checks).await.unwrap();
        assert!(peek.allowed);
        assert_eq!(peek.decisions[0].remaining, 2, "{what}: peek");
        // 50 ms between the first charge and the others, so that the log's entries differ.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for remaining in [1, 0] {
            let o = store.check(&checks, None).await.unwrap();
            assert!(o.allowed, "{what}: exactly the limit is admitted");
            assert_eq!(o.decisions[0].remaining, remaining, "{what}");
        }
        let denied = store.check(&checks, None).await.unwrap();
        let elapsed = start.elapsed();
        assert!(!denied.allowed, "{what}: the limit + 1st is denied");
        let d = denied.decisions[0];
        assert_eq!(d.remaining, 0, "{what}");
        let retry = d.retry_after.unwrap();
        match algorithm {
            // One emission interval after the first charge.
            Algorithm::Gcra => {
                let interval = hour / 3;
                assert!(
                    retry <= interval && retry + elapsed >= interval,
                    "{what}: retry {retry:?}"
                );
            }
            // When the first entry leaves; the newest (the reset) leaves 50 ms or more later.
            Algorithm::SlidingLog => {
                assert!(
                    retry <= hour && retry + elapsed >= hour,
                    "{what}: {retry:?}"
                );
                assert!(
                    d.reset_after >= retry + Duration::from_millis(50),
                    "{what}: retry {retry:?} reset {:?}",
                    d.reset_after
                );
            }
            _ => assert!(retry <= 2 * hour, "{what}: retry {retry:?}"),
        }
    }
}

#[tokio::test]
async fn a_denied_request_charges_no_rule_and_a_shadow_rule_denies_nothing() {
    let redis = TestRedis::start().await;
    let store = store(RedisConnection::connect(redis.url()).await.unwrap());
    let tight = rule("tight", Algorithm::Gcra, Quota::per_hour(1).unwrap());
    let tight_key = key("tight");
    assert!(
        store
            .check(
                &[Check {
                    rule: &tight,
                    key: tight_key
                }],
                None
            )
            .await
            .unwrap()
            .allowed
    );
    let shadow = Rule::builder("shadow", Quota::per_hour(1).unwrap())
        .shadow(true)
        .build()
        .unwrap();
    for algorithm in Algorithm::ALL {
        let what = algorithm.name();
        let loose = rule(what, algorithm, Quota::per_hour(10).unwrap());
        let loose_key = key(what);
        let stacked = [
            Check {
                rule: &loose,
                key: loose_key,
            },
            Check {
                rule: &tight,
                key: tight_key,
            },
        ];
        for _ in 0..3 {
            let o = store.check(&stacked, None).await.unwrap();
            assert!(!o.allowed && o.decisions[0].allowed, "{what}: {o:?}");
        }
        let alone = [stacked[0]];
        let peek = store.peek(&alone).await.unwrap();
        assert_eq!(peek.decisions[0].remaining, 10, "{what}: nothing charged");
        assert!(
            !exists(
                &mut redis.admin().await,
                &store.redis_key(&loose, loose_key)
            )
            .await
        );

        // A shadow rule that denies reports it, but the request passes and is charged.
        let shadow_key = key("shadow");
        let with_shadow = [
            Check {
                rule: &loose,
                key: loose_key,
            },
            Check {
                rule: &shadow,
                key: shadow_key,
            },
        ];
        for remaining in [9, 8] {
            let o = store.check(&with_shadow, None).await.unwrap();
            assert!(o.allowed, "{what}: {o:?}");
            assert_eq!(o.decisions[0].remaining, remaining, "{what}");
        }
        let o = store.check(&with_shadow, None).await.unwrap();
        assert!(o.allowed && !o.decisions[1].allowed, "{what}: {o:?}");
        // Charged three times: the script wrote the passing request (an outcome's figures
        // are the same whether or not it did).
        let peek = store.peek(&alone).await.unwrap();
        assert_eq!(peek.decisions[0].remaining, 7, "{what}: charged");
    }
}

/// Runs the replay cases on `store`; `exhausted` is a rule that does not honour replays, with
/// `exhausted_key` already at its limit.
async fn replay_cases(store: &RedisStore, exhausted: &Rule, exhausted_key: Key) {
    let replays = Rule::builder("replays", Quota::per_hour(10).unwrap())
        .honour_replays(true)
        .build()
        .unwrap();
    let a_key = key("replays");
    let alone = [Check {
        rule: &replays,
        key: a_key,
    }];
    let with_denial = [
        alone[0],
        Check {
            rule: exhausted,
            key: exhausted_key,
        },
    ];
    let replay = |label: &str| Replay {
        key: key(label),
        ttl: Duration::from_secs(600),
        max_replays: 1,
    };
    let mut remaining = 10;
    let mut expect =
        async |checks: &[Check<'_>], r: &Replay, allowed: bool, replayed: bool, what: &str| {
            let o = store.check(checks, Some(r)).await.unwrap();
            if allowed && !replayed {
                remaining -= 1;
            }
            assert_eq!(
                (o.allowed, o.replayed),
                (allowed, replayed),
                "{what}: {o:?}"
            );
            // A passing request reports the figures after its charge (none for a free replay);
            // a denied one reports them as if it had passed, so only the peek below tells.
            if allowed {
                assert_eq!(o.decisions[0].remaining, remaining, "{what}: {o:?}");
            }
            // What the rule that honours replays holds now.
            let now = store.peek(&alone).await.unwrap().decisions[0].remaining;
            assert_eq!(now, remaining, "{what}: {o:?}");
        };

    // Charged once, replayed free once (not written), then charged again: the cap is 1.
    let k = replay("cap");
    expect(&alone, &k, true, false, "first use").await;
    expect(&alone, &k, true, true, "free replay").await;
    expect(&alone, &k, true, false, "over the cap").await;

    // A replay denied by another rule does not use up the record's one replay.
    let k = replay("denied replay");
    expect(&alone, &k, true, false, "first use").await;
    expect(&with_denial, &k, false, false, "denied by the other rule").await;
    expect(&alone, &k, true, true, "the replay is still there").await;

    // A first use denied by another rule records nothing: the next use is charged.
    let k = replay("denied first use");
    expect(&with_denial, &k, false, false, "denied first use").await;
    expect(&alone, &k, true, false, "charged, not a replay").await;
    expect(&alone, &k, true, true, "now a replay").await;
}

#[tokio::test]
async fn replays_are_capped_free_and_counted_only_when_the_request_passes() {
    let redis = TestRedis::start().await;
    let store = store(RedisConnection::connect(redis.url()).await.unwrap());
    let exhausted = rule("exhausted", Algorithm::Gcra, Quota::per_hour(1).unwrap());
    let k = key("exhausted");
    let checks = [Check {
        rule: &exhausted,
        key: k,
    }];
    assert!(store.check(&checks, None).await.unwrap().allowed);
    replay_cases(&store, &exhausted, k).await;
}

/// A key per rule, such that the rules' Redis keys all lie on different Cluster slots.
async fn on_distinct_slots(
    admin: &mut MultiplexedConnection,
    store: &RedisStore,
    rules: &[&Rule],
) -> Vec<Key> {
    let mut slots: Vec<u16> = Vec::new();
    let mut keys = Vec::new();
    for rule in rules {
        loop {
            let k = key(rule.name());
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(store.redis_key(rule, k))
                .query_async(admin)
                .await
                .unwrap();
            if !slots.contains(&slot) {
                slots.push(slot);
                keys.push(k);
                break;
            }
        }
    }
    keys
}

#[tokio::test]
async fn cluster_refunds_and_replays_across_slots_on_redis_time() {
    let cluster = TestCluster::start().await;
    let store = store(
        RedisConnection::connect_cluster(cluster.urls())
            .await
            .unwrap(),
    );
    let mut node = cluster.node(0).await;
    let mut admin = redis::cluster::ClusterClient::new(cluster.urls())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    let tight = rule("tight", Algorithm::Gcra, Quota::per_hour(1).unwrap());
    for algorithm in Algorithm::ALL {
        let what = algorithm.name();
        let loose = rule(what, algorithm, Quota::per_hour(10).unwrap());
        let keys = on_distinct_slots(&mut node, &store, &[&tight, &loose]).await;
        let (tight_key, loose_key) = (keys[0], keys[1]);
        let loose_redis = store.redis_key(&loose, loose_key);
        let tight_alone = [Check {
            rule: &tight,
            key: tight_key,
        }];
        assert!(store.check(&tight_alone, None).await.unwrap().allowed);
        let stacked = [
            Check {
                rule: &loose,
                key: loose_key,
            },
            tight_alone[0],
        ];
        let alone = [stacked[0]];
        // On fresh state: the loose rule's slot charges, the tight one's denies, the charge is
        // refunded. A GCRA or log refund that leaves nothing deletes the key.
        let o = store.check(&stacked, None).await.unwrap();
        assert!(!o.allowed && o.decisions[0].allowed, "{what}: {o:?}");
        let peek = store.peek(&alone).await.unwrap();
        assert_eq!(peek.decisions[0].remaining, 10, "{what}: refunded");
        let gone = !exists_cluster(&mut admin, &loose_redis).await;
        match algorithm {
            Algorithm::Gcra | Algorithm::SlidingLog => assert!(gone, "{what}: key deleted"),
            _ => {}
        }
        // On state that was charged before: only this request's charge is taken back.
        assert!(store.check(&alone, None).await.unwrap().allowed);
        let o = store.check(&stacked, None).await.unwrap();
        assert!(!o.allowed, "{what}: {o:?}");
        let peek = store.peek(&alone).await.unwrap();
        assert_eq!(peek.decisions[0].remaining, 9, "{what}: refunded");
    }
    assert!(store.stats().refunds >= 8);
    assert_eq!(store.stats().refund_failures, 0);

    // Replays across slots: the record, the rule that honours replays and the one that does
    // not each on their own slot (take_replay, return_replay and create_replay calls).
    let exhausted = rule("exhausted", Algorithm::Gcra, Quota::per_hour(1).unwrap());
    let k = key("exhausted");
    assert!(
        store
            .check(
                &[Check {
                    rule: &exhausted,
                    key: k
                }],
                None
            )
            .await
            .unwrap()
            .allowed
    );
    replay_cases(&store, &exhausted, k).await;
    assert_eq!(store.stats().degraded, 0);
}

async fn exists_cluster(admin: &mut redis::cluster_async::ClusterConnection, key: &str) -> bool {
    let n: u64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(admin)
        .await
        .unwrap();
    n == 1
}

#[tokio::test]
async fn every_key_lives_exactly_as_long_as_its_state_matters() {
    let redis = TestRedis::start().await;
    let store = store(RedisConnection::connect(redis.url()).await.unwrap());
    let mut admin = redis.admin().await;
    let period = Duration::from_secs(10);
    for algorithm in Algorithm::ALL {
        let what = algorithm.name();
        let rule = rule(what, algorithm, Quota::new(4, period).unwrap());
        let k = key(what);
        let checks = [Check {
            rule: &rule,
            key: k,
        }];
        let redis_key = store.redis_key(&rule, k);
        // Two charges 30 ms apart: a log's key must outlive its newest entry, not its oldest.
        for i in 0..2 {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            assert!(store.check(&checks, None).await.unwrap().allowed);
            let value = get(&mut admin, &redis_key).await;
            let needed = needed_until(&value, period.as_nanos() as u64);
            let at = expiry_ms(&mut admin, &redis_key).await;
            assert_expiry(&format!("{what} {value}"), at, needed);
        }
    }

    // An idempotency record lives until it expires, and a replay keeps its expiry.
    let rule = Rule::builder("replays", Quota::per_hour(10).unwrap())
        .honour_replays(true)
        .build()
        .unwrap();
    let checks = [Check {
        rule: &rule,
        key: key("record"),
    }];
    let replay = Replay {
        key: key("record"),
        ttl: Duration::from_millis(7_777),
        max_replays: 3,
    };
    let record = store.replay_key(&replay);
    assert!(!store.check(&checks, Some(&replay)).await.unwrap().replayed);
    let value = get(&mut admin, &record).await;
    let needed = needed_until(&value, 0);
    assert_expiry("record", expiry_ms(&mut admin, &record).await, needed);
    assert!(store.check(&checks, Some(&replay)).await.unwrap().replayed);
    assert_eq!(needed_until(&get(&mut admin, &record).await, 0), needed);
    assert_expiry(
        "record after a replay",
        expiry_ms(&mut admin, &record).await,
        needed,
    );
}

#[tokio::test]
async fn a_ttl_is_rounded_up_to_the_next_millisecond() {
    let redis = TestRedis::start().await;
    let store = store(RedisConnection::connect(redis.url()).await.unwrap());
    let mut admin = redis.admin().await;
    // One request per 2000.0005 ms: a fresh key's state ends exactly that long after the
    // charge (its TAT), so its TTL must be 2001 ms, not 2000.
    let interval: Nanos = 2_000_000_500;
    let rule = rule(
        "rounding",
        Algorithm::Gcra,
        Quota::new(1, Duration::from_nanos(interval)).unwrap(),
    );
    for i in 0..10 {
        let k = key(&format!("rounding {i}"));
        let redis_key = store.redis_key(&rule, k);
        assert!(
            store
                .check(
                    &[Check {
                        rule: &rule,
                        key: k
                    }],
                    None
                )
                .await
                .unwrap()
                .allowed
        );
        let tat = needed_until(&get(&mut admin, &redis_key).await, 0);
        let charged_ms = (tat - interval) / MS;
        let ttl = expiry_ms(&mut admin, &redis_key).await - charged_ms as i64;
        // Redis counts the TTL from when SET runs, after the script read TIME: usually in the
        // same millisecond (2001), now and then in a later one (2002, or more on a loaded
        // machine). Rounded down, it would be 2000 whenever SET runs in TIME's millisecond,
        // as most of the ten do.
        assert!(
            ttl >= 2_001 && ttl <= 2_001 + SET_LATENESS_MS as i64,
            "sample {i}: TTL {ttl} ms, 2001 expected"
        );
    }
}

#[tokio::test]
async fn a_sliding_window_counter_key_outlives_its_window_and_weighs_it_in_the_next() {
    let redis = TestRedis::start().await;
    let store = store(RedisConnection::connect(redis.url()).await.unwrap());
    let mut admin = redis.admin().await;
    let period: Nanos = 400 * MS;
    let limit = 10;
    let rule = rule(
        "counter",
        Algorithm::SlidingWindow,
        Quota::new(limit, Duration::from_nanos(period)).unwrap(),
    );
    let checks = [Check {
        rule: &rule,
        key: key("counter"),
    }];
    // Fill a window from its start (10 ms in, so that no charge falls in the one before)...
    let now = redis_now(&mut admin).await;
    let window = now - now % period + period;
    sleep_until(&mut admin, window + 10 * MS).await;
    for _ in 0..limit {
        assert!(store.check(&checks, None).await.unwrap().allowed);
    }
    // ...then look from the next one: the full previous window still weighs, in proportion to
    // the part of it the sliding window still covers (`left`, the time until this window's
    // end, is the reported reset while nothing is charged in it).
    sleep_until(&mut admin, window + period + 10 * MS).await;
    let peek = store.peek(&checks).await.unwrap();
    let d = peek.decisions[0];
    let left = d.reset_after.as_nanos() as u64;
    let weighted = (limit * left).div_ceil(period);
    assert_eq!(
        d.remaining,
        limit - weighted,
        "previous window weighed: left {left} ns of {period}"
    );
    let mut admitted = 0;
    for _ in 0..limit {
        admitted += u64::from(store.check(&checks, None).await.unwrap().allowed);
    }
    let end = redis_now(&mut admin).await;
    assert!(
        end < window + 2 * period,
        "the machine was too slow for this test: the checks ran past the next window"
    );
    assert!(
        admitted < limit,
        "{admitted} admitted: the previous window was forgotten"
    );
}

#[tokio::test]
async fn a_sliding_log_forgets_entries_one_period_old_and_no_sooner() {
    let redis = TestRedis::start().await;
    let store = store(RedisConnection::connect(redis.url()).await.unwrap());
    let mut admin = redis.admin().await;
    let period: Nanos = 600 * MS;
    let rule = rule(
        "log",
        Algorithm::SlidingLog,
        Quota::new(2, Duration::from_nanos(period)).unwrap(),
    );
    let k = key("log");
    let checks = [Check {
        rule: &rule,
        key: k,
    }];
    assert!(store.check(&checks, None).await.unwrap().allowed);
    let first = needed_until(&get(&mut admin, &store.redis_key(&rule, k)).await, 0);
    sleep_until(&mut admin, first + period / 2).await;
    assert!(store.check(&checks, None).await.unwrap().allowed);
    let o = store.check(&checks, None).await.unwrap();
    assert!(!o.allowed, "both entries in the window: {o:?}");
    // Past the first entry's period (and well before the second's): one entry left, one free.
    sleep_until(&mut admin, first + period + period / 12).await;
    let o = store.check(&checks, None).await.unwrap();
    assert!(o.allowed, "the first entry left the window: {o:?}");
    assert_eq!(o.decisions[0].remaining, 0);
    let value = get(&mut admin, &store.redis_key(&rule, k)).await;
    assert_eq!(
        value.split(',').count(),
        2,
        "the entry that left the window left the stored log too: {value}"
    );
}

#[tokio::test]
async fn state_of_an_unknown_format_version_is_not_read() {
    let redis = TestRedis::start().await;
    let store = store(RedisConnection::connect(redis.url()).await.unwrap());
    let mut admin = redis.admin().await;
    let hour: Nanos = 3_600_000 * MS;
    let now = redis_now(&mut admin).await;
    let window_end = now - now % hour + hour;
    // Each would deny the next request if it were read: a full bucket, window, log, counter.
    let versions = ["2", "9", "0"];
    for v in versions {
        for (algorithm, value) in [
            (Algorithm::Gcra, format!("g{v}:{}", now + hour)),
            (Algorithm::FixedWindow, format!("f{v}:{window_end}:1")),
            (Algorithm::SlidingLog, format!("l{v}:{now}:1")),
            (Algorithm::SlidingWindow, format!("w{v}:{window_end}:0:1")),
        ] {
            let what = format!("{} {value}", algorithm.name());
            let rule = rule(algorithm.name(), algorithm, Quota::per_hour(1).unwrap());
            let k = key(&what);
            let redis_key = store.redis_key(&rule, k);
            let _: () = redis::cmd("SET")
                .arg(&redis_key)
                .arg(&value)
                .arg("PX")
                .arg(60_000)
                .query_async(&mut admin)
                .await
                .unwrap();
            let o = store
                .check(
                    &[Check {
                        rule: &rule,
                        key: k,
                    }],
                    None,
                )
                .await
                .unwrap();
            assert!(o.allowed, "{what}: read as state: {o:?}");
            assert!(get(&mut admin, &redis_key)
                .await
                .starts_with(&format!("{}1:", &value[..1])));
        }
        // A record of another version is no record: the request is charged.
        let rule = Rule::builder("replays", Quota::per_hour(10).unwrap())
            .honour_replays(true)
            .build()
            .unwrap();
        let replay = Replay {
            key: key("record"),
            ttl: Duration::from_secs(600),
            max_replays: 1,
        };
        let _: () = redis::cmd("SET")
            .arg(store.replay_key(&replay))
            .arg(format!("r{v}:{}:0", now + hour))
            .arg("PX")
            .arg(60_000)
            .query_async(&mut admin)
            .await
            .unwrap();
        let o = store
            .check(
                &[Check {
                    rule: &rule,
                    key: key("record"),
                }],
                Some(&replay),
            )
            .await
            .unwrap();
        assert!(o.allowed && !o.replayed, "record r{v}: {o:?}");
    }
}

/// The counter's second refund branch: a Cluster refund that arrives after another request has
/// rolled the counter into the next window, where the refunded charge now counts as part of the
/// previous window. No traffic can schedule that, so the script is called directly, on Redis's
/// clock, with the state such a race leaves.
#[tokio::test]
async fn a_counter_refund_after_the_window_rolled_over_takes_from_the_previous_window() {
    let redis = TestRedis::start().await;
    let mut admin = redis.admin().await;
    let hour: Nanos = 3_600_000 * MS;
    let now = redis_now(&mut admin).await;
    let window_end = now - now % hour + hour;
    // Charged one second before this window began, so in the one before it.
    let charged = window_end - hour - 1_000 * MS;
    let key = format!("rt{}:counter", nonce());
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(format!("w1:{window_end}:3:1"))
        .arg("PX")
        .arg(60_000)
        .query_async(&mut admin)
        .await
        .unwrap();
    let script = redis::Script::new(tollgate_redis::LUA_SOURCE);
    let mut call = script.prepare_invoke();
    call.key(&key)
        .arg("refund")
        .arg("") // Redis TIME
        .arg("")
        .arg(1) // one rule
        .arg("none")
        .arg(0)
        .arg(0)
        .arg(charged / 1_000_000_000)
        .arg(charged % 1_000_000_000);
    // The rule: sliding-window counter, 10 per hour, cost 1.
    call.arg("w00").arg(10).arg(hour).arg(1);
    let _: Vec<i64> = call.invoke_async(&mut admin).await.unwrap();
    assert_eq!(
        get(&mut admin, &key).await,
        format!("w1:{window_end}:2:1"),
        "the charge is taken from the previous window's count"
    );
}
