//! Both presets through a plain hyper 1.x server (no axum), the layer mounted with tower, and an
//! inner service whose body is not axum's.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tollgate::presets::vast::Vast;
use tollgate::presets::vmarea::VmArea;
use tollgate::TokenId;
use tower::ServiceBuilder;

use crate::support::{manual_store, serve_hyper, TestClient};

async fn echo_path(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from(
        req.uri().path().to_owned(),
    ))))
}

/// The app's auth step, as a plain function: any non-empty `x-api-key` is a token.
fn authenticate(mut req: Request<Incoming>) -> Request<Incoming> {
    let id = req
        .headers()
        .get("x-api-key")
        .filter(|v| !v.is_empty())
        .and_then(|v| v.to_str().ok())
        .map(|k| TokenId(format!("tok_{k}")));
    if let Some(id) = id {
        req.extensions_mut().insert(id);
    }
    req
}

#[tokio::test]
async fn vmarea_through_hyper() {
    let (store, _clock) = manual_store(Duration::from_secs(18));
    let limiter = VmArea::new()
        .per_token(3)
        .per_ip(2)
        .builder()
        .store(store)
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .map_request(authenticate)
        .layer(limiter)
        .service_fn(echo_path);
    let client = TestClient::new(serve_hyper(service).await);
    let key: [(&str, &[u8]); 1] = [("x-api-key", b"abc")];
    for _ in 0..3 {
        let reply = client.send(Method::GET, "/api/public/v1/vms", &key).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "/api/public/v1/vms");
    }
    let denied = client.send(Method::GET, "/api/public/v1/vms", &key).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        denied.text(),
        r#"{"success": false, "error": "Rate limit exceeded for this API token: 3 requests per minute. Retry after 42."}"#
    );
    for _ in 0..2 {
        assert_eq!(
            client.send(Method::POST, "/auth/login", &[]).await.status,
            StatusCode::OK
        );
    }
    let denied = client.send(Method::POST, "/auth/login", &[]).await;
    assert_eq!(
        denied.text(),
        r#"{"success": false, "error": "Rate limit exceeded for this IP address: 2 requests per minute. Retry after 42."}"#
    );
    assert_eq!(denied.header("retry-after"), Some("42"));
    assert_eq!(denied.header("x-ratelimit-reset"), Some("42"));
}

#[tokio::test]
async fn vast_through_hyper_with_route_patterns() {
    let (store, clock) = manual_store(Duration::ZERO);
    let limiter = Vast::new()
        .method_interval(Method::GET, Duration::from_secs(1))
        .builder()
        .store(store)
        .routes(["/api/v0/instances/{id}/", "/api/v1/instances/"])
        .build()
        .unwrap();
    let service = ServiceBuilder::new().layer(limiter).service_fn(echo_path);
    let client = TestClient::new(serve_hyper(service).await);
    let ok = client.get("/api/v0/instances/1/").await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.header("x-ratelimit-limit"), Some("1"));
    let denied = client.get("/api/v0/instances/2/").await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        denied.text(),
        r#"{"success": false, "error": "rate_limited", "msg": "API requests too frequent: endpoint threshold=1"}"#
    );
    assert_eq!(
        client.get("/api/v1/instances/").await.status,
        StatusCode::OK
    );
    clock.advance(Duration::from_secs(denied.retry_after()));
    assert_eq!(
        client.get("/api/v0/instances/3/").await.status,
        StatusCode::OK
    );
    // A path no pattern names has no route template: the per-endpoint limits skip it.
    for _ in 0..2 {
        let reply = client.get("/unrouted").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-ratelimit-limit"), None);
    }
}
