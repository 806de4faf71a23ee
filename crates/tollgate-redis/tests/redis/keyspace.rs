//! What ends up in Redis: key names, values, TTLs. No raw token, api_key or IP ever.

use std::time::Duration;

use tollgate_core::{Algorithm, Check, KeySecret, Nanos, Quota, Replay, Rule, Store};
use tollgate_redis::{RedisConnection, RedisStore};

use crate::realtime::{assert_expiry, needed_until, redis_now, sleep_until, SET_LATENESS_MS};
use crate::support::{command_calls, scan_keys, TestRedis};

/// Realistic raw identities, as an HTTP layer would see them.
const TOKENS: [&str; 3] = [
    "tok_live_7f3a9c2e51b84d6aa0e1",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0NzExIn0.sig",
    "vmarea_3b9f0c6d8e2a41f7",
];
const API_KEYS: [&str; 2] = ["ak_9b8c7d6e5f4a3b2c1d0e", "sk-proj-Zm9vYmFyYmF6"];
const IPS: [&str; 3] = ["203.0.113.77", "2001:db8::42", "198.51.100.7"];
const USERS: [&str; 1] = ["user-4711@example.com"];
const IDEMPOTENCY_KEYS: [&str; 2] = ["idem-5d41402abc4b2a76", "7c9e6679-7425-40de-944b"];

/// The store's side of the keyspace: keys are `<prefix>:<rule>:<digest>` and values tagged
/// numbers, whatever the identities (which this test hashes itself, as the layer would; the
/// layer's own traffic is `http_keyspace`), and every key expires when its state stops mattering.
#[tokio::test]
async fn store_keys_are_digests_values_are_tagged_numbers_and_every_key_expires_on_time() {
    let redis = TestRedis::start().await;
    // A prefix of its own, so that the scan sees only this run's keys even on a shared Redis.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("tg{nonce}");
    let store = RedisStore::builder(RedisConnection::connect(redis.url()).await.unwrap())
        .prefix(prefix.as_str())
        .build();
    let secret = KeySecret::from_bytes(*b"0123456789abcdef");
    let rules: Vec<Rule> = Algorithm::ALL
        .iter()
        .map(|&a| {
            Rule::builder(
                format!("per_token.{}", a.name()),
                Quota::per_minute(3).unwrap(),
            )
            .algorithm(a)
            .honour_replays(true)
            .build()
            .unwrap()
        })
        .collect();
    let per_ip = Rule::builder("per_ip", Quota::per_minute(5).unwrap())
        .algorithm(Algorithm::SlidingWindow)
        .build()
        .unwrap();
    let per_key = Rule::builder("per_api_key", Quota::per_hour(100).unwrap())
        .algorithm(Algorithm::SlidingLog)
        .build()
        .unwrap();
    let route = b"/api/public/v1/instances/{id}/";
    for round in 0..4 {
        for (i, token) in TOKENS.iter().enumerate() {
            let ip = IPS[i % IPS.len()];
            let api_key = API_KEYS[i % API_KEYS.len()];
            let user = USERS[0];
            let token_key = secret.key().part(token.as_bytes()).finish();
            let ip_key = secret.key().part(ip.as_bytes()).finish();
            let api_key_key = secret
                .key()
                .part(api_key.as_bytes())
                .part(user.as_bytes())
                .part(route)
                .finish();
            let mut checks: Vec<Check<'_>> = rules
                .iter()
                .map(|rule| Check {
                    rule,
                    key: token_key,
                })
                .collect();
            checks.push(Check {
                rule: &per_ip,
                key: ip_key,
            });
            checks.push(Check {
                rule: &per_key,
                key: api_key_key,
            });
            let idem = IDEMPOTENCY_KEYS[round % 2];
            let replay = Replay {
                key: secret
                    .key()
                    .part(token.as_bytes())
                    .part(idem.as_bytes())
                    .finish(),
                ttl: Duration::from_secs(600),
                max_replays: 3,
            };
            store.check(&checks, Some(&replay)).await.unwrap();
            store.check(&checks, None).await.unwrap();
        }
    }

    let mut admin = redis.admin().await;
    let keys = scan_keys(&mut admin, &format!("{prefix}:*")).await;
    // 4 per-token algorithms x 3 tokens + 3 IPs + 3 api keys + replay records.
    assert!(keys.len() >= 18, "{keys:?}");
    let raw: Vec<&str> = TOKENS
        .iter()
        .chain(&API_KEYS)
        .chain(&IPS)
        .chain(&USERS)
        .chain(&IDEMPOTENCY_KEYS)
        .copied()
        .collect();
    let mut replay_records = 0;
    for key in &keys {
        // <prefix>:<rule>:<32 hex digits>
        let mut parts = key.splitn(3, ':');
        assert_eq!(parts.next(), Some(prefix.as_str()), "{key}");
        let rule = parts.next().unwrap();
        let digest = parts.next().unwrap();
        assert!(
            rule == "~replay" || rule.starts_with("per_"),
            "unexpected key {key}"
        );
        replay_records += usize::from(rule == "~replay");
        assert_eq!(digest.len(), 32, "{key}");
        assert!(digest
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        // Value and expiry in one transaction: a key that expires between the two reads would
        // show a value without an expiry.
        let (value, expiry): (Option<Vec<u8>>, i64) = redis::pipe()
            .atomic()
            .cmd("GET")
            .arg(key)
            .cmd("PEXPIRETIME")
            .arg(key)
            .query_async(&mut admin)
            .await
            .unwrap();
        let Some(value) = value else {
            // Expired since the scan (a fixed window that just ended): nothing to check.
            continue;
        };
        let value = String::from_utf8(value).unwrap();
        // A format tag (algorithm, or `r` for an idempotency record, and version), then
        // instants and counts only.
        let (tag, body) = value.split_at(3);
        assert!(
            ["g1:", "f1:", "l1:", "w1:", "r1:"].contains(&tag),
            "{key} = {value:?}: tagged"
        );
        assert_eq!(tag == "r1:", rule == "~replay", "{key} = {value:?}");
        assert!(
            body.bytes()
                .all(|b| b.is_ascii_digit() || b == b':' || b == b','),
            "{key} = {value:?}: only instants and counts"
        );
        for secret in &raw {
            assert!(!key.contains(secret), "{secret} in key {key}");
            assert!(!value.contains(secret), "{secret} in value of {key}");
        }
        // Every key expires on its own, once its state stops mattering.
        let period = match rule {
            "per_api_key" => 3_600_000_000_000,
            _ => 60_000_000_000,
        };
        assert_expiry(key, expiry, needed_until(&value, period));
    }
    assert!(replay_records > 0);
}

#[tokio::test]
async fn idle_state_expires_by_itself_once_it_stops_mattering() {
    let redis = TestRedis::start().await;
    let store = RedisStore::connect(redis.url()).await.unwrap();
    let period: Nanos = 100_000_000;
    let rules: Vec<Rule> = Algorithm::ALL
        .iter()
        .map(|&a| {
            Rule::builder(
                a.name(),
                Quota::new(2, Duration::from_nanos(period)).unwrap(),
            )
            .algorithm(a)
            .build()
            .unwrap()
        })
        .collect();
    let key = KeySecret::DEFAULT.key().part(b"idle").finish();
    let checks: Vec<Check<'_>> = rules.iter().map(|rule| Check { rule, key }).collect();
    let mut admin = redis.admin().await;
    let before = redis_now(&mut admin).await;
    store.check(&checks, None).await.unwrap();
    let after = redis_now(&mut admin).await;
    for rule in &rules {
        let k = store.redis_key(rule, key);
        let (value, expiry, (s, us)): (Option<String>, i64, (u64, u64)) = redis::pipe()
            .atomic()
            .cmd("GET")
            .arg(&k)
            .cmd("PEXPIRETIME")
            .arg(&k)
            .cmd("TIME")
            .query_async(&mut admin)
            .await
            .unwrap();
        match value {
            Some(value) => assert_expiry(&k, expiry, needed_until(&value, period)),
            None => {
                // Gone already (a slow machine): only once its state could no longer matter.
                // The least a fresh charge's state lasts: GCRA one emission interval, a log
                // and a counter a period, a fixed window possibly nothing (it may end now).
                let least = match rule.algorithm() {
                    Algorithm::Gcra => period / 2,
                    Algorithm::FixedWindow => 0,
                    _ => period,
                };
                let now = s * 1_000_000_000 + us * 1_000;
                assert!(
                    now + 2_000_000 >= before + least,
                    "{k} expired {} ns after the charge",
                    now - before
                );
            }
        }
    }
    // The longest-lived state, a counter's, matters until a period after its window's end:
    // at most two periods after the charge (and Redis's rounding and scheduling).
    let slack = (2 + SET_LATENESS_MS) * 1_000_000;
    sleep_until(&mut admin, after + 2 * period + slack).await;
    let keys: Vec<String> = rules.iter().map(|r| store.redis_key(r, key)).collect();
    let left: u64 = redis::cmd("EXISTS")
        .arg(&keys)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(left, 0, "idle state is gone");
}

#[tokio::test]
async fn the_function_is_reloaded_after_function_flush_and_the_script_after_script_flush() {
    let redis = TestRedis::start().await;
    let store = RedisStore::connect(redis.url()).await.unwrap();
    let rule = Rule::builder("r", Quota::per_minute(10).unwrap())
        .build()
        .unwrap();
    let key = KeySecret::DEFAULT.key().part(b"noscript").finish();
    let checks = [Check { rule: &rule, key }];
    let mut admin = redis.admin().await;
    for (remaining, flush) in [(9, None), (8, Some("FUNCTION")), (7, Some("SCRIPT"))] {
        if let Some(what) = flush {
            let _: () = redis::cmd(what)
                .arg("FLUSH")
                .query_async(&mut admin)
                .await
                .unwrap();
        }
        assert_eq!(
            store.check(&checks, None).await.unwrap().decisions[0].remaining,
            remaining,
            "after {flush:?} FLUSH"
        );
    }
    assert_eq!(store.stats().degraded, 0);
    // Redis 7 runs it as a Function: every decision was an FCALL (the one after FUNCTION FLUSH
    // a second time, once the library was loaded again).
    assert!(command_calls(&mut admin, "fcall").await >= 3);
    assert_eq!(command_calls(&mut admin, "evalsha").await, 0);
    let libraries: redis::Value = redis::cmd("FUNCTION")
        .arg("LIST")
        .arg("LIBRARYNAME")
        .arg(&tollgate_redis::FUNCTION.name)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(
        matches!(&libraries, redis::Value::Array(l) if l.len() == 1),
        "{libraries:?}"
    );
}
