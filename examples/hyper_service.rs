//! tollgate on a plain hyper 1.x server, no axum: the layer is mounted with tower and the
//! service is served through hyper-util's tower adapter.
//!
//! ```sh
//! cargo run --example hyper_service
//! ```
//!
//! Without a router there is no `MatchedPath`, so the route templates are given to the layer;
//! and without axum's `ConnectInfo`, each connection's peer address is inserted as a
//! `SocketAddr` request extension.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tollgate::presets::vast::Vast;
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .init();

    let limiter = Vast::new()
        .default_interval(Duration::from_secs(1))
        .builder()
        .routes(["/api/v0/instances/{id}/", "/api/v1/instances/"])
        .build()?;

    let addr = std::env::var("TOLLGATE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let addr = listener.local_addr()?;
    println!("hyper_service example listening on http://{addr}");
    println!("try: curl -i http://{addr}/api/v0/instances/1/ && curl -i http://{addr}/api/v0/instances/2/");

    loop {
        let (stream, peer) = listener.accept().await?;
        let service = ServiceBuilder::new()
            // The peer address the client-IP key part reads.
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(peer);
                request
            })
            .layer(limiter.clone())
            .service_fn(handle);
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
}

/// The app: a body type of its own (`Full<Bytes>`), not axum's.
async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    let instance = path
        .strip_prefix("/api/v0/instances/")
        .and_then(|rest| rest.strip_suffix('/'))
        .and_then(|id| id.parse::<u64>().ok());
    let body = match (request.method(), path, instance) {
        (&Method::GET, "/api/v1/instances/", _) => {
            r#"{"instances": [], "next_token": null}"#.to_owned()
        }
        (&Method::GET, _, Some(id)) => format!(r#"{{"instances": {{"id": {id}}}}}"#),
        _ => r#"{"success": false, "error": "not_found"}"#.to_owned(),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
