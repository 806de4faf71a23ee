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

/// Limits of 10,000 and more are rendered once when the layer is built; a client with a quota
/// of its own is still told its own limit, never the one rendered for everybody else.
#[tokio::test]
async fn a_large_limit_rendered_at_build_is_reported_only_for_itself() {
    let client = serve(
        Limit::per_minute("per_key", 20_000)
            .key(api_key())
            .quota_for("enterprise-demo", Quota::per_minute(50_000).unwrap()),
    )
    .await;
    for (key, limit) in [
        (&b"enterprise-demo"[..], "50000"),
        (b"someone-else", "20000"),
    ] {
        let reply = client.send(Method::GET, "/", &[("x-api-key", key)]).await;
        assert_eq!(reply.header("x-ratelimit-limit"), Some(limit));
    }
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

/// A source of client quotas an operator edits while the server runs (in a fleet, Redis:
/// `tollgate_redis::RedisClientQuotas`, tested on real Redis in that crate).
#[derive(Clone, Default)]
struct OperatorTable(std::sync::Arc<std::sync::Mutex<Vec<tollgate::ClientQuota>>>);

impl tollgate::ClientQuotas for OperatorTable {
    type Error = std::convert::Infallible;

    async fn load(&self) -> Result<Vec<tollgate::ClientQuota>, Self::Error> {
        Ok(self.0.lock().unwrap().clone())
    }
}

/// Sends as `key` until its `X-RateLimit-Limit` is `want` (the refresh is 20 ms; 2 s at most).
async fn until_limit(client: &TestClient, key: &'static [u8], want: &str) {
    for _ in 0..100 {
        let reply = client.send(Method::GET, "/", &[("x-api-key", key)]).await;
        if reply.header("x-ratelimit-limit") == Some(want) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the limit never became {want}");
}

#[tokio::test]
async fn an_operators_client_quota_applies_at_runtime_and_wins_over_the_codes() {
    let table = OperatorTable::default();
    let layer = RateLimitLayer::builder()
        .limit(
            Limit::per_minute("per_key", 1000)
                .key(api_key())
                .quota_for("enterprise-demo", Quota::per_minute(5000).unwrap()),
        )
        .client_quotas(table.clone(), std::time::Duration::from_millis(20))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(layer.clone());
    let client = TestClient::new(serve_axum(app).await);
    until_limit(&client, b"enterprise-demo", "5000").await;

    let digest = |value| layer.client_digest("per_key", value).unwrap();
    let quota = |n| Quota::per_minute(n).unwrap();
    let entry = |value, n| tollgate::ClientQuota {
        rule: "per_key".into(),
        client: digest(value),
        quota: quota(n),
    };
    *table.0.lock().unwrap() = vec![entry("enterprise-demo", 9000), entry("trial", 10)];
    until_limit(&client, b"enterprise-demo", "9000").await;
    until_limit(&client, b"trial", "10").await;
    let other = client
        .send(Method::GET, "/", &[("x-api-key", b"someone")])
        .await;
    assert_eq!(other.header("x-ratelimit-limit"), Some("1000"));
    // Taken away: back to the quotas given in code.
    table.0.lock().unwrap().clear();
    until_limit(&client, b"enterprise-demo", "5000").await;
    until_limit(&client, b"trial", "1000").await;
    assert_eq!(layer.client_digest("no_such_limit", "x"), None);
}

#[test]
fn client_quotas_need_a_runtime_to_read_them() {
    let err = RateLimitLayer::builder()
        .limit(Limit::per_minute("per_key", 5).key(api_key()))
        .client_quotas(OperatorTable::default(), std::time::Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::ClientQuotas(_)), "{err}");
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
}
