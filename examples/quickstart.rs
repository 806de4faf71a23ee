//! tollgate in a few lines: an axum app with two limits, in memory.
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! - `POST /login`: 100 per minute per client IP.
//! - `/api/*`: 600 per minute per API key (`x-api-key`); requests without one are not counted
//!   there (a real API would answer them 401).
//!
//! The `vast` and `vmarea` examples show the two presets, which build the same kind of limits.

use std::net::SocketAddr;

use axum::http::HeaderName;
use axum::routing::{get, post};
use axum::Router;
use tollgate::{KeyPart, Limit, RateLimitLayer, Scope};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .init();

    let limiter = RateLimitLayer::builder()
        .limit(
            Limit::per_minute("login", 100)
                .scope(Scope::all().path("/login"))
                .key(KeyPart::client_ip()),
        )
        .limit(
            Limit::per_minute("api", 600)
                .scope(Scope::all().path("/api/*"))
                .key(KeyPart::header(HeaderName::from_static("x-api-key"))),
        )
        .build()?;

    let app = Router::new()
        .route("/login", post(|| async { "logged in\n" }))
        .route("/api/items", get(|| async { "[]\n" }))
        .layer(limiter);

    let addr = std::env::var("TOLLGATE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let addr = listener.local_addr()?;
    println!("tollgate quickstart listening on http://{addr}");
    println!("try: curl -i -H 'x-api-key: demo' http://{addr}/api/items");
    println!("     for i in $(seq 110); do curl -s -o /dev/null -w '%{{http_code}} ' -X POST http://{addr}/login; done");
    // The per-IP limit needs the peer address: serve with connect info.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
