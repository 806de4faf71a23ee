//! tollgate in a few lines: an axum app with both presets, in memory.
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! - `/api/v0/instances/{id}/` is limited the Vast way: one GET per second per endpoint and
//!   identity (ids share their endpoint's bucket).
//! - `/auth/login` and `/api/public/v1/vms` are limited the VMArea way: 600/min per API token
//!   (send any `x-api-key`), 100/min per IP for requests without one.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Path, Request};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tollgate::presets::{vast::Vast, vmarea::VmArea};
use tollgate::TokenId;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .init();

    // Vast: a minimum interval per endpoint template and identity.
    let vast = Vast::new()
        .method_interval(Method::GET, Duration::from_secs(1))
        .builder()
        .build()?;
    // VMArea: 600/min per token on /api/public/v1/*, 100/min per IP without a token.
    let vmarea = VmArea::new().builder().build()?;

    let app = Router::new()
        .merge(
            Router::new()
                .route("/api/v0/instances/{id}/", get(instance))
                .layer(vast),
        )
        .merge(
            Router::new()
                .route(
                    "/auth/login",
                    post(|| async { json(r#"{"success": true}"#) }),
                )
                .route(
                    "/api/public/v1/vms",
                    get(|| async { json(r#"{"vms": []}"#) }),
                )
                .layer(vmarea)
                // Runs before the limiter: turns a valid x-api-key into a TokenId.
                .layer(middleware::from_fn(authenticate)),
        );

    let addr = std::env::var("TOLLGATE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let addr = listener.local_addr()?;
    println!("tollgate quickstart listening on http://{addr}");
    println!("try: curl -i http://{addr}/api/v0/instances/7/ && curl -i http://{addr}/api/v0/instances/8/");
    println!("     curl -i -H 'x-api-key: demo' http://{addr}/api/public/v1/vms");
    println!("     for i in $(seq 101); do curl -s -X POST http://{addr}/auth/login; echo; done");
    // The per-IP buckets need the peer address: serve with connect info.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

async fn instance(Path(id): Path<u64>) -> Response {
    json(format!(r#"{{"instances": {{"id": {id}}}}}"#))
}

/// A stand-in for the app's auth layer: any non-empty `x-api-key` is valid, and its token id is
/// derived from it. Unauthenticated requests go on (the per-IP bucket takes them); the API
/// itself could answer 401, as the vmarea example does.
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

/// A demo token id: a keyed digest of the key (an app would look the key up in its database).
/// SipHash with a fixed key gives the same id on every instance, whatever compiler built it
/// (`DefaultHasher` promises no such thing), so instances sharing Redis agree on buckets.
fn token_id(key: &str) -> TokenId {
    const TOKEN_IDS: tollgate_core::KeySecret =
        tollgate_core::KeySecret::from_bytes(*b"demo token ids!!");
    let digest = TOKEN_IDS.key().part(key.as_bytes()).finish();
    TokenId(format!("tok_{}", &digest.to_hex()[..16]))
}

fn json(body: impl Into<String>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.into(),
    )
        .into_response()
}
