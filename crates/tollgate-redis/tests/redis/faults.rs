//! Redis failing: stopped under load, hung, unreachable; the policies, the budget, the breaker,
//! and recovery without restarting the application.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_core::{Check, KeySecret, Quota, Rule, Store};
use tollgate_redis::{BreakerConfig, FailurePolicy, RedisConnection, RedisStore, RedisStoreError};

use crate::support::{command_calls, DeadPort, TestRedis};

const BUDGET: Duration = Duration::from_millis(50);
/// Scheduling slack on a loaded 2-core machine in a debug build: the budget bounds the Redis
/// call; a decision also includes the policy's own (local, microsecond) work and task wake-up.
/// Most decisions (`WITHIN_SLACK`) must finish within `BUDGET + SLACK`.
const SLACK: Duration = Duration::from_millis(40);
const WITHIN_SLACK: f64 = 0.99;
/// No decision at all may take this long: it is ten budgets, and half the 1 s response timeout
/// of the connections under test, so a decision this slow was not cut short by the budget (a
/// descheduled task on a busy machine, which is what the 1% above allows for, is far shorter).
const HANG: Duration = Duration::from_millis(500);

fn rule() -> Rule {
    Rule::builder("api", Quota::per_second(1_000_000).unwrap())
        .build()
        .unwrap()
}

struct Sample {
    store: usize,
    elapsed: Duration,
    result: Result<tollgate_core::Outcome, String>,
}

/// Runs `workers` callers per store, each checking in a loop (1 ms apart) until `stop`.
fn load(
    stores: &[RedisStore],
    rule: &Rule,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Sample>>> {
    let mut handles = Vec::new();
    for (s, store) in stores.iter().enumerate() {
        for w in 0..workers {
            let store = store.clone();
            let rule = rule.clone();
            let stop = stop.clone();
            handles.push(tokio::spawn(async move {
                let key = KeySecret::DEFAULT.key().part(&[s as u8, w as u8]).finish();
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) && samples.len() < 20_000 {
                    let checks = [Check { rule: &rule, key }];
                    let start = Instant::now();
                    let result = store.check(&checks, None).await.map_err(|e| e.to_string());
                    samples.push(Sample {
                        store: s,
                        elapsed: start.elapsed(),
                        result,
                    });
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                samples
            }));
        }
    }
    handles
}

fn stores_for(connections: Vec<RedisConnection>) -> Vec<RedisStore> {
    let policies = [
        FailurePolicy::FailOpen,
        FailurePolicy::FailClosed,
        FailurePolicy::fallback(2),
    ];
    connections
        .into_iter()
        .zip(policies)
        .enumerate()
        .map(|(i, (c, policy))| {
            RedisStore::builder(c)
                .prefix(format!("faults{i}"))
                .budget(BUDGET)
                .failure_policy(policy)
                .build()
        })
        .collect()
}

async fn connections(redis: &TestRedis) -> Vec<RedisConnection> {
    let pool = deadpool_redis::Config::from_url(redis.url())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    vec![
        RedisConnection::connect(redis.url()).await.unwrap(),
        pool.into(),
        RedisConnection::connect(redis.url()).await.unwrap(),
    ]
}

/// Waits until every store decides through Redis again; returns how long that took.
async fn recovery(stores: &[RedisStore], rule: &Rule) -> Duration {
    let start = Instant::now();
    for store in stores {
        loop {
            let before = store.stats();
            let key = KeySecret::DEFAULT.key().part(b"recovery-probe").finish();
            let _ = store.check(&[Check { rule, key }], None).await;
            let after = store.stats();
            if after.degraded == before.degraded && after.deny_cache_hits == before.deny_cache_hits
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no recovery after 5 s: {after:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    start.elapsed()
}

fn check_samples(samples: &[Sample]) {
    let mut elapsed: Vec<Duration> = samples.iter().map(|s| s.elapsed).collect();
    elapsed.sort();
    let worst = *elapsed.last().unwrap();
    let slow = elapsed.iter().filter(|&&e| e > BUDGET + SLACK).count();
    assert!(
        slow as f64 <= (1.0 - WITHIN_SLACK) * elapsed.len() as f64,
        "{slow} of {} decisions took more than {:?} (budget {BUDGET:?}), slowest {worst:?}",
        elapsed.len(),
        BUDGET + SLACK
    );
    assert!(worst < HANG, "a decision took {worst:?}, budget {BUDGET:?}");
    for s in samples {
        match (s.store, &s.result) {
            // Fail open and fall back always answer.
            (0 | 2, Err(e)) => panic!("store {} returned an error: {e}", s.store),
            (0, Ok(o)) if o.binding.is_none() => assert!(o.allowed),
            _ => {}
        }
    }
    eprintln!(
        "{} decisions, {slow} over {:?}, slowest {worst:?} (budget {BUDGET:?})",
        samples.len(),
        BUDGET + SLACK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_under_load_then_back() {
    let redis = TestRedis::start_controllable().await;
    let stores = stores_for(connections(&redis).await);
    let rule = rule();
    let stop = Arc::new(AtomicBool::new(false));
    let handles = load(&stores, &rule, 4, stop.clone());

    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.stop().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    for store in &stores {
        assert!(store.breaker_open(), "{:?}", store.stats());
    }
    redis.restart().await;
    let took = recovery(&stores, &rule).await;
    eprintln!("recovered {took:?} after Redis answered PING again");
    assert!(took < Duration::from_secs(1), "recovery took {took:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);

    let mut samples = Vec::new();
    for h in handles {
        samples.extend(h.await.expect("no panic in any caller"));
    }
    check_samples(&samples);
    let [open, closed, fallback] = [stores[0].stats(), stores[1].stats(), stores[2].stats()];
    assert!(
        open.failed_open > 0 && open.degraded == open.failed_open,
        "{open:?}"
    );
    assert!(
        closed.failed_closed > 0 && closed.degraded == closed.failed_closed,
        "{closed:?}"
    );
    assert!(
        fallback.fell_back > 0 && fallback.degraded == fallback.fell_back,
        "{fallback:?}"
    );
    for s in [open, closed, fallback] {
        assert!(s.breaker_trips >= 1 && s.short_circuited > 0, "{s:?}");
    }
    // Fail-closed decisions were errors, counted one for one.
    let errors = samples
        .iter()
        .filter(|s| s.store == 1 && s.result.is_err())
        .count() as u64;
    assert!(errors > 0 && errors <= closed.failed_closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hung_the_budget_holds_then_back() {
    let redis = TestRedis::start_controllable().await;
    let stores = stores_for(connections(&redis).await);
    let rule = rule();
    let stop = Arc::new(AtomicBool::new(false));
    let handles = load(&stores, &rule, 4, stop.clone());

    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.pause().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    for store in &stores {
        assert!(store.breaker_open(), "{:?}", store.stats());
        assert!(store.stats().timeouts > 0);
    }
    redis.resume().await;
    let took = recovery(&stores, &rule).await;
    eprintln!("recovered {took:?} after Redis was resumed");
    assert!(took < Duration::from_secs(1), "recovery took {took:?}");
    stop.store(true, Ordering::Relaxed);

    let mut samples = Vec::new();
    for h in handles {
        samples.extend(h.await.expect("no panic in any caller"));
    }
    check_samples(&samples);
    for store in &stores {
        let s = store.stats();
        assert!(s.breaker_trips >= 1 && s.short_circuited > 0, "{s:?}");
    }
}

/// The policies, one by one, against a Redis that is not there at all.
#[tokio::test]
async fn policies_without_redis() {
    let port = DeadPort::new();
    let dead = port.url();
    let pool = || {
        deadpool_redis::Config::from_url(dead.clone())
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .unwrap()
    };
    let rule = Rule::builder("per_token", Quota::per_hour(10).unwrap())
        .build()
        .unwrap();
    let key = KeySecret::DEFAULT.key().part(b"t").finish();
    let checks = [Check { rule: &rule, key }];

    let open = RedisStore::builder(pool())
        .failure_policy(FailurePolicy::FailOpen)
        .build();
    let outcome = open.check(&checks, None).await.unwrap();
    assert!(outcome.allowed);
    assert_eq!(outcome.binding, None, "no made-up headers");
    assert_eq!(outcome.decisions[0].remaining, 10);
    assert!(open.peek(&checks).await.unwrap().allowed);

    let closed = RedisStore::builder(pool())
        .failure_policy(FailurePolicy::FailClosed)
        .build();
    let error = closed.check(&checks, None).await.unwrap_err();
    assert!(error.is_unavailable());
    assert!(
        matches!(
            error,
            RedisStoreError::Pool(_) | RedisStoreError::Unavailable(_)
        ),
        "{error:?}"
    );
    eprintln!("fail-closed error: {error}");

    // Fallback: a local store with the limit divided by 2 instances.
    let fallback = RedisStore::builder(pool())
        .failure_policy(FailurePolicy::fallback(2))
        .build();
    let admitted = {
        let mut n = 0;
        for _ in 0..20 {
            n += usize::from(fallback.check(&checks, None).await.unwrap().allowed);
        }
        n
    };
    assert_eq!(admitted, 5);
    let denied = fallback.check(&checks, None).await.unwrap();
    assert_eq!(denied.decisions[0].limit, 5);
    assert!(denied.retry_after().is_some());

    // The breaker: after 5 failures, Redis is no longer called, for the cool-down.
    let breaker = RedisStore::builder(pool())
        .breaker(BreakerConfig {
            failures: 5,
            cool_down: Duration::from_secs(60),
        })
        .build();
    for _ in 0..20 {
        breaker.check(&checks, None).await.unwrap();
    }
    let s = breaker.stats();
    assert_eq!(s.redis_calls, 5, "{s:?}");
    assert_eq!(s.short_circuited, 15);
    assert_eq!(s.breaker_trips, 1);
    assert_eq!(s.degraded, 20);
    assert!(breaker.breaker_open());
}

/// A Redis user that may run every command but `denied`; its URL.
async fn acl_user(redis: &TestRedis, user: &str, password: &str, denied: &[&str]) -> String {
    let mut setuser = redis::cmd("ACL");
    setuser
        .arg("SETUSER")
        .arg(user)
        .arg("on")
        .arg(format!(">{password}"))
        .arg("~*")
        .arg("+@all");
    for command in denied {
        setuser.arg(format!("-{command}"));
    }
    let _: () = setuser.query_async(&mut redis.admin().await).await.unwrap();
    redis
        .url()
        .replace("redis://", &format!("redis://{user}:{password}@"))
}

/// Redis answers but refuses the script (an ACL without EVALSHA or FCALL): every request is decided by
/// the policy and logged, but this is not an outage, so the breaker stays closed and nothing
/// shows the password.
#[tokio::test]
async fn a_refused_script_is_not_an_outage() {
    const PASSWORD: &str = "pw-Zm9vYmFyYmF6";
    let redis = TestRedis::start().await;
    let url = acl_user(
        &redis,
        "limited",
        PASSWORD,
        &["evalsha", "eval", "script", "fcall", "function"],
    )
    .await;
    let rule = rule();
    let key = KeySecret::DEFAULT.key().part(b"acl").finish();
    let checks = [Check { rule: &rule, key }];

    let open = RedisStore::builder(RedisConnection::connect(url.as_str()).await.unwrap())
        .breaker(BreakerConfig {
            failures: 2,
            cool_down: Duration::from_secs(60),
        })
        .build();
    for _ in 0..20 {
        assert!(open.check(&checks, None).await.unwrap().allowed);
    }
    let s = open.stats();
    assert_eq!(
        (s.script_errors, s.degraded, s.failed_open),
        (20, 20, 20),
        "{s:?}"
    );
    assert_eq!((s.redis_failures, s.breaker_trips), (0, 0), "{s:?}");
    assert!(!open.breaker_open());

    let closed = RedisStore::builder(RedisConnection::connect(url.as_str()).await.unwrap())
        .failure_policy(FailurePolicy::FailClosed)
        .build();
    let error = closed.check(&checks, None).await.unwrap_err();
    assert!(matches!(error, RedisStoreError::Refused(_)), "{error:?}");
    assert!(!error.is_unavailable());
    eprintln!("refused: {error}");
    for shown in [
        error.to_string(),
        format!("{error:?}"),
        format!("{closed:?}"),
    ] {
        assert!(!shown.contains(PASSWORD), "{shown}");
    }
}

/// A user whose ACL refuses Functions (as Redis 6 would not know them) runs the script by
/// `EVALSHA` instead: every decision exact, none degraded.
#[tokio::test]
async fn a_redis_that_refuses_functions_runs_the_script() {
    const PASSWORD: &str = "pw-c2NyaXB0cw";
    let redis = TestRedis::start().await;
    let mut admin = redis.admin().await;
    let url = acl_user(&redis, "scripts", PASSWORD, &["fcall", "function"]).await;
    let store = RedisStore::connect(url.as_str()).await.unwrap();
    let rule = Rule::builder("r", Quota::per_minute(10).unwrap())
        .build()
        .unwrap();
    let checks = [Check {
        rule: &rule,
        key: KeySecret::DEFAULT.key().part(b"no-functions").finish(),
    }];
    for remaining in (0..10).rev() {
        let outcome = store.check(&checks, None).await.unwrap();
        assert_eq!(outcome.decisions[0].remaining, remaining, "{outcome:?}");
    }
    assert!(!store.check(&checks, None).await.unwrap().allowed);
    let s = store.stats();
    assert_eq!((s.degraded, s.script_errors), (0, 0), "{s:?}");
    assert_eq!(command_calls(&mut admin, "evalsha").await, 11);
}
