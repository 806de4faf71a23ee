//! The Vast preset end to end through axum: intervals per endpoint template and identity.

use std::time::Duration;

use axum::extract::Path;
use axum::routing::{get, put};
use axum::Router;
use http::{Method, StatusCode};
use tollgate::core::{ManualClock, MemoryStore, Quota};
use tollgate::presets::vast::{Endpoint, Vast, VastBody};
use tollgate::RateLimitLayer;

use crate::support::{fake_auth, manual_store, serve_axum, Headers, Reply, TestClient};

type Layer = RateLimitLayer<MemoryStore<ManualClock>>;

/// The limits of the vast example: GET 1 s, PUT 2 s, POST /api/v0/bundles/ 0.5 s with at most
/// 5 calls per 10 s.
fn preset() -> Vast {
    Vast::new()
        .method_interval(Method::GET, Duration::from_secs(1))
        .method_interval(Method::PUT, Duration::from_secs(2))
        .endpoint(
            Endpoint::new(Method::POST, "/api/v0/bundles/", Duration::from_millis(500))
                .max_calls(5, Duration::from_secs(10)),
        )
}

fn app(limiter: Layer) -> Router {
    Router::new()
        .route("/api/v1/instances/", get(|| async { "list" }))
        .route(
            "/api/v0/instances/{id}/",
            get(|Path(id): Path<u64>| async move { format!("instance {id}") }),
        )
        .route(
            "/api/v0/bundles/",
            get(|| async { "offers" }).post(|| async { "offers" }),
        )
        .route("/api/v0/asks/{id}/", put(|| async { "rented" }))
        .layer(limiter)
        .layer(axum::middleware::from_fn(fake_auth))
}

async fn start(preset: Vast, trust_loopback: bool) -> (TestClient, ManualClock) {
    let (store, clock) = manual_store(Duration::ZERO);
    let mut builder = preset.builder().store(store);
    if trust_loopback {
        builder = builder.trusted_proxies(["127.0.0.1/32"]);
    }
    let addr = serve_axum(app(builder.build().unwrap())).await;
    (TestClient::new(addr), clock)
}

fn assert_vast_429(reply: &Reply, threshold: &str) {
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.text(),
        format!(
            r#"{{"success": false, "error": "rate_limited", "msg": "API requests too frequent: endpoint threshold={threshold}"}}"#
        )
    );
}

#[tokio::test]
async fn minimum_interval_with_the_exact_429_and_retry_after() {
    let (client, clock) = start(preset(), false).await;
    let first = client.get("/api/v0/instances/7/").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.text(), "instance 7");
    assert_eq!(first.header("x-ratelimit-limit"), Some("1"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(first.header("x-ratelimit-reset"), Some("1"));

    let denied = client.get("/api/v0/instances/7/").await;
    assert_vast_429(&denied, "1");
    assert_eq!(denied.retry_after(), 1);

    // Not quite long enough...
    clock.advance(Duration::from_millis(999));
    let early = client.get("/api/v0/instances/7/").await;
    assert_vast_429(&early, "1");
    assert_eq!(early.retry_after(), 1);
    // ...exactly Retry-After after the first denial is.
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        client.get("/api/v0/instances/7/").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn ids_in_the_path_share_their_endpoints_bucket() {
    let (client, _clock) = start(preset(), false).await;
    assert_eq!(
        client.get("/api/v0/instances/1/").await.status,
        StatusCode::OK
    );
    assert_vast_429(&client.get("/api/v0/instances/2/").await, "1");
    assert_vast_429(&client.get("/api/v0/instances/999999/").await, "1");
    // Another endpoint has its own bucket.
    assert_eq!(
        client.get("/api/v1/instances/").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn get_and_post_are_counted_apart_with_their_own_intervals() {
    let (client, clock) = start(preset(), false).await;
    assert_eq!(client.get("/api/v0/bundles/").await.status, StatusCode::OK);
    let post = client.send(Method::POST, "/api/v0/bundles/", &[]).await;
    assert_eq!(post.status, StatusCode::OK);
    assert_vast_429(&client.get("/api/v0/bundles/").await, "1");
    let post = client.send(Method::POST, "/api/v0/bundles/", &[]).await;
    assert_vast_429(&post, "0.5");
    assert_eq!(post.retry_after(), 1);
    // After 0.5 s the POST interval has passed, the GET one has not.
    clock.advance(Duration::from_millis(500));
    let post = client.send(Method::POST, "/api/v0/bundles/", &[]).await;
    assert_eq!(post.status, StatusCode::OK);
    assert_vast_429(&client.get("/api/v0/bundles/").await, "1");
    // PUT has its 2 s.
    let put = client.send(Method::PUT, "/api/v0/asks/3/", &[]).await;
    assert_eq!(put.status, StatusCode::OK);
    clock.advance(Duration::from_secs(1));
    let put = client.send(Method::PUT, "/api/v0/asks/4/", &[]).await;
    assert_vast_429(&put, "2");
    assert_eq!(put.retry_after(), 1);
}

#[tokio::test]
async fn burst_cap_limits_calls_per_period_on_top_of_the_interval() {
    let (client, clock) = start(preset(), false).await;
    for i in 0..5 {
        let post = client.send(Method::POST, "/api/v0/bundles/", &[]).await;
        assert_eq!(post.status, StatusCode::OK, "call {i}");
        clock.advance(Duration::from_millis(500));
    }
    // 2.5 s after the first call the interval allows a sixth, the cap (5 per 10 s) does not:
    // the first call leaves the window 7.5 s from now.
    let capped = client.send(Method::POST, "/api/v0/bundles/", &[]).await;
    assert_vast_429(&capped, "0.5");
    assert_eq!(capped.retry_after(), 8);
    clock.advance(Duration::from_millis(7500));
    let post = client.send(Method::POST, "/api/v0/bundles/", &[]).await;
    assert_eq!(post.status, StatusCode::OK);
}

#[tokio::test]
async fn changing_any_one_identity_part_changes_the_bucket() {
    let (client, _clock) = start(preset(), true).await;
    let path = "/api/v1/instances/?api_key=K1";
    let base: [(&str, &[u8]); 3] = [
        ("authorization", b"Bearer T1"),
        ("x-session-user", b"alice"),
        ("x-forwarded-for", b"203.0.113.1"),
    ];
    assert_eq!(
        client.send(Method::GET, path, &base).await.status,
        StatusCode::OK
    );
    // The same identity, even with another path id or spoofed extra XFF hops, is refused.
    let spoofed: [(&str, &[u8]); 3] = [
        base[0],
        base[1],
        ("x-forwarded-for", b"198.51.100.77, 203.0.113.1"),
    ];
    assert_vast_429(&client.send(Method::GET, path, &base).await, "1");
    assert_vast_429(&client.send(Method::GET, path, &spoofed).await, "1");

    let mut variants: Vec<(&str, String, Headers<'_>)> = Vec::new();
    let with = |i: usize, value: (&'static str, &'static [u8])| {
        let mut headers = base.to_vec();
        headers[i] = value;
        headers
    };
    variants.push((
        "bearer token",
        path.into(),
        with(0, ("authorization", b"Bearer T2")),
    ));
    variants.push((
        "session user",
        path.into(),
        with(1, ("x-session-user", b"bob")),
    ));
    variants.push((
        "client ip",
        path.into(),
        with(2, ("x-forwarded-for", b"203.0.113.2")),
    ));
    variants.push((
        "api_key",
        "/api/v1/instances/?api_key=K2".into(),
        base.to_vec(),
    ));
    // A missing part is a part too ("empty"), distinct from any value.
    variants.push(("no bearer", path.into(), base[1..].to_vec()));
    variants.push(("no api_key", "/api/v1/instances/".into(), base.to_vec()));
    for (what, path, headers) in &variants {
        let reply = client.send(Method::GET, path, headers).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "changing the {what} must give a fresh bucket"
        );
    }
    // And each of those is now a bucket of its own.
    for (what, path, headers) in &variants {
        let reply = client.send(Method::GET, path, headers).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{what}");
    }
}

#[tokio::test]
async fn plain_text_bodies_when_configured() {
    let (client, _clock) = start(preset().body(VastBody::PlainText), false).await;
    client.get("/api/v0/instances/1/").await;
    let denied = client.get("/api/v0/instances/1/").await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        denied.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        denied.text(),
        "API requests too frequent: endpoint threshold=1"
    );
    assert_eq!(denied.retry_after(), 1);

    let (client, _clock) = start(preset().body(VastBody::PlainTextTerse), false).await;
    client.send(Method::POST, "/api/v0/bundles/", &[]).await;
    let denied = client.send(Method::POST, "/api/v0/bundles/", &[]).await;
    assert_eq!(denied.text(), "API requests too frequent");
}

#[tokio::test]
async fn unmatched_paths_are_not_limited() {
    let (client, _clock) = start(preset(), false).await;
    for _ in 0..3 {
        let reply = client.get("/no/such/route").await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.header("x-ratelimit-limit"), None);
    }
}

fn assert_ceiling_429(reply: &Reply, ceiling: &str) {
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.text(),
        format!(
            r#"{{"success": false, "error": "rate_limited", "msg": "API requests too frequent: per-IP ceiling={ceiling}"}}"#
        )
    );
}

/// A request with a fresh raw identity: bearer token and api_key never seen before.
async fn rotated(client: &TestClient, i: usize) -> Reply {
    let token = format!("Bearer rotated-{i}");
    let path = format!("/api/v1/instances/?api_key=random-{i}&api_key=valid");
    client
        .send(Method::GET, &path, &[("authorization", token.as_bytes())])
        .await
}

#[tokio::test]
async fn rotating_identities_from_one_ip_hits_the_default_ceiling() {
    let (client, _clock) = start(preset(), false).await;
    // Every request is a fresh identity, so no endpoint bucket ever refuses it...
    for i in 0..600 {
        assert_eq!(
            rotated(&client, i).await.status,
            StatusCode::OK,
            "request {i}"
        );
    }
    // ...but the address has spent its ceiling, whatever identity it shows next.
    let denied = rotated(&client, 600).await;
    assert_ceiling_429(&denied, "600 requests per 60s");
    assert_eq!(denied.retry_after(), 1);
    assert_ceiling_429(
        &client.get("/api/v0/instances/7/").await,
        "600 requests per 60s",
    );
}

#[tokio::test]
async fn the_ceiling_is_configurable_and_can_be_turned_off() {
    let ceiling = Quota::per_minute(3).unwrap();
    let (client, clock) = start(preset().ip_ceiling(ceiling), true).await;
    let from = |ip: &'static str| [("x-forwarded-for", ip.as_bytes())];
    for i in 0..3 {
        assert_eq!(rotated(&client, i).await.status, StatusCode::OK);
    }
    let denied = rotated(&client, 3).await;
    assert_ceiling_429(&denied, "3 requests per 60s");
    assert_eq!(denied.retry_after(), 20);
    // Another address has a ceiling of its own.
    let other = client
        .send(Method::GET, "/api/v1/instances/", &from("203.0.113.7"))
        .await;
    assert_eq!(other.status, StatusCode::OK);
    // One request's worth comes back every 20 s.
    clock.advance(Duration::from_secs(20));
    assert_eq!(rotated(&client, 4).await.status, StatusCode::OK);
    assert_ceiling_429(&rotated(&client, 5).await, "3 requests per 60s");

    let (client, _clock) = start(preset().ip_ceiling(None), false).await;
    for i in 0..700 {
        assert_eq!(
            rotated(&client, i).await.status,
            StatusCode::OK,
            "request {i}"
        );
    }
}

#[tokio::test]
async fn the_ceilings_plain_text_bodies() {
    let ceiling = Quota::per_minute(1).unwrap();
    let (client, _clock) = start(
        preset().ip_ceiling(ceiling).body(VastBody::PlainText),
        false,
    )
    .await;
    rotated(&client, 0).await;
    let denied = rotated(&client, 1).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        denied.text(),
        "API requests too frequent: per-IP ceiling=1 request per 60s"
    );
    let terse = preset().ip_ceiling(ceiling).body(VastBody::PlainTextTerse);
    let (client, _clock) = start(terse, false).await;
    rotated(&client, 0).await;
    assert_eq!(
        rotated(&client, 1).await.text(),
        "API requests too frequent"
    );
}
