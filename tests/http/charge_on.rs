//! Limits charged by the response (`Limit::charge_on`): failed logins counted, successes not;
//! refused up front once spent; never more requests run at once than the limit has left.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use http::{Method, StatusCode};
use tollgate::{KeyPart, Limit, RateLimitLayer, Scope};
use tower::ServiceExt;

use crate::support::{serve_axum, TestClient};

fn failed_logins(limit: u64) -> Limit {
    Limit::per_minute("failed_logins", limit)
        .scope(Scope::all().path("/login"))
        .key(KeyPart::client_ip())
        .charge_on([StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN])
}

/// 200 with `x-password: demo`, 401 otherwise; counts the requests that reached it.
async fn login(State(reached): State<Arc<AtomicUsize>>, headers: HeaderMap) -> StatusCode {
    reached.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(20)).await;
    match headers.get("x-password").map(|v| v.as_bytes()) {
        Some(b"demo") => StatusCode::OK,
        _ => StatusCode::UNAUTHORIZED,
    }
}

fn app(layer: RateLimitLayer) -> (Router, Arc<AtomicUsize>) {
    let reached = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/login", post(login))
        .with_state(reached.clone())
        .layer(layer);
    (app, reached)
}

const GOOD: [(&str, &[u8]); 1] = [("x-password", b"demo")];
const BAD: [(&str, &[u8]); 1] = [("x-password", b"guess")];

#[tokio::test]
async fn only_failures_count_and_a_spent_limit_refuses_before_the_handler() {
    let layer = RateLimitLayer::builder()
        .limit(Limit::per_minute("per_ip", 100).key(KeyPart::client_ip()))
        .limit(failed_logins(3))
        .build()
        .unwrap();
    let (app, reached) = app(layer.clone());
    let client = TestClient::new(serve_axum(app).await);
    for _ in 0..5 {
        let reply = client.send(Method::POST, "/login", &GOOD).await;
        assert_eq!(reply.status, StatusCode::OK, "successes are not charged");
    }
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let reply = client.send(Method::POST, "/login", &BAD).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        remaining.push(reply.header("x-ratelimit-remaining").unwrap().to_owned());
    }
    // The headers report the binding limit before the failure was charged.
    assert_eq!(remaining, ["3", "2", "1"]);
    let before = reached.load(Ordering::Relaxed);
    for headers in [&BAD, &GOOD] {
        let refused = client.send(Method::POST, "/login", headers).await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.retry_after() >= 1);
        assert_eq!(refused.header("x-ratelimit-limit"), Some("3"));
    }
    assert_eq!(reached.load(Ordering::Relaxed), before, "refused up front");
    // All-or-nothing: the refused requests were not charged by the per-IP limit either.
    let per_ip = layer.metrics().limit("per_ip").cloned().unwrap();
    assert_eq!((per_ip.allowed, per_ip.denied), (8, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_failures_never_run_past_what_the_limit_has_left() {
    let layer = RateLimitLayer::builder()
        .limit(failed_logins(5))
        .build()
        .unwrap();
    let (app, reached) = app(layer);
    let client = TestClient::new(serve_axum(app).await);
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client.send(Method::POST, "/login", &BAD).await.status
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    let unauthorized = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!(unauthorized, 5, "{statuses:?}");
    assert_eq!(reached.load(Ordering::Relaxed), 5);
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        25
    );
    // Spent: even a later, lone attempt is refused.
    let later = client.send(Method::POST, "/login", &BAD).await;
    assert_eq!(later.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn an_abandoned_request_gives_its_place_back() {
    let layer = RateLimitLayer::builder()
        .limit(failed_logins(1))
        .build()
        .unwrap();
    let hang = Router::new()
        .route(
            "/login",
            post(|| async {
                std::future::pending::<()>().await;
                StatusCode::UNAUTHORIZED
            }),
        )
        .layer(layer.clone());
    let request = || {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri("/login")
            .body(axum::body::Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [192, 0, 2, 1],
                1000,
            ))));
        req
    };
    let first = tokio::time::timeout(Duration::from_millis(50), hang.clone().oneshot(request()));
    assert!(first.await.is_err(), "the handler never answers");
    // Its place in flight was given back when it was dropped, uncharged: the one attempt the
    // limit allows is still there.
    let (app, _) = app(layer);
    let mut second = request();
    second
        .headers_mut()
        .insert("x-password", "guess".parse().unwrap());
    let reply = app.oneshot(second).await.unwrap();
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
}

/// A limit charged up front beside one charged by the response is charged as usual: the
/// response-charged limit's peek does not stand in for it.
#[tokio::test]
async fn a_limit_charged_up_front_beside_one_charged_by_the_response_is_still_charged() {
    let layer = RateLimitLayer::builder()
        .limit(Limit::per_minute("per_ip", 3).key(KeyPart::client_ip()))
        .limit(failed_logins(100))
        .build()
        .unwrap();
    let (app, reached) = app(layer);
    let client = TestClient::new(serve_axum(app).await);
    for left in ["2", "1", "0"] {
        let reply = client.send(Method::POST, "/login", &GOOD).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("x-ratelimit-remaining"), Some(left));
    }
    let refused = client.send(Method::POST, "/login", &GOOD).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(reached.load(Ordering::Relaxed), 3);
}

/// A login handler that answers only once `released` reaches the number in the request's
/// `x-hold` header (200 with the right password, 401 otherwise).
async fn held_login(
    State((reached, released)): State<(Arc<AtomicUsize>, Arc<tokio::sync::watch::Sender<usize>>)>,
    headers: HeaderMap,
) -> StatusCode {
    reached.fetch_add(1, Ordering::Relaxed);
    let hold: usize = headers
        .get("x-hold")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let mut released = released.subscribe();
    released.wait_for(|n| *n >= hold).await.unwrap();
    match headers.get("x-password").map(|v| v.as_bytes()) {
        Some(b"demo") => StatusCode::OK,
        _ => StatusCode::UNAUTHORIZED,
    }
}

struct HeldLogins {
    client: TestClient,
    reached: Arc<AtomicUsize>,
    release: Arc<tokio::sync::watch::Sender<usize>>,
}

impl HeldLogins {
    async fn new(limit: u64) -> Self {
        let layer = RateLimitLayer::builder()
            .limit(failed_logins(limit))
            .build()
            .unwrap();
        let reached = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::watch::Sender::new(0));
        let app = Router::new()
            .route("/login", post(held_login))
            .with_state((reached.clone(), release.clone()))
            .layer(layer);
        let client = TestClient::new(serve_axum(app).await);
        Self {
            client,
            reached,
            release,
        }
    }

    /// Sends a login held until `hold` is released, and waits until it reached the handler.
    async fn hold(
        &self,
        hold: usize,
        password: &'static [u8],
    ) -> tokio::task::JoinHandle<StatusCode> {
        let before = self.reached.load(Ordering::Relaxed);
        let client = self.client.clone();
        let hold_value = hold.to_string();
        let task = tokio::spawn(async move {
            let headers: [(&str, &[u8]); 2] =
                [("x-password", password), ("x-hold", hold_value.as_bytes())];
            client.send(Method::POST, "/login", &headers).await.status
        });
        while self.reached.load(Ordering::Relaxed) == before {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        task
    }

    /// A login that must be refused at once, its place being taken by requests in flight.
    async fn refused(&self) -> crate::support::Reply {
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            self.client
                .send(Method::POST, "/login", &[("x-hold", b"0")]),
        )
        .await
        .expect("refused at once, not let through to wait in the handler");
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        reply
    }
}

/// A request refused because every place the limit has left is taken by requests in flight is
/// told what is left (nothing, for now) and to come back in about the time one of them takes.
#[tokio::test]
async fn a_request_refused_for_places_in_flight_has_nothing_left_and_retries_in_a_second() {
    let logins = HeldLogins::new(2).await;
    let first = logins.hold(1, b"guess").await;
    let second = logins.hold(1, b"guess").await;
    let refused = logins.refused().await;
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.header("x-ratelimit-limit"), Some("2"));
    logins.release.send_replace(1);
    assert_eq!(first.await.unwrap(), StatusCode::UNAUTHORIZED);
    assert_eq!(second.await.unwrap(), StatusCode::UNAUTHORIZED);
    assert_eq!(logins.reached.load(Ordering::Relaxed), 2);
}

/// A request that finishes gives back its own place in flight and nobody else's: with 3 left
/// and one of two held requests done (uncharged), two more may run, not three.
#[tokio::test]
async fn a_finished_request_gives_back_only_its_own_place_in_flight() {
    let logins = HeldLogins::new(3).await;
    let done = logins.hold(1, b"demo").await;
    let _still_held = logins.hold(2, b"guess").await;
    logins.release.send_replace(1);
    assert_eq!(
        done.await.unwrap(),
        StatusCode::OK,
        "a success is not charged"
    );
    let _third = logins.hold(2, b"guess").await;
    let _fourth = logins.hold(2, b"guess").await;
    logins.refused().await;
    assert_eq!(logins.reached.load(Ordering::Relaxed), 4);
    logins.release.send_replace(2);
}

/// A limit charged by the response may have a rule of its own for a request (here a cost of
/// 2 read from the request): it applies to that limit, at its place after the limits charged
/// up front and the other limits charged by the response, and to no other.
#[tokio::test]
async fn a_cost_of_a_limit_charged_by_the_response_applies_to_that_limit_alone() {
    let layer = RateLimitLayer::builder()
        .limit(Limit::per_minute("per_ip", 100).key(KeyPart::client_ip()))
        .limit(
            Limit::per_minute("failures_per_ip", 10)
                .key(KeyPart::client_ip())
                .charge_on([StatusCode::UNAUTHORIZED]),
        )
        .limit(failed_logins(4).cost_from_fn(|_| Some(2)))
        .build()
        .unwrap();
    let (app, reached) = app(layer.clone());
    let client = TestClient::new(serve_axum(app).await);
    let mut remaining = Vec::new();
    for _ in 0..2 {
        let reply = client.send(Method::POST, "/login", &BAD).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        remaining.push(reply.header("x-ratelimit-remaining").unwrap().to_owned());
    }
    // The binding limit is the failed logins: 4 left, then 2, each failure costing 2.
    assert_eq!(remaining, ["4", "2"]);
    let refused = client.send(Method::POST, "/login", &BAD).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("x-ratelimit-limit"), Some("4"));
    assert_eq!(reached.load(Ordering::Relaxed), 2);
    // The other limits counted each admitted request once, at their own cost of 1.
    for name in ["per_ip", "failures_per_ip"] {
        let limit = layer.metrics().limit(name).cloned().unwrap();
        assert_eq!(limit.allowed, 2, "{name}");
    }
}
