//! A VMArea-like API: per-token 600/min on `/api/public/v1/*`, per-IP 100/min for requests
//! without a token, `Idempotency-Key` replays for free.
//!
//! ```sh
//! cargo run --example vmarea
//! TOLLGATE_STRICT=1 cargo run --example vmarea   # the per-IP bucket applies to every request
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example vmarea   # limits shared through Redis
//! ```
//!
//! `/auth/login` and `/auth/signup` need no key; `/api/public/v1/vms` needs an `x-api-key`
//! (any non-empty key is accepted, and its token id derived from it; a missing key is a 401).

use std::net::SocketAddr;

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tollgate::presets::vmarea::VmArea;
use tollgate::Store;
use tollgate::{RateLimitLayer, RequestHead, TokenId};
use tollgate_redis::{FailurePolicy, RedisConnection, RedisStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .init();

    // The exporter first: the layer registers its metrics when it is built.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let strict = std::env::var_os("TOLLGATE_STRICT").is_some();
    let limits = limits(strict);

    // The store, chosen in one place. With REDIS_URL, every instance pointed at the same Redis
    // shares the same buckets (and, with the default key secret, the same keys). If Redis is
    // unreachable, each instance falls back to local buckets sized for two instances.
    match std::env::var("REDIS_URL") {
        Ok(url) => {
            let connection = RedisConnection::connect(url.as_str()).await?;
            let store = RedisStore::builder(connection)
                .failure_policy(FailurePolicy::fallback(2))
                .build();
            store.load_script().await?;
            // The address only: a REDIS_URL may carry a password.
            let addr = redis::IntoConnectionInfo::into_connection_info(url.as_str())?;
            println!("store: Redis at {}", addr.addr());
            serve(limits.store(store).build()?, prometheus).await
        }
        Err(_) => {
            println!("store: in memory (set REDIS_URL to share limits through Redis)");
            serve(limits.build()?, prometheus).await
        }
    }
}

/// The VMArea limits; scrapes are not API calls, so `/metrics` is exempt from every limit.
fn limits(strict: bool) -> tollgate::RateLimitBuilder {
    VmArea::new()
        .strict(strict)
        .builder()
        .exempt_if(|head: &RequestHead<'_>| head.uri().path() == "/metrics")
}

/// Serves the app with a limiter on any store.
async fn serve<S: Store>(
    limiter: RateLimitLayer<S>,
    prometheus: PrometheusHandle,
) -> Result<(), Box<dyn std::error::Error>> {
    let app = app(limiter, prometheus);
    let addr = std::env::var("TOLLGATE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let addr = listener.local_addr()?;
    println!("vmarea example listening on http://{addr}");
    println!("try: curl -i -H 'x-api-key: demo' http://{addr}/api/public/v1/vms");
    println!("     curl -i -X POST -H 'x-api-key: demo' -H 'Idempotency-Key: vm-1' http://{addr}/api/public/v1/vms");
    println!("     for i in $(seq 101); do curl -s -X POST http://{addr}/auth/login; echo; done");
    println!("     curl -s http://{addr}/metrics");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

/// The routes, behind the limiter and the demo's auth.
fn app<S: Store>(limiter: RateLimitLayer<S>, prometheus: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        )
        .route(
            "/auth/login",
            post(|| async { json(r#"{"success": true, "token": "demo"}"#) }),
        )
        .route(
            "/auth/signup",
            post(|| async { json(r#"{"success": true}"#) }),
        )
        .merge(
            Router::new()
                .route(
                    "/api/public/v1/vms",
                    get(|| async { json(r#"{"success": true, "vms": []}"#) })
                        .post(|| async { json(r#"{"success": true, "vm": {"id": "vm_1"}}"#) }),
                )
                .layer(middleware::from_fn(require_token)),
        )
        // The limiter runs after authentication, so it sees the TokenId.
        .layer(limiter)
        .layer(middleware::from_fn(authenticate))
}

/// The app's auth layer: a non-empty `x-api-key` is valid; its token id is derived from it.
async fn authenticate(mut request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(token_id);
    if let Some(token) = token {
        request.extensions_mut().insert(token);
    }
    next.run(request).await
}

/// The public API answers 401 without a key.
async fn require_token(request: Request, next: Next) -> Response {
    if request.extensions().get::<TokenId>().is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"success": false, "error": "Missing or invalid x-api-key header."}"#,
        )
            .into_response();
    }
    next.run(request).await
}

/// A demo token id: a keyed digest of the key (an app would look the key up in its database).
/// SipHash with a fixed key gives the same id on every instance, whatever compiler built it
/// (`DefaultHasher` promises no such thing), so instances sharing Redis agree on buckets.
fn token_id(key: &str) -> TokenId {
    const TOKEN_IDS: tollgate_core::KeySecret =
        tollgate_core::KeySecret::from_bytes(*b"demo token ids!!");
    let digest = TOKEN_IDS.key().part(key.as_bytes()).finish();
    TokenId(format!("tok_{}", &digest.to_hex()[..16]))
}

fn json(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    //! The example's scrape, as its issue asks: after a burst of logins the per-IP denials show
    //! (`cargo test --example vmarea`, part of the suite).

    use super::*;
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn from_client(method: &str, path: &str) -> Request {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([198, 51, 100, 23], 5000))));
        req
    }

    #[tokio::test]
    async fn a_scrape_after_a_burst_of_logins_shows_the_per_ip_denials() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let prometheus = recorder.handle();
        let limiter = metrics::with_local_recorder(&recorder, || limits(false).build().unwrap());
        let app = app(limiter, prometheus);
        let mut denied = 0;
        for _ in 0..103 {
            let response = app
                .clone()
                .oneshot(from_client("POST", "/auth/login"))
                .await
                .unwrap();
            denied += usize::from(response.status() == StatusCode::TOO_MANY_REQUESTS);
        }
        assert_eq!(denied, 3);
        // The scrape itself is exempt: however often it runs, it is never limited.
        for _ in 0..150 {
            let response = app
                .clone()
                .oneshot(from_client("GET", "/metrics"))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
        let response = app
            .clone()
            .oneshot(from_client("GET", "/metrics"))
            .await
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            text.contains("tollgate_decisions_total{rule=\"per_ip\",outcome=\"denied\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("tollgate_decisions_total{rule=\"per_ip\",outcome=\"allowed\"} 100"),
            "{text}"
        );
        assert!(
            !text.contains("198.51.100.23"),
            "an address reached a label"
        );
    }
}
