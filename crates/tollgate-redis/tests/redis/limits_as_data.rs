//! Limits as data on real Redis: a configuration file naming Redis (`tollgate::config`,
//! feature `redis`), a reload keeping state, client quotas, exemptions and limits charged by
//! the response, all through the real layer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::routing::{get, post};
use axum::Router;
use http::{HeaderName, Method, StatusCode};
use tollgate::config::{Config, ConfigError};
use tollgate::{Algorithm, KeyPart, Limit, Quota, RateLimitLayer, Scope};
use tollgate_redis::RedisStore;
use tower::ServiceExt;

use crate::support::{scan_keys, DeadPort, TestRedis};

fn file(url_line: &str) -> String {
    format!(
        r#"
[[limits]]
name = "per_ip"
quota = "2/minute"
key = ["client_ip"]

[store.redis]
{url_line}
prefix = "cfgtest"
budget = "200ms"
failure_policy = "fail_closed"
breaker = {{ failures = 3, cool_down = "100ms" }}
deny_cache = 0
"#
    )
}

fn request() -> Request {
    let mut req = Request::builder().uri("/").body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 9], 4000))));
    req
}

/// The statuses of three requests from one client through the file's layer on `store`.
async fn three_requests(config: &Config, store: RedisStore) -> Vec<StatusCode> {
    let layer = config
        .build(RateLimitLayer::builder().store(store))
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(layer);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(app.clone().oneshot(request()).await.unwrap().status());
    }
    statuses
}

#[tokio::test]
async fn the_files_redis_store_decides_and_holds_the_state() {
    let redis = TestRedis::start_controllable().await;
    let variable = format!("TOLLGATE_TEST_CONFIG_REDIS_{}", std::process::id());
    std::env::set_var(&variable, redis.url());
    let config =
        Config::from_toml(&file(&format!("url_env = \"{variable}\"")), "redis.toml").unwrap();
    assert!(config.uses_redis());
    // The memory-store shortcut refuses a file that names Redis, rather than ignoring it.
    assert!(matches!(config.layer(), Err(ConfigError::Store { .. })));

    let store = config.redis_store().await.unwrap().unwrap();
    assert_eq!(store.prefix(), "cfgtest");
    assert_eq!(
        three_requests(&config, store).await,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let keys = scan_keys(&mut redis.admin().await, "*").await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].starts_with("cfgtest:per_ip:"), "{keys:?}");
}

/// `fixed_window_counters = true` in the file puts the store's fixed windows on counters: the
/// same answers, each window its own integer key.
#[tokio::test]
async fn the_files_fixed_window_counters_put_its_windows_on_counter_keys() {
    // A server of its own: the scan below sees every key there is.
    let redis = TestRedis::start_controllable().await;
    let text = file(&format!("url = \"{}\"", redis.url())).replace(
        "quota = \"2/minute\"",
        "quota = \"2/minute\"\nalgorithm = \"fixed_window\"",
    ) + "fixed_window_counters = true\n";
    let config = Config::from_toml(&text, "redis.toml").unwrap();
    let store = config.redis_store().await.unwrap().unwrap();
    assert!(format!("{store:?}").contains("fixed_window_counters: true"));
    assert_eq!(
        three_requests(&config, store).await,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let mut admin = redis.admin().await;
    let keys = scan_keys(&mut admin, "*").await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let window = keys[0]
        .strip_prefix("cfgtest:per_ip:")
        .and_then(|rest| rest.split_once(':'))
        .map(|(digest, index)| (digest.len(), index.parse::<u64>().is_ok()));
    assert_eq!(window, Some((32, true)), "{keys:?}");
    let count: i64 = redis::cmd("GET")
        .arg(&keys[0])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(count, 2, "the denied request was refunded");
}

#[tokio::test]
async fn an_unreachable_redis_is_named_without_its_password() {
    let dead = DeadPort::new();
    let url = dead.url().replace("redis://", "redis://:hunter2@");
    let config = Config::from_toml(&file(&format!("url = \"{url}\"")), "redis.toml").unwrap();
    let err = config.redis_store().await.unwrap_err().to_string();
    assert!(
        err.contains("redis.toml") && err.contains("store.redis"),
        "{err}"
    );
    assert!(err.contains("***"), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");
    assert!(!format!("{config:?}").contains("hunter2"));
}

#[tokio::test]
async fn a_redis_section_must_say_where_redis_is_exactly_once() {
    for (lines, expected) in [
        ("", "exactly one of url and url_env"),
        (
            "url = \"redis://127.0.0.1\"\nurl_env = \"X\"",
            "exactly one of url and url_env",
        ),
        (
            "url_env = \"TOLLGATE_TEST_CONFIG_REDIS_UNSET\"",
            "TOLLGATE_TEST_CONFIG_REDIS_UNSET (url_env) is not set",
        ),
        (
            "url = [\"redis://a\", \"redis://b\"]",
            "one Redis has one URL",
        ),
    ] {
        let config = Config::from_toml(&file(lines), "redis.toml").unwrap();
        let err = config.redis_store().await.unwrap_err().to_string();
        assert!(err.contains(expected), "{lines}: {err}");
    }
}

fn from(ip: [u8; 4], method: Method, headers: &[(&str, &str)]) -> Request {
    let mut req = Request::builder().method(method).uri("/");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let mut req = req.body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((ip, 4000))));
    req
}

async fn statuses(app: &Router, n: usize, req: impl Fn() -> Request) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(app.clone().oneshot(req()).await.unwrap().status().as_u16());
    }
    out
}

/// `prefix` made this run's own: a shared `REDIS_URL` may hold earlier runs' state.
fn fresh(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{nanos:x}")
}

/// A store under a prefix of its own for this run.
async fn store(redis: &TestRedis, prefix: &str) -> RedisStore {
    let prefix = fresh(prefix);
    let connection = tollgate_redis::RedisConnection::connect(redis.url())
        .await
        .unwrap();
    RedisStore::builder(connection)
        .prefix(prefix)
        .deny_cache(None)
        .build()
}

#[tokio::test]
async fn a_reload_on_redis_keeps_each_limits_state() {
    let redis = TestRedis::start().await;
    let window = |limit| {
        Limit::per_hour("per_ip", limit)
            .algorithm(Algorithm::FixedWindow)
            .key(KeyPart::client_ip())
    };
    let layer = RateLimitLayer::builder()
        .store(store(&redis, "reload").await)
        .limit(window(2))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(layer.clone());
    let req = || from([192, 0, 2, 1], Method::GET, &[]);
    assert_eq!(statuses(&app, 2, req).await, [200, 200]);
    layer
        .reload(RateLimitLayer::builder().limit(window(4)))
        .unwrap();
    assert_eq!(statuses(&app, 3, req).await, [200, 200, 429]);
}

#[tokio::test]
async fn client_quotas_and_exemptions_on_redis() {
    let redis = TestRedis::start().await;
    let api_key = || KeyPart::header(HeaderName::from_static("x-api-key"));
    let layer = RateLimitLayer::builder()
        .store(store(&redis, "perclient").await)
        .limit(
            Limit::per_hour("per_key", 2)
                .key(api_key())
                .quota_for("enterprise-demo", Quota::per_hour(4).unwrap()),
        )
        .exempt_identities(api_key(), ["internal"])
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(layer.clone());
    let with = |key: &'static str| move || from([192, 0, 2, 1], Method::GET, &[("x-api-key", key)]);
    assert_eq!(statuses(&app, 3, with("someone")).await, [200, 200, 429]);
    assert_eq!(
        statuses(&app, 5, with("enterprise-demo")).await,
        [200, 200, 200, 200, 429]
    );
    assert_eq!(statuses(&app, 5, with("internal")).await, [200; 5]);
    assert_eq!(layer.metrics().exempt, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_charged_by_the_response_on_redis_never_run_past_the_limit() {
    let redis = TestRedis::start().await;
    let layer = RateLimitLayer::builder()
        .store(store(&redis, "charge").await)
        .limit(Limit::per_hour("per_ip", 100).key(KeyPart::client_ip()))
        .limit(
            Limit::per_hour("failed_logins", 5)
                .scope(Scope::all().path("/"))
                .key(KeyPart::client_ip())
                .charge_on([StatusCode::UNAUTHORIZED]),
        )
        .build()
        .unwrap();
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let app = Router::new()
        .route(
            "/",
            post(move |headers: http::HeaderMap| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    if headers.get("x-password").is_some_and(|p| p == "demo") {
                        StatusCode::OK
                    } else {
                        StatusCode::UNAUTHORIZED
                    }
                }
            }),
        )
        .layer(layer);
    // Successes are not charged.
    let good = || from([192, 0, 2, 7], Method::POST, &[("x-password", "demo")]);
    assert_eq!(statuses(&app, 3, good).await, [200, 200, 200]);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let req = from([192, 0, 2, 7], Method::POST, &[]);
            app.oneshot(req).await.unwrap().status().as_u16()
        }));
    }
    let mut got = Vec::new();
    for task in tasks {
        got.push(task.await.unwrap());
    }
    assert_eq!(got.iter().filter(|s| **s == 401).count(), 5, "{got:?}");
    assert_eq!(got.iter().filter(|s| **s == 429).count(), 15, "{got:?}");
    assert_eq!(reached.load(Ordering::Relaxed), 3 + 5);
    // Spent in Redis: a good password is refused up front too.
    assert_eq!(statuses(&app, 1, good).await, [429]);
}

#[tokio::test]
async fn a_requests_own_cost_on_redis() {
    let redis = TestRedis::start().await;
    let layer = RateLimitLayer::builder()
        .store(store(&redis, "cost").await)
        .limit(
            Limit::per_hour("items", 10)
                .algorithm(Algorithm::SlidingWindow)
                .key(KeyPart::client_ip())
                .cost_header(HeaderName::from_static("x-batch-size")),
        )
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer);
    let sized = |n: &'static str| move || from([192, 0, 2, 3], Method::GET, &[("x-batch-size", n)]);
    assert_eq!(statuses(&app, 3, sized("4")).await, [200, 200, 429]);
    assert_eq!(statuses(&app, 1, sized("2")).await, [200]);
    assert_eq!(statuses(&app, 1, sized("1")).await, [429]);
    assert_eq!(statuses(&app, 1, sized("lots")).await, [400]);
    assert_eq!(statuses(&app, 1, sized("11")).await, [429]);
}

/// Two instances of an API read client quotas from one Redis hash: an operator's change
/// reaches both within a refresh, and the hash names clients by digest only.
#[tokio::test]
async fn client_quotas_shared_through_redis_reach_every_instance() {
    let redis = TestRedis::start().await;
    let connection = tollgate_redis::RedisConnection::connect(redis.url())
        .await
        .unwrap();
    let prefix = fresh("quotas");
    let quotas = tollgate_redis::RedisClientQuotas::new(connection.clone(), &prefix);
    let api_key = || KeyPart::header(HeaderName::from_static("x-api-key"));
    let instance = || {
        RateLimitLayer::builder()
            .store(
                RedisStore::builder(connection.clone())
                    .prefix(&prefix)
                    .build(),
            )
            .limit(Limit::per_hour("per_key", 100).key(api_key()))
            .client_quotas(quotas.clone(), Duration::from_millis(50))
            .build()
            .unwrap()
    };
    let (one, two) = (instance(), instance());
    let apps: Vec<Router> = [&one, &two]
        .into_iter()
        .map(|layer| {
            Router::new()
                .route("/", get(|| async { "ok" }))
                .layer(layer.clone())
        })
        .collect();
    let limit_seen = |app: Router| async move {
        let req = from(
            [192, 0, 2, 5],
            Method::GET,
            &[("x-api-key", "enterprise-demo")],
        );
        let response = app.oneshot(req).await.unwrap();
        response.headers()["x-ratelimit-limit"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(limit_seen(apps[0].clone()).await, "100");

    let client = one.client_digest("per_key", "enterprise-demo").unwrap();
    assert_eq!(
        two.client_digest("per_key", "enterprise-demo"),
        Some(client)
    );
    quotas
        .set("per_key", client, Quota::per_hour(6000).unwrap())
        .await
        .unwrap();
    for app in &apps {
        let mut seen = String::new();
        for _ in 0..100 {
            seen = limit_seen(app.clone()).await;
            if seen == "6000" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            seen, "6000",
            "the operator's quota never reached an instance"
        );
    }
    // No raw identity in the hash: the field is the rule and the digest.
    let fields = scan_keys(&mut redis.admin().await, &format!("{prefix}:client_quotas")).await;
    assert_eq!(fields.len(), 1);
    let mut admin = redis.admin().await;
    let all: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(quotas.key())
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        all,
        [(
            format!("per_key:{}", client.to_hex()),
            "6000/hour".to_owned()
        )]
    );
    assert!(quotas.remove("per_key", client).await.unwrap());
}
