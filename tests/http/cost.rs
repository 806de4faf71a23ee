//! A request's own cost (`Limit::cost_header`, `Limit::cost_from_fn`) through a real server:
//! charged as declared, never less by sending nonsense, and told when it can never pass.

use axum::routing::get;
use axum::Router;
use http::{HeaderName, Method, StatusCode};
use tollgate::{Algorithm, KeyPart, Limit, RateLimitLayer, RequestHead};

use crate::support::{serve_axum, TestClient};

fn items(limit: u64) -> Limit {
    Limit::per_minute("items", limit)
        .algorithm(Algorithm::FixedWindow)
        .key(KeyPart::client_ip())
        .cost_header(HeaderName::from_static("x-batch-size"))
}

async fn serve(layer: RateLimitLayer) -> TestClient {
    let app = Router::new()
        .route("/", get(|| async { "ok" }).post(|| async { "ok" }))
        .route("/export", get(|| async { "csv" }))
        .layer(layer);
    TestClient::new(serve_axum(app).await)
}

async fn batch(client: &TestClient, size: &'static [u8]) -> (StatusCode, Option<String>) {
    let reply = client
        .send(Method::POST, "/", &[("x-batch-size", size)])
        .await;
    let remaining = reply.header("x-ratelimit-remaining").map(str::to_owned);
    (reply.status, remaining)
}

#[tokio::test]
async fn a_batch_is_charged_its_size_all_or_nothing() {
    let layer = RateLimitLayer::builder().limit(items(10)).build().unwrap();
    let client = serve(layer).await;
    assert_eq!(
        batch(&client, b"4").await,
        (StatusCode::OK, Some("6".into()))
    );
    assert_eq!(
        batch(&client, b"4").await,
        (StatusCode::OK, Some("2".into()))
    );
    // Four do not fit in two: refused, and nothing charged.
    let (status, _) = batch(&client, b"4").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Without the header a request costs the limit's own cost; zero counts as one.
    let plain = client.send(Method::POST, "/", &[]).await;
    assert_eq!(plain.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(
        batch(&client, b"0").await,
        (StatusCode::OK, Some("0".into()))
    );
}

#[tokio::test]
async fn nonsense_costs_a_400_and_charges_nothing() {
    let layer = RateLimitLayer::builder().limit(items(10)).build().unwrap();
    let client = serve(layer).await;
    for nonsense in [&b"abc"[..], b"-1", b"1.5", b"+3", b"0x10", b"", b"1 2"] {
        let reply = client
            .send(Method::POST, "/", &[("x-batch-size", nonsense)])
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{nonsense:?}");
        assert!(reply.text().contains("x-batch-size"), "{}", reply.text());
    }
    // Two copies that disagree: which one would be charged? Neither: a 400.
    let two = [("x-batch-size", &b"1"[..]), ("x-batch-size", b"9")];
    let reply = client.send(Method::POST, "/", &two).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        batch(&client, b"1").await,
        (StatusCode::OK, Some("9".into()))
    );
}

#[tokio::test]
async fn a_cost_above_the_capacity_is_told_it_can_never_pass() {
    let layer = RateLimitLayer::builder().limit(items(10)).build().unwrap();
    let client = serve(layer).await;
    for size in [&b"11"[..], b"99999999999999999999999999"] {
        let reply = client
            .send(Method::POST, "/", &[("x-batch-size", size)])
            .await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(reply.text().contains("can never pass"), "{}", reply.text());
        assert!(reply.text().contains("\\\"items\\\""), "{}", reply.text());
        assert_eq!(reply.header("retry-after"), None, "no wait would help");
    }
    assert_eq!(
        batch(&client, b"10").await,
        (StatusCode::OK, Some("0".into()))
    );
}

#[tokio::test]
async fn a_closure_prices_requests_and_other_limits_keep_their_own_cost() {
    let layer = RateLimitLayer::builder()
        .limit(
            Limit::per_minute("weighted", 20)
                .algorithm(Algorithm::FixedWindow)
                .key(KeyPart::client_ip())
                .cost_from_fn(|head: &RequestHead<'_>| {
                    (head.uri().path() == "/export").then_some(10)
                }),
        )
        .limit(
            Limit::per_minute("per_ip", 100)
                .algorithm(Algorithm::FixedWindow)
                .key(KeyPart::client_ip()),
        )
        .build()
        .unwrap();
    let metrics_layer = layer.clone();
    let client = serve(layer).await;
    let export = client.get("/export").await;
    assert_eq!(export.header("x-ratelimit-remaining"), Some("10"));
    let page = client.get("/").await;
    assert_eq!(page.header("x-ratelimit-remaining"), Some("9"));
    assert_eq!(
        client.get("/export").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The per-IP limit charged 1 per admitted request, whatever they cost elsewhere.
    let per_ip = metrics_layer.metrics().limit("per_ip").cloned().unwrap();
    assert_eq!(per_ip.allowed, 2);
}
