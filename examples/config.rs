//! A VMArea-like API whose limits come from a file: `examples/tollgate.toml`, or the file
//! named by `TOLLGATE_CONFIG`; reloaded on SIGHUP, keeping the state of every limit.
//!
//! ```sh
//! cargo run --example config
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example config   # limits shared through Redis
//! kill -HUP $(pgrep -f 'examples/config')                       # reload the file
//! ```
//!
//! `/auth/login` answers 200 with the header `x-password: demo` and 401 otherwise (failed
//! logins are limited to 5 per 15 minutes per IP); `/auth/signup` needs nothing;
//! `/api/public/v1/vms` needs an `x-api-key` (401 without), 600/min per key, 6000/min for the
//! key `enterprise-demo`.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tollgate::config::{Config, ConfigError};
use tollgate::{RateLimitLayer, RequestHead, Store};
use tollgate_redis::{RedisConnection, RedisStore};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .init();
    // The error as its message (file, line, field), not as its Debug form.
    if let Err(e) = run().await {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // The exporter first: the layer registers its metrics when it is built.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let path = config_path();
    let config = Config::from_path(&path)?;
    println!("limits: {}", path.display());
    match std::env::var("REDIS_URL") {
        Ok(url) => {
            let store = RedisStore::builder(RedisConnection::connect(url.as_str()).await?).build();
            store.load_script().await?;
            println!("store: Redis at {}", tollgate_redis::redact_url(&url));
            let builder = RateLimitLayer::builder().store(store).exempt_if(is_scrape);
            serve(config.build(builder)?, path, prometheus).await
        }
        Err(_) => {
            println!("store: in memory (set REDIS_URL to share limits through Redis)");
            let builder = RateLimitLayer::builder().exempt_if(is_scrape);
            serve(config.build(builder)?, path, prometheus).await
        }
    }
}

/// `TOLLGATE_CONFIG`, or the file shipped beside this example.
fn config_path() -> PathBuf {
    std::env::var_os("TOLLGATE_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/tollgate.toml"
            ))
        })
}

/// Scrapes are not API calls: `/metrics` is exempt from every limit.
fn is_scrape(head: &RequestHead<'_>) -> bool {
    head.uri().path() == "/metrics"
}

async fn serve<S: Store>(
    layer: RateLimitLayer<S>,
    path: PathBuf,
    prometheus: PrometheusHandle,
) -> Result<(), Box<dyn std::error::Error>> {
    reload_on_sighup(layer.clone(), path);
    let addr = std::env::var("TOLLGATE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let addr = listener.local_addr()?;
    println!("config example listening on http://{addr}");
    println!("try: curl -i -H 'x-api-key: enterprise-demo' http://{addr}/api/public/v1/vms");
    println!("     for i in $(seq 6); do curl -s -o /dev/null -w '%{{http_code}}\\n' -X POST http://{addr}/auth/login; done");
    axum::serve(
        listener,
        app(layer)
            .route(
                "/metrics",
                get(move || std::future::ready(prometheus.render())),
            )
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

/// The routes, behind the limiter.
fn app<S: Store>(layer: RateLimitLayer<S>) -> Router {
    Router::new()
        .route("/auth/login", post(login))
        .route(
            "/auth/signup",
            post(|| async { json(StatusCode::OK, r#"{"success": true}"#) }),
        )
        .route(
            "/api/public/v1/vms",
            get(|| async { json(StatusCode::OK, r#"{"success": true, "vms": []}"#) })
                .post(|| async {
                    json(StatusCode::OK, r#"{"success": true, "vm": {"id": "vm_1"}}"#)
                })
                .layer(middleware::from_fn(require_key)),
        )
        .layer(layer)
}

/// Reads the file again on every SIGHUP and puts it in force; a file that does not load leaves
/// the running configuration in place, and says why.
fn reload_on_sighup<S: Store>(layer: RateLimitLayer<S>, path: PathBuf) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            eprintln!("cannot listen for SIGHUP: no reloads");
            return;
        };
        while hangups.recv().await.is_some() {
            match reload(&layer, &path, is_scrape) {
                Ok(()) => println!("reloaded {}", path.display()),
                Err(e) => eprintln!("kept the running limits: {e}"),
            }
        }
    });
    #[cfg(not(unix))]
    drop((layer, path));
}

/// The file put in force, with the exemptions made in code (`exempt`), which a file cannot hold.
fn reload<S: Store>(
    layer: &RateLimitLayer<S>,
    path: &std::path::Path,
    exempt: fn(&RequestHead<'_>) -> bool,
) -> Result<(), ConfigError> {
    let config = Config::from_path(path)?;
    let builder = config.apply(RateLimitLayer::builder().exempt_if(exempt))?;
    layer.reload(builder).map_err(|source| ConfigError::Build {
        origin: path.display().to_string(),
        source,
    })
}

/// The demo's login: the password is `demo`.
async fn login(headers: HeaderMap) -> Response {
    match headers.get("x-password").map(|v| v.as_bytes()) {
        Some(b"demo") => json(StatusCode::OK, r#"{"success": true, "token": "demo"}"#),
        _ => json(
            StatusCode::UNAUTHORIZED,
            r#"{"success": false, "error": "Invalid credentials."}"#,
        ),
    }
}

/// The public API answers 401 without a key.
async fn require_key(request: Request, next: Next) -> Response {
    let has_key = request
        .headers()
        .get("x-api-key")
        .is_some_and(|v| !v.is_empty());
    if !has_key {
        return json(
            StatusCode::UNAUTHORIZED,
            r#"{"success": false, "error": "Missing or invalid x-api-key header."}"#,
        );
    }
    next.run(request).await
}

fn json(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    //! The example as item 7 of its issue describes it, through a real server on the shipped
    //! file (`cargo test --example config`, part of the suite).

    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    struct Server {
        addr: SocketAddr,
        client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<bytes::Bytes>>,
    }

    impl Server {
        async fn start(layer: RateLimitLayer) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let app = app(layer).into_make_service_with_connect_info::<SocketAddr>();
                axum::serve(listener, app).await.unwrap();
            });
            let client = Client::builder(TokioExecutor::new()).build_http();
            Self { addr, client }
        }

        async fn send(
            &self,
            method: &str,
            path: &str,
            headers: &[(&str, &str)],
        ) -> (u16, HeaderMap) {
            let mut req = http::Request::builder()
                .method(method)
                .uri(format!("http://{}{path}", self.addr));
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            let response = self
                .client
                .request(req.body(Full::default()).unwrap())
                .await
                .unwrap();
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let _ = response.into_body().collect().await;
            (status, headers)
        }
    }

    fn limit_of(headers: &HeaderMap) -> Option<&str> {
        headers
            .get("x-ratelimit-limit")
            .map(|v| v.to_str().unwrap())
    }

    #[tokio::test]
    async fn the_shipped_file_sets_the_vmarea_limits_and_the_enterprise_ceiling() {
        let server =
            Server::start(Config::from_path(config_path()).unwrap().layer().unwrap()).await;
        let vms = "/api/public/v1/vms";
        let (status, headers) = server
            .send("GET", vms, &[("x-api-key", "enterprise-demo")])
            .await;
        assert_eq!((status, limit_of(&headers)), (200, Some("6000")));
        let (status, headers) = server.send("GET", vms, &[("x-api-key", "someone")]).await;
        assert_eq!((status, limit_of(&headers)), (200, Some("600")));
        let (status, headers) = server.send("POST", "/auth/signup", &[]).await;
        assert_eq!((status, limit_of(&headers)), (200, Some("100")));
        assert_eq!(server.send("GET", vms, &[]).await.0, 401);
    }

    #[tokio::test]
    async fn failed_logins_are_limited_and_successes_are_not() {
        let server =
            Server::start(Config::from_path(config_path()).unwrap().layer().unwrap()).await;
        let good = [("x-password", "demo")];
        for _ in 0..8 {
            assert_eq!(server.send("POST", "/auth/login", &good).await.0, 200);
        }
        for _ in 0..5 {
            assert_eq!(server.send("POST", "/auth/login", &[]).await.0, 401);
        }
        let (status, headers) = server.send("POST", "/auth/login", &[]).await;
        assert_eq!((status, limit_of(&headers)), (429, Some("5")));
        assert!(headers.contains_key("retry-after"));
        assert_eq!(server.send("POST", "/auth/login", &good).await.0, 429);
    }

    #[tokio::test]
    async fn a_reload_applies_a_changed_file_and_a_broken_one_changes_nothing() {
        let layer = Config::from_path(config_path()).unwrap().layer().unwrap();
        let server = Server::start(layer.clone()).await;
        let dir =
            std::env::temp_dir().join(format!("tollgate-config-example-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tollgate.toml");
        let shipped = std::fs::read_to_string(config_path()).unwrap();
        std::fs::write(&path, shipped.replace("\"6000/minute\"", "\"9000/minute\"")).unwrap();
        reload(&layer, &path, is_scrape).unwrap();
        let key = [("x-api-key", "enterprise-demo")];
        let (_, headers) = server.send("GET", "/api/public/v1/vms", &key).await;
        assert_eq!(limit_of(&headers), Some("9000"));

        std::fs::write(
            &path,
            shipped.replace("quota = \"600/minute\"", "quota = \"600/fortnight\""),
        )
        .unwrap();
        let err = reload(&layer, &path, is_scrape).unwrap_err().to_string();
        assert!(
            err.contains("tollgate.toml") && err.contains("fortnight"),
            "{err}"
        );
        let (_, headers) = server.send("GET", "/api/public/v1/vms", &key).await;
        assert_eq!(limit_of(&headers), Some("9000"), "the running limits stay");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
