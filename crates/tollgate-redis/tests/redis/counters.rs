//! Fixed-window counters (`RedisStoreBuilder::fixed_window_counters`): the same answers as the
//! core (the conformance table and the randomized differential, explicit time), exact counts
//! under concurrency (never more admitted than the limit, on one Redis and on the Cluster),
//! refunds of denied requests, the keyspace (key names, values, TTLs), corrupt counter keys,
//! and the VMArea preset through the HTTP layer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::Request;
use axum::routing::{get, post};
use axum::Router;
use http::{Method, StatusCode};
use tollgate::presets::vmarea::VmArea;
use tollgate_core::{
    conformance, Algorithm, Check, Key, KeySecret, ManualClock, Nanos, Quota, Replay, Rule, Store,
};
use tollgate_redis::{FailurePolicy, RedisConnection, RedisStore};
use tower::ServiceExt;

use crate::differential::{differential, seed, COVERING_SEED};
use crate::http_keyspace::{auth, request};
use crate::support::{patient, patient_cluster, scan_keys, TestCluster, TestRedis};

fn nonce() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
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

fn window(name: &str, quota: Quota) -> Rule {
    Rule::builder(name, quota)
        .algorithm(Algorithm::FixedWindow)
        .build()
        .unwrap()
}

/// A counter-mode store that fails rather than guesses: a degraded answer would read as a
/// disagreement or an admission.
fn counting(connection: RedisConnection) -> tollgate_redis::RedisStoreBuilder {
    RedisStore::builder(connection)
        .fixed_window_counters(true)
        .failure_policy(FailurePolicy::FailClosed)
        .budget(Duration::from_secs(5))
}

async fn run_conformance(connection: RedisConnection) {
    let clock = ManualClock::new(conformance::BASE);
    let store = counting(connection)
        .explicit_time(clock.clone())
        .deny_cache(None)
        .build();
    if let Err(failures) = conformance::run(&store, &clock, nonce() as u64).await {
        panic!("conformance failures with fixed-window counters:\n{failures}");
    }
    let stats = store.stats();
    assert_eq!((stats.degraded, stats.refund_failures), (0, 0), "{stats:?}");
}

#[tokio::test]
async fn counters_pass_the_conformance_table() {
    let redis = TestRedis::start().await;
    run_conformance(RedisConnection::connect(redis.url()).await.unwrap()).await;
}

#[tokio::test]
async fn counters_pass_the_conformance_table_on_a_cluster() {
    let cluster = TestCluster::start().await;
    run_conformance(patient_cluster(cluster.urls()).await).await;
}

#[tokio::test]
async fn counters_decide_exactly_as_the_core_in_explicit_time() {
    let redis = TestRedis::start().await;
    let connection = RedisConnection::connect(redis.url()).await.unwrap();
    differential(connection.clone(), COVERING_SEED, 75, 40, true)
        .await
        .assert_complete(COVERING_SEED);
    differential(connection, seed(), 75, 40, true).await;
}

#[tokio::test]
async fn counters_on_a_cluster_decide_exactly_as_the_core_in_explicit_time() {
    let cluster = TestCluster::start().await;
    let connection = patient_cluster(cluster.urls()).await;
    let coverage = differential(connection.clone(), COVERING_SEED, 30, 30, true).await;
    assert!(coverage.refunds > 0, "seed {COVERING_SEED}: no refund");
    differential(connection, seed(), 30, 30, true).await;
}

/// `callers` concurrent requests of cost 1 against `limit`, on real time: exactly `limit`
/// pass, and once the refunds have landed the counter holds exactly `limit`.
async fn concurrent_requests_admit_exactly_the_limit(store: RedisStore, admin_key: &str) {
    const LIMIT: u64 = 25;
    const CALLERS: usize = 200;
    // A window of an hour: no edge during the test (unless it starts within a minute of one).
    let rule = Arc::new(window("burst", Quota::per_hour(LIMIT).unwrap()));
    let who = key(admin_key);
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (store, rule) = (store.clone(), Arc::clone(&rule));
            tokio::spawn(async move {
                let checks = [Check {
                    rule: &rule,
                    key: who,
                }];
                store.check(&checks, None).await.unwrap().allowed
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += u64::from(task.await.unwrap());
    }
    assert_eq!(admitted, LIMIT, "exactly the limit passes");
    let stats = store.stats();
    assert_eq!(stats.degraded, 0, "{stats:?}");
    assert_eq!(stats.refund_failures, 0, "{stats:?}");
    assert!(stats.refunds >= (CALLERS as u64 - LIMIT), "{stats:?}");
    // The refunds have landed (each denied request waited for its own): a request more is
    // denied, from Redis (no deny cache), with nothing left.
    let checks = [Check {
        rule: &rule,
        key: who,
    }];
    let outcome = store.check(&checks, None).await.unwrap();
    assert!(!outcome.allowed);
    assert_eq!(outcome.decisions[0].remaining, 0);
}

#[tokio::test]
async fn concurrent_requests_admit_exactly_the_limit_on_one_redis() {
    let redis = TestRedis::start().await;
    let store = counting(patient(redis.url()).await)
        .deny_cache(None)
        .build();
    concurrent_requests_admit_exactly_the_limit(store, "one").await;
}

#[tokio::test]
async fn concurrent_requests_admit_exactly_the_limit_on_a_cluster() {
    let cluster = TestCluster::start().await;
    let store = counting(patient_cluster(cluster.urls()).await)
        .deny_cache(None)
        .build();
    concurrent_requests_admit_exactly_the_limit(store, "cluster").await;
}

/// Two stacked windows on keys that fall on different Cluster slots, hammered concurrently:
/// neither ever admits past its limit, and a request passes only if both admitted it.
#[tokio::test]
async fn stacked_windows_across_slots_never_admit_past_either_limit() {
    let cluster = TestCluster::start().await;
    let store = counting(patient_cluster(cluster.urls()).await)
        .deny_cache(None)
        .build();
    let wide = Arc::new(window("wide", Quota::per_hour(30).unwrap()));
    let narrow = Arc::new(window("narrow", Quota::per_hour(12).unwrap()));
    let (a, b) = (key("wide"), key("narrow"));
    let tasks: Vec<_> = (0..120)
        .map(|_| {
            let (store, wide, narrow) = (store.clone(), Arc::clone(&wide), Arc::clone(&narrow));
            tokio::spawn(async move {
                let checks = [
                    Check {
                        rule: &wide,
                        key: a,
                    },
                    Check {
                        rule: &narrow,
                        key: b,
                    },
                ];
                store.check(&checks, None).await.unwrap().allowed
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += u64::from(task.await.unwrap());
    }
    assert_eq!(admitted, 12);
    // What the narrow window denied was refunded on the wide one: 18 of it are left.
    let outcome = store
        .peek(&[Check {
            rule: &wide,
            key: a,
        }])
        .await
        .unwrap();
    assert_eq!(outcome.decisions[0].remaining, 30 - 12, "{outcome:?}");
    assert_eq!(store.stats().refund_failures, 0);
}

/// A denied request gives its charge back: a request of cost 3 against 2 left is denied, and
/// then two requests of cost 1 pass; a request that another rule denies leaves nothing on the
/// rule that admitted it.
#[tokio::test]
async fn a_denied_request_is_refunded() {
    let redis = TestRedis::start().await;
    let prefix = format!("tgc{}", nonce());
    let store = counting(patient(redis.url()).await)
        .prefix(prefix.as_str())
        .deny_cache(None)
        .build();
    let one = window("one", Quota::per_hour(4).unwrap());
    let three = one.with_cost(3).unwrap();
    let who = key("refund");
    let check = |rule| [Check { rule, key: who }];
    assert!(store.check(&check(&one), None).await.unwrap().allowed);
    assert!(store.check(&check(&one), None).await.unwrap().allowed);
    let denied = store.check(&check(&three), None).await.unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.decisions[0].remaining, 2, "{denied:?}");
    assert!(store.check(&check(&one), None).await.unwrap().allowed);
    assert!(store.check(&check(&one), None).await.unwrap().allowed);
    assert!(!store.check(&check(&one), None).await.unwrap().allowed);

    // Stacked: `open` admits, `shut` denies: `open` keeps nothing of it.
    let open = window("open", Quota::per_hour(10).unwrap());
    let shut = window("shut", Quota::per_hour(1).unwrap());
    let (a, b) = (key("open"), key("shut"));
    let both = [
        Check {
            rule: &open,
            key: a,
        },
        Check {
            rule: &shut,
            key: b,
        },
    ];
    assert!(store.check(&both, None).await.unwrap().allowed);
    for _ in 0..3 {
        assert!(!store.check(&both, None).await.unwrap().allowed);
    }
    let mut admin = redis.admin().await;
    let count: i64 = redis::cmd("GET")
        .arg(counter_key(&store, &open, a, 3_600))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(count, 1, "only the admitted request counts on `open`");
    assert!(store.stats().refunds >= 4);
}

/// A request dropped once its charge is on the wire (cancelled, or its budget spent) still gets
/// its refund: the exchange finishes on its own. Polled once, the second request of a limit of 1
/// has sent its `INCRBY` (Redis counts 2, a denial); dropped, it must still give the unit back.
#[tokio::test]
async fn a_request_dropped_after_its_charge_was_sent_is_still_refunded() {
    use futures_util::FutureExt;

    let redis = TestRedis::start().await;
    let prefix = format!("tgd{}", nonce());
    let store = counting(patient(redis.url()).await)
        .prefix(prefix.as_str())
        .deny_cache(None)
        .build();
    let rule = window("dropped", Quota::per_hour(1).unwrap());
    let who = key("dropped");
    let check = [Check {
        rule: &rule,
        key: who,
    }];
    assert!(store.check(&check, None).await.unwrap().allowed);
    assert!(
        store.check(&check, None).now_or_never().is_none(),
        "a round trip cannot be over at its first poll"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.stats().refunds == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped request was never refunded: {:?}",
            store.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut admin = redis.admin().await;
    let count: i64 = redis::cmd("GET")
        .arg(counter_key(&store, &rule, who, 3_600))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(count, 1, "the dropped request's charge was given back");
    assert_eq!(store.stats().refund_failures, 0);
}

/// The counter key of `rule` for `key` in the window that holds now (period in seconds).
fn counter_key(store: &RedisStore, rule: &Rule, key: Key, period_secs: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!("{}:{}", store.redis_key(rule, key), now / period_secs)
}

/// The keyspace: one key per (rule, key, window), `<prefix>:<rule>:<32 hex>:<window index>`, an
/// integer count, and a TTL from the window's end plus the documented slack (1 s plus the
/// refund timeout, max(1 s, budget)); a request that mixes in another algorithm keeps that
/// rule's state in the script's format, and a replay its record.
#[tokio::test]
async fn counter_keys_are_one_per_window_hold_the_count_and_expire_after_their_window() {
    let redis = TestRedis::start().await;
    let prefix = format!("tgk{}", nonce());
    let store = RedisStore::builder(patient(redis.url()).await)
        .fixed_window_counters(true)
        .prefix(prefix.as_str())
        .build();
    let minute = window("per_minute", Quota::per_minute(100).unwrap());
    let second = window("per_second", Quota::per_second(100).unwrap());
    let gcra = Rule::builder("gcra", Quota::per_minute(100).unwrap())
        .honour_replays(true)
        .build()
        .unwrap();
    let who = key("keyspace");
    let replay = Replay {
        key: key("idem"),
        ttl: Duration::from_secs(30),
        max_replays: 1,
    };
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let windows = [
        Check {
            rule: &minute,
            key: who,
        },
        Check {
            rule: &second,
            key: who,
        },
    ];
    for _ in 0..3 {
        assert!(store.check(&windows, None).await.unwrap().allowed);
    }
    let mixed = [
        Check {
            rule: &minute,
            key: who,
        },
        Check {
            rule: &gcra,
            key: who,
        },
    ];
    assert!(store.check(&mixed, Some(&replay)).await.unwrap().allowed);
    let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();

    let mut admin = redis.admin().await;
    let keys = scan_keys(&mut admin, &format!("{prefix}:*")).await;
    let hex = who.to_hex();
    let minute_index = |t: Duration| t.as_secs() / 60;
    let second_index = |t: Duration| t.as_secs();
    let mut expected: Vec<String> = Vec::new();
    for i in minute_index(before)..=minute_index(after) {
        expected.push(format!("{prefix}:per_minute:{hex}:{i}"));
    }
    for i in second_index(before)..=second_index(after) {
        expected.push(format!("{prefix}:per_second:{hex}:{i}"));
    }
    // Every key found is one of the windows the traffic spanned, or the GCRA state, or the
    // replay record; nothing else.
    let gcra_key = store.redis_key(&gcra, who);
    let replay_key = store.replay_key(&replay);
    for k in &keys {
        assert!(
            expected.contains(k) || *k == gcra_key || *k == replay_key,
            "unexpected key {k} (expected windows {expected:?})"
        );
    }
    assert!(
        keys.contains(&gcra_key) && keys.contains(&replay_key),
        "{keys:?}"
    );
    let mut total: BTreeMap<&str, i64> = BTreeMap::new();
    // The refund timeout is max(1 s, budget 50 ms) = 1 s, plus 1 s of slack.
    let slack_ms = 2_000;
    for k in keys.iter().filter(|k| expected.contains(k)) {
        let count: String = redis::cmd("GET")
            .arg(k)
            .query_async(&mut admin)
            .await
            .unwrap();
        let count: i64 = count.parse().unwrap_or_else(|_| panic!("{k} = {count:?}"));
        let rule = k.split(':').nth(1).unwrap();
        *total
            .entry(if rule == "per_minute" {
                "per_minute"
            } else {
                "per_second"
            })
            .or_default() += count;
        let index: u64 = k.rsplit(':').next().unwrap().parse().unwrap();
        let period_ms = if rule == "per_minute" { 60_000 } else { 1_000 };
        let window_end_ms = (index + 1) * period_ms;
        let expires_at: i64 = redis::cmd("PEXPIRETIME")
            .arg(k)
            .query_async(&mut admin)
            .await
            .unwrap();
        let expires_at = expires_at as u64;
        // Set from this process's clock at the charge: the window's end plus the slack, within
        // the milliseconds between the charge and Redis running it (and rounding up).
        assert!(
            expires_at >= window_end_ms + slack_ms - 5
                && expires_at <= window_end_ms + slack_ms + 1_000,
            "{k} expires at {expires_at}, its window ends at {window_end_ms}"
        );
    }
    assert_eq!(total.get("per_minute"), Some(&4), "{total:?}");
    assert_eq!(total.get("per_second"), Some(&3), "{total:?}");
}

/// A counter key holding something other than an integer (garbage, a float, another type)
/// is fresh state, repaired on the next charge: no error, no degraded decision, the breaker
/// closed, and the count exact from then on.
#[tokio::test]
async fn a_corrupt_counter_key_is_fresh_state() {
    let redis = TestRedis::start().await;
    let prefix = format!("tgx{}", nonce());
    let store = counting(patient(redis.url()).await)
        .prefix(prefix.as_str())
        .deny_cache(None)
        .build();
    let rule = window("corrupt", Quota::per_hour(3).unwrap());
    let mut admin = redis.admin().await;
    type Corrupt = fn(&str) -> redis::Cmd;
    let corruptions: Vec<(&str, Corrupt)> = vec![
        ("letters", |k| redis::cmd("SET").arg(k).arg("abc").clone()),
        ("float", |k| redis::cmd("SET").arg(k).arg("1.5").clone()),
        ("huge", |k| {
            redis::cmd("SET")
                .arg(k)
                .arg("99999999999999999999999")
                .clone()
        }),
        ("overflowing", |k| {
            redis::cmd("SET").arg(k).arg(i64::MAX).clone()
        }),
        ("negative", |k| redis::cmd("SET").arg(k).arg(-7).clone()),
        ("hash", |k| {
            redis::cmd("HSET").arg(k).arg("f").arg(1).clone()
        }),
        ("list", |k| redis::cmd("RPUSH").arg(k).arg(1).clone()),
        ("set", |k| redis::cmd("SADD").arg(k).arg(1).clone()),
    ];
    for (name, corrupt) in corruptions {
        let who = key(name);
        let redis_key = counter_key(&store, &rule, who, 3_600);
        let cmd = corrupt(&redis_key);
        let _: redis::Value = cmd.query_async(&mut admin).await.unwrap();
        let checks = [Check {
            rule: &rule,
            key: who,
        }];
        for n in 1..=3u64 {
            let outcome = store.check(&checks, None).await.unwrap();
            assert!(outcome.allowed, "{name}: request {n}: {outcome:?}");
            assert_eq!(outcome.decisions[0].remaining, 3 - n, "{name}: request {n}");
        }
        assert!(!store.check(&checks, None).await.unwrap().allowed, "{name}");
        let count: i64 = redis::cmd("GET")
            .arg(&redis_key)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(count, 3, "{name}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&redis_key)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(ttl > 0, "{name}: the repaired key expires ({ttl})");
    }
    // A peek of a corrupt key reads it as fresh too.
    let who = key("peeked");
    let redis_key = counter_key(&store, &rule, who, 3_600);
    let _: () = redis::cmd("SET")
        .arg(&redis_key)
        .arg("garbage")
        .query_async(&mut admin)
        .await
        .unwrap();
    let peek = store
        .peek(&[Check {
            rule: &rule,
            key: who,
        }])
        .await
        .unwrap();
    assert!(peek.allowed && peek.decisions[0].remaining == 3, "{peek:?}");
    let stats = store.stats();
    assert_eq!(
        (stats.degraded, stats.script_errors, stats.breaker_trips),
        (0, 0, 0),
        "{stats:?}"
    );
}

/// The VMArea preset end to end through the HTTP layer on counters: per-token and per-IP
/// limits exact (with the headers they imply), free replays, and counter keys in Redis.
#[tokio::test]
async fn the_vmarea_preset_through_the_http_layer_on_counters() {
    let redis = TestRedis::start_controllable().await;
    let store = RedisStore::builder(patient(redis.url()).await)
        .fixed_window_counters(true)
        .build();
    store.load_script().await.unwrap();
    let limiter = VmArea::new()
        .per_token(5)
        .per_ip(3)
        .builder()
        .store(store.clone())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/auth/login", post(|| async { "logged in" }))
        .route(
            "/api/public/v1/vms",
            get(|| async { "[]" }).post(|| async { "created" }),
        )
        .layer(limiter)
        .layer(axum::middleware::from_fn(auth));
    let send = async |req: Request| app.clone().oneshot(req).await.unwrap();

    // Per token 5 a minute: 4 reads, one write sent twice (the second a free replay), then a
    // read over the limit.
    let token = [("x-api-key", "ak_live_counter_test")];
    for n in 0..4 {
        let response = send(request(
            Method::GET,
            "/api/public/v1/vms",
            "203.0.113.9",
            &token,
        ))
        .await;
        assert_eq!(response.status(), StatusCode::OK, "read {n}");
    }
    let write = [token[0], ("idempotency-key", "idem-counter-1")];
    for n in 0..2 {
        let response = send(request(
            Method::POST,
            "/api/public/v1/vms",
            "203.0.113.9",
            &write,
        ))
        .await;
        assert_eq!(response.status(), StatusCode::OK, "write {n}");
    }
    let over = send(request(
        Method::GET,
        "/api/public/v1/vms",
        "203.0.113.9",
        &token,
    ))
    .await;
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        over.headers().contains_key("retry-after"),
        "{:?}",
        over.headers()
    );
    // Per IP 3 a minute on logins.
    for n in 0..3 {
        let response = send(request(Method::POST, "/auth/login", "198.51.100.20", &[])).await;
        assert_eq!(response.status(), StatusCode::OK, "login {n}");
    }
    let denied = send(request(Method::POST, "/auth/login", "198.51.100.20", &[])).await;
    assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);

    let mut admin = redis.admin().await;
    let keys = scan_keys(&mut admin, "*").await;
    let mut kinds: BTreeMap<String, i64> = BTreeMap::new();
    for k in &keys {
        let parts: Vec<&str> = k.split(':').collect();
        if parts[1] == "~replay" {
            *kinds.entry("~replay".into()).or_default() += 1;
            continue;
        }
        assert_eq!(parts.len(), 4, "a counter key: {k}");
        let count: String = redis::cmd("GET")
            .arg(k)
            .query_async(&mut admin)
            .await
            .unwrap();
        *kinds.entry(parts[1].into()).or_default() += count.parse::<i64>().unwrap();
    }
    // 5 charged per token (4 reads, one write; the replay was free, the 6th read refunded),
    // 3 per IP (the 4th login refunded); one idempotency record.
    let expected: BTreeMap<String, i64> = [("per_token", 5), ("per_ip", 3), ("~replay", 1)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(kinds, expected, "{keys:?}");
    assert_eq!(store.stats().degraded, 0);
}

/// Counters decide against this process's clock: an explicit clock moved past a window's end
/// starts a new window (a new key), exactly as the core does.
#[tokio::test]
async fn a_new_window_is_a_new_key() {
    let redis = TestRedis::start().await;
    let base: Nanos = 1_800_000_000_000_000_000;
    let clock = ManualClock::new(base);
    let prefix = format!("tgw{}", nonce());
    let store = counting(patient(redis.url()).await)
        .prefix(prefix.as_str())
        .explicit_time(clock.clone())
        .build();
    let rule = window("w", Quota::per_second(2).unwrap());
    let who = key("windows");
    let checks = [Check {
        rule: &rule,
        key: who,
    }];
    for _ in 0..2 {
        assert!(store.check(&checks, None).await.unwrap().allowed);
    }
    let denied = store.check(&checks, None).await.unwrap();
    assert_eq!(denied.retry_after(), Some(Duration::from_secs(1)));
    clock.set(base + 1_000_000_000);
    assert!(store.check(&checks, None).await.unwrap().allowed);
    let mut admin = redis.admin().await;
    let keys = scan_keys(&mut admin, &format!("{prefix}:*")).await;
    let hex = who.to_hex();
    assert_eq!(
        keys,
        vec![
            format!("{prefix}:w:{hex}:1800000000"),
            format!("{prefix}:w:{hex}:1800000001"),
        ]
    );
}

/// Redis unreachable: counters go through the same failure policy and breaker as the script.
/// Fail-closed answers the error, fail-open admits as degraded, the fallback decides locally
/// (exactly, at its scaled limit), and consecutive failures open the breaker.
#[tokio::test]
async fn counters_without_redis_follow_the_failure_policy() {
    let port = crate::support::DeadPort::new();
    let pool = || {
        deadpool_redis::Config::from_url(port.url())
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .unwrap()
    };
    let rule = window("dead", Quota::per_hour(4).unwrap());
    let who = key("dead");
    let checks = [Check {
        rule: &rule,
        key: who,
    }];

    let closed = RedisStore::builder(pool())
        .fixed_window_counters(true)
        .failure_policy(FailurePolicy::FailClosed)
        .build();
    let error = closed.check(&checks, None).await.unwrap_err();
    assert!(error.is_unavailable(), "{error:?}");

    let open = RedisStore::builder(pool())
        .fixed_window_counters(true)
        .failure_policy(FailurePolicy::FailOpen)
        .build();
    for _ in 0..6 {
        let outcome = open.check(&checks, None).await.unwrap();
        assert!(outcome.allowed && outcome.degraded, "{outcome:?}");
    }
    let stats = open.stats();
    assert_eq!((stats.degraded, stats.failed_open), (6, 6), "{stats:?}");
    assert!(stats.breaker_trips >= 1 && open.breaker_open(), "{stats:?}");

    let fallback = RedisStore::builder(pool())
        .fixed_window_counters(true)
        .failure_policy(FailurePolicy::fallback(2))
        .build();
    let admitted = {
        let mut n = 0;
        for _ in 0..5 {
            let outcome = fallback.check(&checks, None).await.unwrap();
            assert!(outcome.degraded);
            n += u32::from(outcome.allowed);
        }
        n
    };
    assert_eq!(admitted, 2, "4 per hour over 2 instances");
}
