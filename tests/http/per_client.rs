//! Quotas per customer through a real server: a client's own quota, a tier's, and what a
//! client cannot do to borrow one.

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use http::{HeaderName, Method, StatusCode};
use tollgate::{BuildError, KeyPart, Limit, Quota, RateLimitLayer, Tier};

use crate::support::{serve_axum, TestClient};

fn api_key() -> KeyPart {
    KeyPart::header(HeaderName::from_static("x-api-key"))
}

fn per_key() -> Limit {
    Limit::per_minute("per_key", 2)
        .key(api_key())
        .quota_for("enterprise-demo", Quota::per_minute(5).unwrap())
        .tier("pro", Quota::per_minute(3).unwrap())
}

/// The test's auth: the plan comes from a header (a real app reads it from its token store).
async fn auth(mut req: Request, next: Next) -> Response {
    if let Some(plan) = req
        .headers()
        .get("x-test-plan")
        .and_then(|v| v.to_str().ok())
    {
        let tier = Tier::new(plan);
        req.extensions_mut().insert(tier);
    }
    next.run(req).await
}

async fn serve(limit: Limit) -> TestClient {
    let layer = RateLimitLayer::builder().limit(limit).build().unwrap();
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(layer)
        .layer(middleware::from_fn(auth));
    TestClient::new(serve_axum(app).await)
}

/// The `X-RateLimit-Limit` of each reply until the first 429 (included), and how many passed.
async fn run(client: &TestClient, headers: &[(&str, &[u8])]) -> (Vec<String>, usize) {
    let mut limits = Vec::new();
    for passed in 0..20 {
        let reply = client.send(Method::GET, "/", headers).await;
        limits.push(reply.header("x-ratelimit-limit").unwrap_or("-").to_owned());
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            return (limits, passed);
        }
    }
    panic!("never limited: {limits:?}");
}

#[tokio::test]
async fn a_client_with_its_own_quota_gets_it_and_its_headers_say_so() {
    let client = serve(per_key()).await;
    let (limits, passed) = run(&client, &[("x-api-key", b"enterprise-demo")]).await;
    assert_eq!(passed, 5);
    assert!(limits.iter().all(|l| l == "5"), "{limits:?}");
    let (limits, passed) = run(&client, &[("x-api-key", b"someone-else")]).await;
    assert_eq!((passed, limits[0].as_str()), (2, "2"));
}

#[tokio::test]
async fn a_tier_applies_its_quota_and_a_client_quota_wins_over_it() {
    let client = serve(per_key()).await;
    let pro = [("x-api-key", &b"pro-customer"[..]), ("x-test-plan", b"pro")];
    let (limits, passed) = run(&client, &pro).await;
    assert_eq!((passed, limits[0].as_str()), (3, "3"));
    // An unknown tier is the limit's own quota.
    let gold = [
        ("x-api-key", &b"gold-customer"[..]),
        ("x-test-plan", b"gold"),
    ];
    assert_eq!(run(&client, &gold).await.1, 2);
    // The client's own quota beats its tier's.
    let both = [
        ("x-api-key", &b"enterprise-demo"[..]),
        ("x-test-plan", b"pro"),
    ];
    assert_eq!(run(&client, &both).await.1, 5);
}

#[tokio::test]
async fn sending_the_favoured_key_beside_ones_own_borrows_nothing() {
    let client = serve(per_key()).await;
    let mixed = [
        ("x-api-key", &b"enterprise-demo"[..]),
        ("x-api-key", b"attacker"),
    ];
    let (limits, passed) = run(&client, &mixed).await;
    assert_eq!((passed, limits[0].as_str()), (2, "2"));
    // ...and the favoured client's bucket was not touched.
    let (_, passed) = run(&client, &[("x-api-key", b"enterprise-demo")]).await;
    assert_eq!(passed, 5);
}

#[test]
fn client_quotas_need_one_key_part_and_quotas_that_fit_the_cost() {
    let two_parts = Limit::per_minute("two", 5)
        .key(api_key())
        .key(KeyPart::client_ip())
        .quota_for("k", Quota::per_minute(50).unwrap());
    let err = RateLimitLayer::builder()
        .limit(two_parts)
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, BuildError::QuotaFor { limit, .. } if limit == "two"),
        "{err}"
    );
    assert!(err.to_string().contains("exactly one part"), "{err}");

    let costly = Limit::per_minute("costly", 10)
        .cost(5)
        .key(api_key())
        .tier("tiny", Quota::per_minute(2).unwrap());
    let err = RateLimitLayer::builder().limit(costly).build().unwrap_err();
    assert!(err.to_string().contains("costly"), "{err}");

    let secret_in_debug = format!("{:?}", per_key());
    assert!(
        !secret_in_debug.contains("enterprise-demo"),
        "{secret_in_debug}"
    );
}
