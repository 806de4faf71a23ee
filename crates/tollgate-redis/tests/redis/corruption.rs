//! State the script cannot read: live keys rewritten with garbage, with a hash, list, set, zset
//! or stream, with another algorithm's state, with an old or unknown format. Such state is one
//! key's problem: that key is decided as fresh state (and overwritten when charged), never
//! degraded; every other key stays limited exactly; the circuit breaker stays closed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use tollgate_core::{
    Algorithm, Check, Key, KeySecret, ManualClock, Nanos, Quota, Replay, Rule, Store,
};
use tollgate_redis::{RedisConnection, RedisStore};

use crate::differential::Rng;
use crate::support::{patient, TestCluster, TestRedis};

/// Ten minutes into an hour: no hourly window rolls over during a test.
const NOW: Nanos = 1_800_000_000_000_000_000 - 3_000_000_000_000 + 600_000_000_000;
const LIMIT: u64 = 5;

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

fn rule(algorithm: Algorithm, limit: u64) -> Rule {
    Rule::builder(algorithm.name(), Quota::per_hour(limit).unwrap())
        .algorithm(algorithm)
        .honour_replays(true)
        .build()
        .unwrap()
}

/// What a corruptor writes at a key.
#[derive(Debug, Clone)]
enum Bad {
    /// A string value.
    Value(Vec<u8>),
    Hash,
    List,
    Set,
    ZSet,
    Stream,
}

/// Every kind of unreadable state for a key of `algorithm`, given valid values written by the
/// other algorithms (`foreign`) at the same instant.
fn corruptions(algorithm: Algorithm, foreign: &[(Algorithm, Vec<u8>)]) -> Vec<(String, Bad)> {
    let now = NOW.to_string();
    let window_end = (NOW - NOW % 3_600_000_000_000 + 3_600_000_000_000).to_string();
    let far = (NOW + 100 * 365 * 86_400_000_000_000).to_string();
    let values: Vec<(&str, String)> = vec![
        ("letters", "abc".into()),
        ("empty", String::new()),
        ("negative", "-5".into()),
        ("fraction", "1.5".into()),
        ("exponent", "1e300".into()),
        ("nan", "nan".into()),
        ("inf", "inf".into()),
        ("colon", ":".into()),
        ("comma", ",".into()),
        ("colons", "::".into()),
        ("trailing colon", "1:".into()),
        ("leading colon", ":1".into()),
        ("too many fields", "1:2:3:4:5".into()),
        ("29 digits", "99999999999999999999999999999".into()),
        ("u64 overflow", "18446744073709551616:1".into()),
        (
            "huge count",
            format!("{window_end}:99999999999999999999999"),
        ),
        ("tag only g", "g1:".into()),
        ("tag only f", "f1:".into()),
        ("tag only l", "l1:".into()),
        ("tag only w", "w1:".into()),
        ("tag and garbage", "g1:abc".into()),
        ("unknown version", format!("g9:{now}")),
        ("unknown tag", format!("x1:{now}")),
        ("far future gcra", format!("g1:{far}")),
        ("far future window", format!("f1:{far}:0")),
        ("far future log", format!("l1:{far}:1")),
        ("far future counter", format!("w1:{far}:0:0")),
        ("log with a hole", format!("l1:{now}:1,,{now}:1")),
        ("log with a trailing comma", format!("l1:{now}:1,")),
        // The format before values were tagged (tollgate 0.1).
        ("old gcra", now.clone()),
        ("old fixed window", format!("{window_end}:3")),
        ("old sliding log", format!("{now}:1,{now}:2")),
        ("old sliding window", format!("{window_end}:1:2")),
        ("long", "1:1,".repeat(25_000)),
    ];
    let mut out: Vec<(String, Bad)> = values
        .into_iter()
        .map(|(name, v)| (name.to_owned(), Bad::Value(v.into_bytes())))
        .collect();
    out.push(("binary".into(), Bad::Value(vec![0, 0xff, b':', 0x80, b'1'])));
    for (other, value) in foreign {
        if *other != algorithm {
            out.push((format!("{} state", other.name()), Bad::Value(value.clone())));
        }
    }
    out.extend([
        ("hash".into(), Bad::Hash),
        ("list".into(), Bad::List),
        ("set".into(), Bad::Set),
        ("zset".into(), Bad::ZSet),
        ("stream".into(), Bad::Stream),
    ]);
    out
}

/// The command that writes `bad` at `key` (after a `DEL`).
fn corruption(key: &str, bad: &Bad) -> redis::Cmd {
    match bad {
        Bad::Value(v) => {
            let mut c = redis::cmd("SET");
            c.arg(key).arg(v.as_slice());
            c
        }
        Bad::Hash => {
            let mut c = redis::cmd("HSET");
            c.arg(key).arg("tat").arg(NOW.to_string());
            c
        }
        Bad::List => {
            let mut c = redis::cmd("RPUSH");
            c.arg(key).arg(NOW.to_string());
            c
        }
        Bad::Set => {
            let mut c = redis::cmd("SADD");
            c.arg(key).arg("1");
            c
        }
        Bad::ZSet => {
            let mut c = redis::cmd("ZADD");
            c.arg(key).arg(1).arg("1");
            c
        }
        Bad::Stream => {
            let mut c = redis::cmd("XADD");
            c.arg(key).arg("*").arg("f").arg("v");
            c
        }
    }
}

async fn corrupt(admin: &mut MultiplexedConnection, key: &str, bad: &Bad) {
    let _: () = redis::cmd("DEL").arg(key).query_async(admin).await.unwrap();
    let _: redis::Value = corruption(key, bad).query_async(admin).await.unwrap();
}

async fn get(admin: &mut MultiplexedConnection, key: &str) -> Vec<u8> {
    redis::cmd("GET").arg(key).query_async(admin).await.unwrap()
}

/// A valid value of every algorithm, written at `NOW` on scratch keys.
async fn foreign_values(
    store: &RedisStore,
    admin: &mut MultiplexedConnection,
) -> Vec<(Algorithm, Vec<u8>)> {
    let mut out = Vec::new();
    for algorithm in Algorithm::ALL {
        let rule = rule(algorithm, LIMIT);
        let key = key("scratch");
        store
            .check(&[Check { rule: &rule, key }], None)
            .await
            .unwrap();
        store
            .check(&[Check { rule: &rule, key }], None)
            .await
            .unwrap();
        out.push((algorithm, get(admin, &store.redis_key(&rule, key)).await));
    }
    out
}

fn assert_healthy(store: &RedisStore) {
    let s = store.stats();
    assert_eq!(s.degraded, 0, "{s:?}");
    assert_eq!(s.redis_failures, 0, "{s:?}");
    assert_eq!(s.breaker_trips, 0, "{s:?}");
    assert!(!store.breaker_open());
}

/// Charges `checks` until denied; returns how many were admitted (at most `LIMIT + 1` tries).
async fn drain(store: &RedisStore, checks: &[Check<'_>]) -> u64 {
    let mut admitted = 0;
    for _ in 0..=LIMIT {
        admitted += u64::from(store.check(checks, None).await.unwrap().allowed);
    }
    admitted
}

async fn every_corruption_is_fresh_state(
    connection: RedisConnection,
    admin: &mut MultiplexedConnection,
) {
    let clock = ManualClock::new(NOW);
    let store = RedisStore::builder(connection)
        .prefix(format!("corrupt{}", nonce()))
        .explicit_time(clock)
        .deny_cache(None)
        .budget(Duration::from_secs(5))
        .build();
    let foreign = foreign_values(&store, admin).await;
    for algorithm in Algorithm::ALL {
        let rule = rule(algorithm, LIMIT);
        for (name, bad) in corruptions(algorithm, &foreign) {
            let what = format!("{} with {name}", algorithm.name());
            let key = key(&what);
            let redis_key = store.redis_key(&rule, key);
            let checks = [Check { rule: &rule, key }];
            // Live state: two charged.
            store.check(&checks, None).await.unwrap();
            assert_eq!(
                store.check(&checks, None).await.unwrap().decisions[0].remaining,
                LIMIT - 2
            );
            corrupt(admin, &redis_key, &bad).await;
            // Unreadable state is absent: a peek sees a fresh bucket, and charges nothing.
            let peek = store.peek(&checks).await.unwrap();
            assert!(peek.allowed, "{what}: {peek:?}");
            assert_eq!(peek.decisions[0].remaining, LIMIT, "{what}: peek");
            // The first charge overwrites it; then the limit holds exactly from there.
            let first = store.check(&checks, None).await.unwrap();
            assert!(first.allowed, "{what}: {first:?}");
            assert_eq!(first.decisions[0].remaining, LIMIT - 1, "{what}: {first:?}");
            let value = get(admin, &redis_key).await;
            assert!(
                value.first().is_some_and(u8::is_ascii_lowercase),
                "{what}: rewritten as tagged state, got {:?}",
                String::from_utf8_lossy(&value)
            );
            assert_eq!(drain(&store, &checks).await, LIMIT - 1, "{what}");
            assert_healthy(&store);
        }
    }

    // An unreadable idempotency record is no record: the request is charged, and records it.
    let rule = rule(Algorithm::FixedWindow, LIMIT);
    for (name, bad) in corruptions(Algorithm::FixedWindow, &foreign) {
        let key = key(&name);
        let checks = [Check { rule: &rule, key }];
        let replay = Replay {
            key: self::key(&format!("replay {name}")),
            ttl: Duration::from_secs(600),
            max_replays: 1,
        };
        corrupt(admin, &store.replay_key(&replay), &bad).await;
        let first = store.check(&checks, Some(&replay)).await.unwrap();
        assert!(
            first.allowed && !first.replayed,
            "replay record {name}: {first:?}"
        );
        assert_eq!(
            first.decisions[0].remaining,
            LIMIT - 1,
            "replay record {name}"
        );
        let again = store.check(&checks, Some(&replay)).await.unwrap();
        assert!(
            again.allowed && again.replayed,
            "replay record {name}: {again:?}"
        );
        assert_eq!(
            again.decisions[0].remaining,
            LIMIT - 1,
            "replay record {name}"
        );
        assert_healthy(&store);
    }
}

#[tokio::test]
async fn unreadable_state_is_fresh_state_for_every_algorithm() {
    let redis = TestRedis::start().await;
    let connection = RedisConnection::connect(redis.url()).await.unwrap();
    every_corruption_is_fresh_state(connection, &mut redis.admin().await).await;
}

/// Stacked rules on different Cluster slots, one of them unreadable: the refunds of a partial
/// denial and the idempotency calls read corrupted state too.
#[tokio::test]
async fn unreadable_state_in_a_cluster_never_degrades_a_decision() {
    let cluster = TestCluster::start().await;
    let connection = RedisConnection::connect_cluster(cluster.urls())
        .await
        .unwrap();
    let clock = ManualClock::new(NOW);
    let store = RedisStore::builder(connection)
        .prefix(format!("corrupt{}", nonce()))
        .explicit_time(clock)
        .deny_cache(None)
        .budget(Duration::from_secs(5))
        .build();
    let mut admin = redis::cluster::ClusterClient::new(cluster.urls())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    let foreign: Vec<(Algorithm, Vec<u8>)> = Vec::new();
    for algorithm in Algorithm::ALL {
        let tight = rule(algorithm, 1);
        let loose = Rule::builder("loose", Quota::per_hour(1_000).unwrap())
            .algorithm(algorithm)
            .build()
            .unwrap();
        for (name, bad) in corruptions(algorithm, &foreign) {
            let what = format!("{} with {name}", algorithm.name());
            // Keys on (very likely) different slots.
            let (k1, k2) = (key(&format!("{what} 1")), key(&format!("{what} 2")));
            let checks = [
                Check {
                    rule: &loose,
                    key: k1,
                },
                Check {
                    rule: &tight,
                    key: k2,
                },
            ];
            let replay = Replay {
                key: key(&format!("{what} replay")),
                ttl: Duration::from_secs(600),
                max_replays: 1,
            };
            assert!(store.check(&checks, None).await.unwrap().allowed, "{what}");
            for k in [
                store.redis_key(&loose, k1),
                store.redis_key(&tight, k2),
                store.replay_key(&replay),
            ] {
                corrupt_cluster(&mut admin, &k, &bad).await;
            }
            // Fresh state everywhere: admitted (and the replay recorded).
            let first = store.check(&checks, Some(&replay)).await.unwrap();
            assert!(first.allowed && !first.replayed, "{what}: {first:?}");
            // The tight rule denies; the loose one's charge is refunded.
            for k in [store.redis_key(&loose, k1)] {
                corrupt_cluster(&mut admin, &k, &bad).await;
            }
            let denied = store.check(&checks, None).await.unwrap();
            assert!(!denied.allowed, "{what}: {denied:?}");
            assert_healthy(&store);
        }
    }
}

async fn corrupt_cluster(
    admin: &mut redis::cluster_async::ClusterConnection,
    key: &str,
    bad: &Bad,
) {
    let _: () = redis::cmd("DEL").arg(key).query_async(admin).await.unwrap();
    let _: redis::Value = corruption(key, bad).query_async(admin).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corruptor_under_load_leaves_every_other_key_exact_and_the_breaker_closed() {
    const TASKS: usize = 16;
    const HAMMER_LIMIT: u64 = 40;
    let redis = TestRedis::start().await;
    let store = RedisStore::builder(patient(redis.url()).await)
        .prefix(format!("load{}", nonce()))
        .explicit_time(ManualClock::new(NOW))
        .budget(Duration::from_secs(10))
        .build();
    let rules: Arc<Vec<Rule>> = Arc::new(
        Algorithm::ALL
            .iter()
            .map(|&a| rule(a, HAMMER_LIMIT))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));

    // The corruptor: rewrites its own keys, one corruption after another, and checks that each
    // is decided as fresh state.
    let corruptor = {
        let store = store.clone();
        let rules = rules.clone();
        let stop = stop.clone();
        let mut admin = redis.admin().await;
        let foreign = foreign_values(&store, &mut admin).await;
        tokio::spawn(async move {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) || rounds < 50 {
                for rule in rules.iter() {
                    let key = key("victim");
                    let checks = [Check { rule, key }];
                    let redis_key = store.redis_key(rule, key);
                    for (name, bad) in corruptions(rule.algorithm(), &foreign) {
                        store.check(&checks, None).await.unwrap();
                        store.check(&checks, None).await.unwrap();
                        corrupt(&mut admin, &redis_key, &bad).await;
                        let first = store.check(&checks, None).await.unwrap();
                        assert!(first.allowed, "{} {name}: {first:?}", rule.name());
                        assert_eq!(
                            first.decisions[0].remaining,
                            HAMMER_LIMIT - 1,
                            "{} {name}",
                            rule.name()
                        );
                        rounds += 1;
                    }
                }
            }
            rounds
        })
    };

    // The hammers: each its own keys, single rules and all four stacked, 1.5 times the limit.
    let hammers: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = store.clone();
            let rules = rules.clone();
            tokio::spawn(async move {
                let key = key(&format!("hammer {t}"));
                let mut admitted = Vec::new();
                if t % 2 == 0 {
                    for rule in rules.iter() {
                        let checks = [Check { rule, key }];
                        let mut n = 0;
                        for _ in 0..HAMMER_LIMIT * 3 / 2 {
                            n += u64::from(store.check(&checks, None).await.unwrap().allowed);
                        }
                        admitted.push((rule.name().to_owned(), n));
                    }
                } else {
                    let checks: Vec<Check<'_>> =
                        rules.iter().map(|rule| Check { rule, key }).collect();
                    let mut n = 0;
                    for _ in 0..HAMMER_LIMIT * 3 / 2 {
                        n += u64::from(store.check(&checks, None).await.unwrap().allowed);
                    }
                    admitted.push(("stacked".to_owned(), n));
                }
                admitted
            })
        })
        .collect();
    for (t, h) in hammers.into_iter().enumerate() {
        for (what, n) in h.await.expect("no panic") {
            assert_eq!(
                n, HAMMER_LIMIT,
                "task {t} {what}: admitted exactly the limit"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = corruptor.await.expect("no panic in the corruptor");
    eprintln!("{rounds} corruptions decided as fresh state under load");
    assert_healthy(&store);
}

/// A random value for a key: fragments of every format, numbers of every length, garbage.
fn random_value(rng: &mut Rng) -> Vec<u8> {
    let now = NOW + rng.range(0, 7_200_000_000_000) - 3_600_000_000_000;
    let mut v = Vec::new();
    for _ in 0..rng.range(0, 8) {
        let piece = match rng.range(0, 11) {
            0 => ["g1:", "f1:", "l1:", "w1:", "r1:", "g2:", "x1:"][rng.range(0, 6) as usize]
                .to_owned(),
            1 | 2 => now.to_string(),
            3 => rng.range(0, 1_000).to_string(),
            4 => "9".repeat(rng.range(1, 30) as usize),
            5 => ":".into(),
            6 => ",".into(),
            7 => ["-", ".", "e", "nan", " ", "\0"][rng.range(0, 5) as usize].to_owned(),
            8 => (now - now % 1_000_000_000 + 1_000_000_000).to_string(),
            9 => rng.next().to_string(),
            _ => String::from_utf8_lossy(&rng.next().to_le_bytes()).into_owned(),
        };
        v.extend_from_slice(piece.as_bytes());
    }
    v
}

/// The script itself, every mode, on random keys holding random values and types: it never
/// raises, and always replies in its documented shape.
#[tokio::test]
async fn no_stored_value_makes_the_script_raise() {
    let redis = TestRedis::start().await;
    let mut admin = redis.admin().await;
    let script = redis::Script::new(tollgate_redis::LUA_SOURCE);
    let seed = nonce() as u64;
    eprintln!("script fuzz seed {seed}");
    let mut rng = Rng::new(seed);
    let prefix = format!("fuzz{}", nonce());
    let keys: Vec<String> = (0..4).map(|i| format!("{prefix}:{i}")).collect();
    let record = format!("{prefix}:~replay");
    for round in 0..3_000 {
        for key in keys.iter().chain([&record]) {
            let bad = match rng.range(0, 9) {
                0 => Bad::Hash,
                1 => Bad::List,
                2 => Bad::Set,
                3 => Bad::ZSet,
                _ => Bad::Value(random_value(&mut rng)),
            };
            corrupt(&mut admin, key, &bad).await;
        }
        let nrules = rng.range(1, 4) as usize;
        let mode = [
            "check",
            "peek",
            "refund",
            "take_replay",
            "return_replay",
            "create_replay",
        ][rng.range(0, 5) as usize];
        let replay = ["none", "record", "taken"][rng.range(0, 2) as usize];
        let mut inv = script.prepare_invoke();
        let record_mode = mode.ends_with("_replay");
        if record_mode {
            inv.key(&record);
        } else {
            for key in &keys[..nrules] {
                inv.key(key);
            }
            if replay == "record" {
                inv.key(&record);
            }
        }
        let charged = NOW - rng.range(0, 1_000_000_000);
        inv.arg(mode)
            .arg(NOW / 1_000_000_000)
            .arg(NOW % 1_000_000_000)
            .arg(if record_mode { 0 } else { nrules })
            .arg(if record_mode { "record" } else { replay })
            .arg(rng.range(1, 1 << 52))
            .arg(rng.range(0, 3))
            .arg(charged / 1_000_000_000)
            .arg(charged % 1_000_000_000);
        if !record_mode {
            for _ in 0..nrules {
                let limit = rng.range(1, 1_000);
                let period = rng.range(1, 1 << 40);
                let interval = (period / limit).max(1);
                let algorithm = ["g", "f", "l", "w"][rng.range(0, 3) as usize];
                let code = format!("{algorithm}{}{}", rng.range(0, 1), rng.range(0, 1));
                let (a, b) = if algorithm == "g" {
                    (interval, rng.range(1, limit))
                } else {
                    (limit, period)
                };
                inv.arg(code).arg(a).arg(b).arg(rng.range(1, limit));
            }
        }
        let reply: Result<Vec<i64>, _> = inv.invoke_async(&mut admin).await;
        let reply = reply.unwrap_or_else(|e| panic!("seed {seed} round {round} {mode}: {e}"));
        let decided = if mode == "check" || mode == "peek" {
            nrules
        } else {
            0
        };
        assert_eq!(
            reply.len(),
            4 + 4 * decided,
            "seed {seed} round {round} {mode}"
        );
    }
}
