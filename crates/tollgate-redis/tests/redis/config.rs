//! A configuration file naming Redis (`tollgate::config`, feature `redis`): the store it
//! describes is the one requests are decided on, and a URL's password never reaches a message.

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::routing::get;
use axum::Router;
use http::StatusCode;
use std::net::SocketAddr;
use tollgate::config::{Config, ConfigError};
use tollgate::RateLimitLayer;
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
    assert_eq!(
        statuses,
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
