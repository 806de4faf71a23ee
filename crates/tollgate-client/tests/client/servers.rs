//! Against real tollgate servers (axum + the tollgate layer on 127.0.0.1), in real time.

use std::time::{Duration, Instant};

use axum::routing::{get, post, put};
use axum::Router;
use http::{Method, StatusCode};
use tollgate::presets::vast::{Endpoint, Vast};
use tollgate::{Algorithm, HeaderStyle, KeyPart, Limit, RateLimitLayer, ResetFormat};
use tollgate_client::{Backoff, PoliteLayer};

use crate::support::{serve, Answer, Log, PoliteClient};

/// A Vast-like API: every GET 1 s, every PUT 2 s, POST /api/v0/bundles/ 1 s apart, per
/// identity (here the client IP).
async fn vast() -> (std::net::SocketAddr, Log) {
    let limiter = Vast::new()
        .method_interval(Method::GET, Duration::from_secs(1))
        .method_interval(Method::PUT, Duration::from_secs(2))
        .endpoint(Endpoint::new(
            Method::POST,
            "/api/v0/bundles/",
            Duration::from_secs(1),
        ))
        .builder()
        .build()
        .unwrap();
    let app = Router::new()
        .route("/api/v0/instances/{id}/", get(|| async { "instance" }))
        .route("/api/v0/asks/{id}/", put(|| async { "rented" }))
        .route("/api/v0/bundles/", post(|| async { "offers" }))
        .layer(limiter);
    serve(app).await
}

/// Checks what the server saw of every retry: it came at least `Retry-After` after the
/// refusal left.
fn assert_retries_waited(log: &Log) {
    let answers = log.answers();
    for (i, refusal) in answers.iter().enumerate() {
        if refusal.retry_after.is_some() {
            assert_retry_waited(&answers, i);
        }
    }
}

/// Checks that the request after refusal `i` (with the same method: its retry) came at least
/// `Retry-After` after the refusal left.
fn assert_retry_waited(answers: &[Answer], i: usize) {
    let refusal = &answers[i];
    let wait = refusal.retry_after.expect("a refusal with Retry-After");
    let retry = answers[i + 1..]
        .iter()
        .find(|a| a.method == refusal.method)
        .expect("every refusal retried");
    let gap = retry.arrived.saturating_duration_since(refusal.answered);
    assert!(
        gap >= Duration::from_secs(wait),
        "retried {gap:?} after a 429 saying Retry-After: {wait}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_calls_to_an_interval_endpoint_succeed_with_at_most_one_retry_each() {
    let (addr, log) = vast().await;
    // Learned pacing off: every call after the first meets the interval and is retried.
    let layer = PoliteLayer::new()
        .backoff(Backoff::vast_sdk())
        .learn_pacing(false);
    let client = PoliteClient::new(&layer, addr);
    let gets = async {
        let mut outcomes = Vec::new();
        for id in 0..4 {
            let path = format!("/api/v0/instances/{id}/");
            outcomes.push(client.call(Method::GET, &path, &[]).await);
        }
        outcomes
    };
    let puts = async {
        let mut outcomes = Vec::new();
        for _ in 0..2 {
            outcomes.push(client.call(Method::PUT, "/api/v0/asks/7/", &[]).await);
        }
        outcomes
    };
    let (gets, puts) = tokio::join!(gets, puts);
    for (interval, outcomes) in [(1, &gets), (2, &puts)] {
        for (i, o) in outcomes.iter().enumerate() {
            assert_eq!(o.status, StatusCode::OK, "call {i}: {o:?}");
            assert!(o.report.attempts() <= 2, "call {i}: {o:?}");
            if o.report.attempts() == 2 {
                // The server said ceil(remaining interval) seconds: waited at least that much
                // of the interval, and not a policy delay of 0.15 s.
                assert!(o.report.waited() >= Duration::from_millis(900 * interval));
            }
        }
        let retried = outcomes.iter().filter(|o| o.report.attempts() == 2).count();
        assert!(retried >= outcomes.len() - 2, "{outcomes:?}");
    }
    assert!(log.refusals() >= 3);
    assert_retries_waited(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_learned_pacing_an_interval_endpoint_never_refuses() {
    let (addr, log) = vast().await;
    let client = PoliteClient::new(&PoliteLayer::new(), addr);
    let started = Instant::now();
    for id in 0..4 {
        let o = client
            .call(Method::GET, &format!("/api/v0/instances/{id}/"), &[])
            .await;
        assert_eq!(
            (o.status, o.report.attempts()),
            (StatusCode::OK, 1),
            "{o:?}"
        );
    }
    // X-RateLimit-Remaining: 0 after each call held the endpoint for its reset.
    assert_eq!(log.refusals(), 0, "{:?}", log.answers());
    assert!(started.elapsed() >= Duration::from_secs(3));
}

/// A burst limit of 2 per second (fixed window) per client IP, its headers in `style`.
async fn burst_server(style: HeaderStyle, reset: ResetFormat) -> (std::net::SocketAddr, Log) {
    let limiter = RateLimitLayer::builder()
        .limit(
            Limit::per_second("burst", 2)
                .algorithm(Algorithm::FixedWindow)
                .key(KeyPart::client_ip()),
        )
        .header_style(style)
        .reset_format(reset)
        .build()
        .unwrap();
    serve(
        Router::new()
            .route("/items", get(|| async { "[]" }))
            .layer(limiter),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_learned_pacing_a_loop_sees_no_429_after_the_first() {
    let run = |style, reset| async move {
        let (addr, log) = burst_server(style, reset).await;
        // Someone else (a client without the layer) spends the window first.
        let raw = PoliteClient::new(
            &PoliteLayer::new().backoff(Backoff::vast_sdk().retries(0)),
            addr,
        );
        for _ in 0..2 {
            assert_eq!(
                raw.call(Method::GET, "/items", &[]).await.status,
                StatusCode::OK
            );
        }
        let client = PoliteClient::new(&PoliteLayer::new().backoff(Backoff::vast_sdk()), addr);
        let mut attempts = Vec::new();
        for _ in 0..6 {
            let o = client.call(Method::GET, "/items", &[]).await;
            assert_eq!(o.status, StatusCode::OK, "{style:?} {reset:?}: {o:?}");
            attempts.push(o.report.attempts());
        }
        // The first call met the spent window (unless a new window began in between) and
        // waited its Retry-After; the learned holds kept every later one inside the limit.
        assert!(attempts[0] <= 2, "{style:?} {reset:?}: {attempts:?}");
        assert!(
            attempts[1..].iter().all(|&a| a == 1),
            "{style:?} {reset:?}: {attempts:?}"
        );
        let refusals = log.refusals();
        assert_eq!(
            refusals,
            attempts[0] as usize - 1,
            "{style:?} {reset:?}: {:?}",
            log.answers()
        );
        assert_retries_waited(&log);
    };
    tokio::join!(
        run(HeaderStyle::XRateLimit, ResetFormat::DeltaSeconds),
        run(HeaderStyle::XRateLimit, ResetFormat::UnixTime),
        run(HeaderStyle::Ietf, ResetFormat::DeltaSeconds),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_retried_only_with_an_idempotency_key() {
    let (addr, log) = vast().await;
    // Learned pacing off, so that the second POST meets the interval.
    let layer = PoliteLayer::new()
        .backoff(Backoff::vast_sdk())
        .learn_pacing(false);
    let client = PoliteClient::new(&layer, addr);
    let post = |headers: &'static [(&'static str, &'static str)]| {
        let client = client.clone();
        async move { client.call(Method::POST, "/api/v0/bundles/", headers).await }
    };
    assert_eq!(post(&[]).await.status, StatusCode::OK);
    let bare = post(&[]).await;
    assert_eq!(bare.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(bare.report.attempts(), 1);
    assert_eq!(bare.report.waited(), Duration::ZERO);

    let keyed = post(&[("idempotency-key", "order-1")]).await;
    assert_eq!((keyed.status, keyed.report.attempts()), (StatusCode::OK, 2));

    let generated = PoliteClient::new(&layer.clone().idempotency_keys(true), addr);
    let o = generated.call(Method::POST, "/api/v0/bundles/", &[]).await;
    assert_eq!((o.status, o.report.attempts()), (StatusCode::OK, 2));

    let answers = log.answers();
    let statuses: Vec<_> = answers.iter().map(|a| a.status.as_u16()).collect();
    assert_eq!(statuses, [200, 429, 429, 200, 429, 200]);
    assert_retry_waited(&answers, 2);
    assert_retry_waited(&answers, 4);
}
