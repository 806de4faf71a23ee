//! A layer built from a configuration file, through a real server: the file's limits, scopes,
//! keys, proxies and header style are the ones requests meet.

use axum::routing::{get, post};
use axum::Router;
use http::{Method, StatusCode};
use tollgate::config::Config;

use crate::support::{serve_axum, TestClient};

const FILE: &str = r#"
[[limits]]
name = "login"
quota = "3/minute"
key = ["client_ip"]
scope = { paths = ["/login"], methods = ["POST"] }

[[limits]]
name = "api"
quota = "2 per minute"
algorithm = "sliding_window"
key = ["header:x-api-key"]
scope = { paths = ["/api/*"], except = [{ paths = ["/api/health"] }] }

[client_ip]
trusted_proxies = ["127.0.0.1"]

[headers]
style = "both"
"#;

async fn server() -> TestClient {
    let dir = std::env::temp_dir().join(format!("tollgate-http-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("limits.toml");
    std::fs::write(&path, FILE).unwrap();
    let layer = Config::from_path(&path).unwrap().layer().unwrap();
    let app = Router::new()
        .route(
            "/login",
            post(|| async { "welcome" }).get(|| async { "form" }),
        )
        .route("/api/items", get(|| async { "items" }))
        .route("/api/health", get(|| async { "ok" }))
        .layer(layer);
    TestClient::new(serve_axum(app).await)
}

#[tokio::test]
async fn the_files_login_limit_counts_posts_per_forwarded_client() {
    let client = server().await;
    let from = |ip: &'static [u8]| [("x-forwarded-for", ip)];
    for expected in ["2", "1", "0"] {
        let reply = client
            .send(Method::POST, "/login", &from(b"192.0.2.1"))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(reply.header("x-ratelimit-remaining"), Some(expected));
        assert!(
            reply.header("ratelimit").is_some(),
            "style = \"both\" adds the IETF fields"
        );
    }
    let denied = client
        .send(Method::POST, "/login", &from(b"192.0.2.1"))
        .await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        denied.header("x-ratelimit-limit"),
        Some("3"),
        "the login limit tripped"
    );
    assert!(denied.retry_after() >= 1);
    // Another client behind the trusted proxy has its own bucket; GET is out of scope.
    let other = client
        .send(Method::POST, "/login", &from(b"192.0.2.2"))
        .await;
    assert_eq!(other.status, StatusCode::OK);
    let form = client
        .send(Method::GET, "/login", &from(b"192.0.2.1"))
        .await;
    assert_eq!(form.status, StatusCode::OK);
    assert_eq!(form.header("x-ratelimit-limit"), None);
}

#[tokio::test]
async fn the_files_api_limit_is_per_key_and_spares_the_exception() {
    let client = server().await;
    let key = |k: &'static [u8]| [("x-api-key", k)];
    for _ in 0..2 {
        let reply = client.send(Method::GET, "/api/items", &key(b"alpha")).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let denied = client.send(Method::GET, "/api/items", &key(b"alpha")).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        denied.header("x-ratelimit-limit"),
        Some("2"),
        "the api limit tripped"
    );
    let beta = client.send(Method::GET, "/api/items", &key(b"beta")).await;
    assert_eq!(beta.status, StatusCode::OK);
    let health = client
        .send(Method::GET, "/api/health", &key(b"alpha"))
        .await;
    assert_eq!(health.status, StatusCode::OK);
    // A request without the key part has no bucket in the limit (the part is required).
    let anonymous = client.get("/api/items").await;
    assert_eq!(anonymous.status, StatusCode::OK);
}
