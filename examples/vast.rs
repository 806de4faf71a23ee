//! A Vast-like API limited the Vast way: a minimum interval per endpoint template and per
//! identity (bearer token + session user + `api_key` query parameter + client IP).
//!
//! ```sh
//! cargo run --example vast
//! ```
//!
//! Limits: every GET 1 s, every PUT 2 s, and POST /api/v0/bundles/ 0.5 s with at most 5 calls
//! per 10 s.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Path;
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use tollgate::presets::vast::{Endpoint, Vast};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .init();

    let limiter = Vast::new()
        .method_interval(Method::GET, Duration::from_secs(1))
        .method_interval(Method::PUT, Duration::from_secs(2))
        .endpoint(
            Endpoint::new(Method::POST, "/api/v0/bundles/", Duration::from_millis(500))
                .max_calls(5, Duration::from_secs(10)),
        )
        .builder()
        .build()?;

    let app = Router::new()
        .route(
            "/api/v1/instances/",
            get(|| async { json(r#"{"instances": [], "next_token": null}"#.to_owned()) }),
        )
        .route(
            "/api/v0/instances/{id}/",
            get(|Path(id): Path<u64>| async move {
                json(format!(r#"{{"instances": {{"id": {id}}}}}"#))
            }),
        )
        .route(
            "/api/v0/users/current",
            get(|| async { json(r#"{"id": 1, "username": "demo"}"#.to_owned()) }),
        )
        .route(
            "/api/v0/bundles/",
            post(|| async { json(r#"{"offers": []}"#.to_owned()) }),
        )
        .route(
            "/api/v0/asks/{id}/",
            put(|Path(id): Path<u64>| async move {
                json(format!(r#"{{"success": true, "new_contract": {id}}}"#))
            }),
        )
        .layer(limiter);

    let addr = std::env::var("TOLLGATE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let addr = listener.local_addr()?;
    println!("vast example listening on http://{addr}");
    println!("try: for i in 1 2; do curl -i -H 'Authorization: Bearer demo' http://{addr}/api/v0/instances/$i/; done");
    println!("     for i in $(seq 7); do curl -s -X POST http://{addr}/api/v0/bundles/; echo; sleep 0.5; done");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
