//! What an operator scrapes about the Redis store (features `metrics` of `tollgate` and
//! `tollgate-redis`, through a real Prometheus recorder): degraded decisions under their rule,
//! the breaker gauge, deny-cache hits, and a store-latency histogram that moves with a slow
//! Redis.

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate::{KeyPart, Limit, RateLimitLayer};
use tollgate_redis::{BreakerConfig, FailurePolicy, RedisConnection, RedisStore};

use crate::support::TestRedis;

/// One HTTP/1.1 GET on a fresh connection, from the client `192.0.2.<host>` (forwarded by the
/// trusted local proxy); the response's body.
async fn get_from(addr: SocketAddr, path: &str, host: u8) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nX-Forwarded-For: 192.0.2.{host}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned())
}

/// The value of the first sample of `name` whose labels include every one of `labels`.
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        (metric == name && all).then(|| value.parse().unwrap())
    })
}

/// A real server: a layer on a Redis store, both registering their metrics with a recorder of
/// their own, which `/metrics` renders.
async fn server(redis: &TestRedis, budget: Duration) -> SocketAddr {
    let connection = RedisConnection::connect(redis.url()).await.unwrap();
    let recorder = PrometheusBuilder::new().build_recorder();
    let scrape = recorder.handle();
    let layer = metrics::with_local_recorder(&recorder, || {
        let store = RedisStore::builder(connection)
            .budget(budget)
            .failure_policy(FailurePolicy::FailOpen)
            .breaker(BreakerConfig {
                failures: 2,
                cool_down: Duration::from_millis(200),
            })
            .build();
        RateLimitLayer::builder()
            .store(store)
            .trusted_proxies(["127.0.0.1"])
            .limit(Limit::per_minute("per_ip", 2).key(KeyPart::client_ip()))
            .build()
            .unwrap()
    });
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer)
        .route("/metrics", get(move || std::future::ready(scrape.render())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

async fn send(addr: SocketAddr, host: u8, n: usize) {
    for _ in 0..n {
        get_from(addr, "/", host).await;
    }
}

async fn scrape(addr: SocketAddr) -> String {
    get_from(addr, "/metrics", 0).await
}

#[tokio::test]
async fn degraded_decisions_the_breaker_and_deny_cache_hits_are_scraped() {
    let redis = TestRedis::start_controllable().await;
    let addr = server(&redis, Duration::from_millis(100)).await;
    // Two admitted, then denied: the second denial comes from the deny cache.
    send(addr, 1, 4).await;
    let text = scrape(addr).await;
    let decided = |text: &str, outcome| {
        sample(
            text,
            "tollgate_decisions_total",
            &[("rule", "per_ip"), ("outcome", outcome)],
        )
    };
    assert_eq!(decided(&text, "allowed"), Some(2.0), "{text}");
    assert_eq!(decided(&text, "denied"), Some(2.0), "{text}");
    assert!(
        sample(&text, "tollgate_deny_cache_hits_total", &[]).is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tollgate_breaker_open", &[("store", "redis")]),
        Some(0.0)
    );

    // Another client (the first one's denial is still in the deny cache, Redis or not).
    redis.stop().await;
    send(addr, 2, 3).await;
    let text = scrape(addr).await;
    assert_eq!(decided(&text, "degraded"), Some(3.0), "{text}");
    assert_eq!(
        decided(&text, "allowed"),
        Some(2.0),
        "failing open is not an admission"
    );
    assert_eq!(
        sample(&text, "tollgate_breaker_open", &[("store", "redis")]),
        Some(1.0),
        "{text}"
    );

    redis.restart().await;
    // Past the cool-down, a probe finds Redis again and the gauge falls.
    let mut gauge = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        send(addr, 3, 1).await;
        gauge = sample(
            &scrape(addr).await,
            "tollgate_breaker_open",
            &[("store", "redis")],
        );
        if gauge == Some(0.0) {
            break;
        }
    }
    assert_eq!(gauge, Some(0.0), "the breaker never closed");
}

#[tokio::test]
async fn the_store_latency_histogram_moves_with_a_slow_redis() {
    let redis = TestRedis::start_controllable().await;
    let budget = Duration::from_millis(250);
    let addr = server(&redis, budget).await;
    send(addr, 1, 1).await;
    let seconds = |text: &str| {
        sample(
            text,
            "tollgate_store_seconds_sum",
            &[("store", "redis"), ("op", "check")],
        )
        .unwrap()
    };
    let quick = seconds(&scrape(addr).await);
    assert!(quick < budget.as_secs_f64(), "{quick}");

    // A paused Redis answers nothing: each decision waits out the budget, then fails open.
    redis.pause().await;
    send(addr, 1, 2).await;
    redis.resume().await;
    let text = scrape(addr).await;
    let slow = seconds(&text) - quick;
    assert!(
        slow >= 2.0 * budget.as_secs_f64() * 0.95,
        "{slow} s over two decisions: {text}"
    );
    assert_eq!(
        sample(
            &text,
            "tollgate_store_seconds_count",
            &[("store", "redis"), ("op", "check")]
        ),
        Some(3.0)
    );
}

/// A limit charged by the response is peeked first: a peek the failure policy answered is a
/// degraded decision too, not an admission.
#[tokio::test]
async fn a_peek_decided_without_redis_is_counted_degraded() {
    let redis = TestRedis::start_controllable().await;
    let connection = RedisConnection::connect(redis.url()).await.unwrap();
    let store = RedisStore::builder(connection)
        .budget(Duration::from_millis(100))
        .failure_policy(FailurePolicy::FailOpen)
        .build();
    let layer = RateLimitLayer::builder()
        .store(store)
        .trusted_proxies(["127.0.0.1"])
        .limit(
            Limit::per_minute("failed_logins", 5)
                .key(KeyPart::client_ip())
                .charge_on([http::StatusCode::UNAUTHORIZED]),
        )
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app).await.unwrap();
    });
    send(addr, 9, 1).await;
    redis.stop().await;
    send(addr, 9, 2).await;
    let counted = layer.metrics().limit("failed_logins").cloned().unwrap();
    assert_eq!((counted.allowed, counted.degraded), (1, 2), "{counted:?}");
}
