//! A running layer given a new configuration: atomic, state kept per limit name, mistakes
//! leave the running configuration in place.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::StatusCode;
use tollgate::config::Config;
use tollgate::{Algorithm, HeaderStyle, KeyPart, Limit, RateLimitLayer, Store};

use crate::support::{manual_store, serve_axum, TestClient};

fn window(name: &str, limit: u64) -> Limit {
    Limit::per_minute(name, limit)
        .algorithm(Algorithm::FixedWindow)
        .key(KeyPart::client_ip())
}

fn app(layer: &RateLimitLayer<impl Store>) -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(layer.clone())
}

async fn statuses(client: &TestClient, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(client.get("/").await.status.as_u16());
    }
    out
}

#[tokio::test]
async fn a_reloaded_quota_applies_to_the_state_the_limit_already_has() {
    let (store, _clock) = manual_store(Duration::from_secs(1));
    let layer = RateLimitLayer::builder()
        .store(store)
        .limit(window("per_ip", 3))
        .build()
        .unwrap();
    let client = TestClient::new(serve_axum(app(&layer)).await);
    assert_eq!(statuses(&client, 2).await, [200, 200]);

    // The running server's services see the new quota; the two requests stay counted.
    layer
        .reload(RateLimitLayer::builder().limit(window("per_ip", 5)))
        .unwrap();
    let reply = client.get("/").await;
    assert_eq!(reply.header("x-ratelimit-limit"), Some("5"));
    assert_eq!(reply.header("x-ratelimit-remaining"), Some("2"));
    assert_eq!(statuses(&client, 3).await, [200, 200, 429]);

    // Lowered below what was used: nothing more until the window ends.
    layer
        .reload(RateLimitLayer::builder().limit(window("per_ip", 4)))
        .unwrap();
    assert_eq!(statuses(&client, 1).await, [429]);

    // A limit under a new name starts empty; the old one no longer applies.
    layer
        .reload(RateLimitLayer::builder().limit(window("per_ip_v2", 2)))
        .unwrap();
    assert_eq!(statuses(&client, 3).await, [200, 200, 429]);
    let names: Vec<_> = layer.metrics().limits.into_iter().map(|l| l.name).collect();
    assert_eq!(names, ["per_ip_v2"]);
}

#[tokio::test]
async fn a_reload_with_mistakes_leaves_the_running_configuration_in_place() {
    let (store, _clock) = manual_store(Duration::from_secs(1));
    let layer = RateLimitLayer::builder()
        .store(store)
        .limit(window("per_ip", 2))
        .build()
        .unwrap();
    let client = TestClient::new(serve_axum(app(&layer)).await);
    assert_eq!(statuses(&client, 1).await, [200]);

    let broken = RateLimitLayer::builder()
        .limit(window("per_ip", 0))
        .limit(window("per_ip", 9));
    let err = layer.reload(broken).unwrap_err();
    assert_eq!(err.mistakes().len(), 2, "{err}");
    assert_eq!(statuses(&client, 2).await, [200, 429]);

    let bad_file = Config::from_toml(
        "key_secret_env = \"TOLLGATE_TEST_RELOAD_SECRET_UNSET\"\n",
        "next.toml",
    )
    .unwrap();
    let err = bad_file.reload(&layer).unwrap_err().to_string();
    assert!(
        err.contains("next.toml") && err.contains("not set"),
        "{err}"
    );
    assert_eq!(statuses(&client, 1).await, [429]);
}

/// Reloads between two configurations with the same limit while clients hammer it: every
/// request is decided by one configuration or the other, and the limit's count is never lost,
/// so exactly `LIMIT` requests pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_state_and_never_admit_past_the_limit() {
    const LIMIT: u64 = 40;
    let (store, _clock) = manual_store(Duration::from_secs(1));
    let config = |style| {
        RateLimitLayer::builder()
            .limit(window("per_ip", LIMIT))
            .header_style(style)
    };
    let layer = config(HeaderStyle::XRateLimit)
        .store(store)
        .build()
        .unwrap();
    let client = TestClient::new(serve_axum(app(&layer)).await);

    let admitted = Arc::new(AtomicUsize::new(0));
    let styles_seen = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, admitted, styles_seen) =
            (client.clone(), admitted.clone(), styles_seen.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let reply = client.get("/").await;
                // One configuration per request: both header styles, or neither, never a mix.
                let x = reply.header("x-ratelimit-limit").is_some();
                let ietf = reply.header("ratelimit-policy").is_some()
                    || reply.header("ratelimit").is_some();
                if ietf {
                    styles_seen.fetch_add(1, Ordering::Relaxed);
                    assert!(
                        x,
                        "an IETF-style response without the X- fields: a mixed configuration"
                    );
                }
                match reply.status {
                    StatusCode::OK => {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    StatusCode::TOO_MANY_REQUESTS => {}
                    other => panic!("unexpected {other}"),
                }
            }
        }));
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reloader = {
        let (layer, done) = (layer.clone(), done.clone());
        tokio::spawn(async move {
            let mut reloads = 0u64;
            while !done.load(Ordering::Relaxed) {
                let style = if reloads.is_multiple_of(2) {
                    HeaderStyle::Both
                } else {
                    HeaderStyle::XRateLimit
                };
                layer.reload(config(style)).unwrap();
                reloads += 1;
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            reloads
        })
    };
    for task in tasks {
        task.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    assert!(reloader.await.unwrap() > 1);
    assert_eq!(admitted.load(Ordering::Relaxed) as u64, LIMIT);
    assert!(
        styles_seen.load(Ordering::Relaxed) > 0,
        "no request met the reloaded configuration: the test proved nothing"
    );
}
