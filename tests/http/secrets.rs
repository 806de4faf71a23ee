//! No secret in Debug output or logs, and no log flood: what a request carries (tokens, cookies,
//! `api_key`) never reaches a `{:?}` of the layer's types, and every per-request log line is
//! rate-limited with a count of what it held back.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::routing::get;
use axum::Router;
use http::{Method, StatusCode};
use tollgate::{KeyPart, Limit, RateLimitLayer};
use tollgate::{KeySecret, MemoryStore, Quota, Rule, Store};

use crate::support::{serve_axum, BrokenStore, TestClient};

/// Everything a test's subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Captures every event of this thread (a `#[tokio::test]` runs the server's tasks on it too).
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

const SECRETS: [&str; 3] = ["tok-SECRET-1", "cookie-SECRET-2", "key-SECRET-3"];

fn app(limiter: RateLimitLayer<impl Store>) -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(limiter)
}

async fn send_with_secrets(client: &TestClient) -> StatusCode {
    client
        .send(
            Method::GET,
            "/?api_key=key-SECRET-3",
            &[
                ("authorization", b"Bearer tok-SECRET-1"),
                ("cookie", b"sid=cookie-SECRET-2"),
            ],
        )
        .await
        .status
}

#[tokio::test]
async fn a_denial_debug_output_names_the_rule_and_no_secret() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let limiter = RateLimitLayer::builder()
        .limit(
            Limit::new(
                Rule::builder("per_key", Quota::per_minute(1).unwrap())
                    .build()
                    .unwrap(),
            )
            .key(KeyPart::bearer_token())
            .key(KeyPart::query("api_key")),
        )
        .on_denied(move |denial| {
            sink.lock().unwrap().push(format!("{denial:?}"));
            denial.json_bytes("{}")
        })
        .build()
        .unwrap();
    let client = TestClient::new(serve_axum(app(limiter)).await);
    assert_eq!(send_with_secrets(&client).await, StatusCode::OK);
    assert_eq!(
        send_with_secrets(&client).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let seen = seen.lock().unwrap();
    let debug = seen.first().expect("the responder saw the denial");
    assert!(
        debug.contains("per_key") && debug.contains("path: \"/\""),
        "{debug}"
    );
    for secret in SECRETS {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
}

/// Lines of `text` that contain `needle`.
fn lines_with(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test]
async fn an_outage_logs_one_line_per_second_with_a_suppressed_count() {
    let (logs, _guard) = capture();
    let limiter = RateLimitLayer::builder()
        .store(BrokenStore::<true>)
        .key_secret(KeySecret::from_bytes(*b"0123456789abcdef"))
        .limit(
            Limit::new(
                Rule::builder("per_key", Quota::per_minute(100).unwrap())
                    .build()
                    .unwrap(),
            )
            .key(KeyPart::bearer_token())
            .key(KeyPart::query("api_key")),
        )
        .build()
        .unwrap();
    let client = TestClient::new(serve_axum(app(limiter)).await);
    let start = Instant::now();
    for _ in 0..50 {
        assert_eq!(
            send_with_secrets(&client).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    let seconds = start.elapsed().as_secs();
    let text = logs.text();
    let lines = lines_with(&text, "rate limiter store failed");
    // One line per started second at most (the first is let through at once).
    assert!(
        (1..=1 + seconds as usize).contains(&lines),
        "{lines} lines in {seconds} s:\n{text}"
    );
    assert!(text.contains("suppressed=0"), "{text}");
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} in the logs:\n{text}");
    }
    // Its own secret: no warning about the default one.
    assert_eq!(lines_with(&text, "public default KeySecret"), 0, "{text}");
}

#[tokio::test]
async fn a_shadow_flood_logs_one_line_per_second() {
    let (logs, _guard) = capture();
    let limiter = RateLimitLayer::builder()
        .store(MemoryStore::new())
        .limit(
            Limit::new(
                Rule::builder("shadow", Quota::per_minute(1).unwrap())
                    .shadow(true)
                    .build()
                    .unwrap(),
            )
            .key(KeyPart::client_ip()),
        )
        .build()
        .unwrap();
    let client = TestClient::new(serve_axum(app(limiter.clone())).await);
    let start = Instant::now();
    for _ in 0..50 {
        assert_eq!(client.get("/").await.status, StatusCode::OK);
    }
    let seconds = start.elapsed().as_secs();
    let text = logs.text();
    let lines = lines_with(&text, "shadow rule would have denied");
    assert!(
        (1..=1 + seconds as usize).contains(&lines),
        "{lines} lines in {seconds} s:\n{text}"
    );
    assert_eq!(limiter.metrics().limit("shadow").unwrap().shadow_denied, 49);
}

#[test]
fn a_shared_store_with_the_public_default_secret_is_warned_about_once() {
    let (logs, _guard) = capture();
    let build = |secret: Option<KeySecret>| {
        let builder = RateLimitLayer::builder().store(BrokenStore::<true>);
        match secret {
            Some(secret) => builder.key_secret(secret),
            None => builder,
        }
        .build()
        .unwrap()
    };
    drop(build(Some(KeySecret::from_bytes(*b"0123456789abcdef"))));
    assert_eq!(lines_with(&logs.text(), "public default KeySecret"), 0);
    drop(build(None));
    drop(build(None));
    let text = logs.text();
    assert_eq!(lines_with(&text, "public default KeySecret"), 1, "{text}");
    // A store of this process only: nothing to warn about.
    drop(RateLimitLayer::builder().build().unwrap());
    assert_eq!(lines_with(&logs.text(), "public default KeySecret"), 1);
}

/// Lines of `text` at `level` that contain `needle`.
fn lines_at(text: &str, level: &str, needle: &str) -> usize {
    (text.lines())
        .filter(|line| line.contains(level) && line.contains(needle))
        .count()
}

/// A limit keyed by route skips a request that matched no route, and says so once per limiter,
/// not once per request.
#[tokio::test]
async fn a_request_without_a_route_is_reported_once() {
    use tower::ServiceExt;
    let (captured, _guard) = capture();
    let limiter = RateLimitLayer::builder()
        .limit(Limit::per_minute("per_route", 1).key(KeyPart::route()))
        .build()
        .unwrap();
    // Outside the router: no `MatchedPath`, and no route patterns given to the layer.
    let service = tower::Layer::layer(&limiter, Router::new());
    for _ in 0..3 {
        let request = http::Request::get("/nowhere")
            .body(axum::body::Body::empty())
            .unwrap();
        let status = service.clone().oneshot(request).await.unwrap().status();
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let text = captured.text();
    assert_eq!(lines_at(&text, "INFO", "matched no route"), 1, "{text}");
}

/// A limit keyed by client IP on a server that gives no peer address is a misconfiguration:
/// reported as an error once per limiter, then at debug level.
#[tokio::test]
async fn a_missing_peer_address_is_reported_as_an_error_once() {
    use tower::ServiceExt;
    let (captured, _guard) = capture();
    let limiter = RateLimitLayer::builder()
        .limit(Limit::per_minute("per_ip", 1).key(KeyPart::client_ip()))
        .build()
        .unwrap();
    let app = app(limiter);
    for _ in 0..3 {
        let request = http::Request::get("/")
            .body(axum::body::Body::empty())
            .unwrap();
        let status = app.clone().oneshot(request).await.unwrap().status();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let text = captured.text();
    assert_eq!(lines_at(&text, "ERROR", "peer"), 1, "{text}");
    assert_eq!(lines_at(&text, "DEBUG", "peer"), 2, "{text}");
}
