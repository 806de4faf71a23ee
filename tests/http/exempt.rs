//! Exemptions through a real server: exempt requests pass uncounted and without rate-limit
//! headers; what a client writes itself never makes it exempt.

use axum::routing::get;
use axum::Router;
use http::{HeaderName, Method, StatusCode};
use tollgate::{KeyPart, Limit, RateLimitBuilder, RateLimitLayer, RequestHead};

use crate::support::{serve_axum, TestClient};

async fn serve(builder: RateLimitBuilder) -> (TestClient, RateLimitLayer) {
    let layer = builder.build().unwrap();
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .route("/metrics", get(|| async { "# metrics" }))
        .layer(layer.clone());
    (TestClient::new(serve_axum(app).await), layer)
}

fn per_ip(limit: u64) -> Limit {
    Limit::per_minute("per_ip", limit).key(KeyPart::client_ip())
}

fn api_key() -> KeyPart {
    KeyPart::header(HeaderName::from_static("x-api-key"))
}

#[tokio::test]
async fn an_exempt_range_passes_uncounted_and_without_headers() {
    let (client, layer) = serve(
        RateLimitLayer::builder()
            .limit(per_ip(2))
            .exempt_ips(["127.0.0.0/8"]),
    )
    .await;
    for _ in 0..5 {
        let reply = client.get("/").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-ratelimit-limit"), None);
    }
    let metrics = layer.metrics();
    assert_eq!(metrics.exempt, 5);
    let counted = metrics.limit("per_ip").unwrap();
    assert_eq!((counted.allowed, counted.denied), (0, 0));
}

#[tokio::test]
async fn a_forwarded_address_is_exempt_only_through_a_trusted_proxy() {
    let from = |ip: &'static [u8]| [("x-forwarded-for", ip)];
    // The peer (127.0.0.1) is not a trusted proxy: the header is the client's own claim.
    let (client, _) = serve(
        RateLimitLayer::builder()
            .limit(per_ip(2))
            .exempt_ips(["10.0.0.0/8"]),
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            client
                .send(Method::GET, "/", &from(b"10.1.2.3"))
                .await
                .status,
        );
    }
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS));

    // Behind a trusted proxy, the forwarded client's address decides.
    let (client, _) = serve(
        RateLimitLayer::builder()
            .trusted_proxies(["127.0.0.1"])
            .limit(per_ip(2))
            .exempt_ips(["10.0.0.0/8"]),
    )
    .await;
    for _ in 0..4 {
        let reply = client.send(Method::GET, "/", &from(b"10.1.2.3")).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let mut last = StatusCode::OK;
    for _ in 0..3 {
        last = client
            .send(Method::GET, "/", &from(b"198.51.100.7"))
            .await
            .status;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn an_exempt_identity_must_be_the_only_value_the_request_carries() {
    let (client, layer) = serve(
        RateLimitLayer::builder()
            .limit(Limit::per_minute("per_key", 1).key(api_key()))
            .exempt_identities(api_key(), ["internal-key"]),
    )
    .await;
    for _ in 0..3 {
        let reply = client
            .send(Method::GET, "/", &[("x-api-key", b"internal-key")])
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-ratelimit-limit"), None);
    }
    // Repeating the exempt value beside another does not borrow its exemption.
    let mixed = [("x-api-key", &b"internal-key"[..]), ("x-api-key", b"mine")];
    let first = client.send(Method::GET, "/", &mixed).await;
    assert_eq!(first.header("x-ratelimit-limit"), Some("1"));
    let second = client.send(Method::GET, "/", &mixed).await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    // A near miss is just another key.
    let near = client
        .send(Method::GET, "/", &[("x-api-key", b"internal-kez")])
        .await;
    assert_eq!(near.header("x-ratelimit-limit"), Some("1"));
    assert_eq!(layer.metrics().exempt, 3);
    // The exempt value is not kept, nor shown.
    assert!(!format!("{layer:?}").contains("internal-key"));
}

#[tokio::test]
async fn a_predicate_exempts_what_it_says() {
    let (client, _) = serve(
        RateLimitLayer::builder()
            .limit(per_ip(1))
            .exempt_if(|head: &RequestHead<'_>| head.uri().path() == "/metrics"),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(client.get("/metrics").await.status, StatusCode::OK);
    }
    assert_eq!(client.get("/").await.status, StatusCode::OK);
    assert_eq!(client.get("/").await.status, StatusCode::TOO_MANY_REQUESTS);
}

#[test]
fn a_bad_exempt_range_is_a_build_error() {
    let err = RateLimitLayer::builder()
        .exempt_ips(["10.0.0.0/40"])
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("10.0.0.0/40"), "{err}");
}

/// A builder's `Debug` says what is exempt, by range and by how many identities and
/// predicates, and never shows an exempt identity's value.
#[test]
fn a_builders_debug_counts_exempt_identities_and_never_shows_them() {
    let builder = RateLimitLayer::builder()
        .limit(per_ip(2))
        .exempt_ips(["10.0.0.0/8"])
        .exempt_identities(api_key(), ["internal-batch-key", "nightly-export-key"])
        .exempt_if(|head: &RequestHead<'_>| head.uri().path() == "/metrics");
    let shown = format!("{builder:?}");
    assert!(shown.contains("Exemptions"), "{shown}");
    assert!(shown.contains("10.0.0.0/8"), "{shown}");
    assert!(shown.contains("predicates: 1"), "{shown}");
    // The part and how many values it exempts: two.
    assert!(shown.contains(", 2)]"), "{shown}");
    assert!(!shown.contains("internal-batch-key"), "{shown}");
    assert!(!shown.contains("nightly-export-key"), "{shown}");
}
