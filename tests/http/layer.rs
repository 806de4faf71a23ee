//! The layer's general behaviour: client addresses, bad input, failures, shadow rules, header
//! options, custom bodies.

use std::convert::Infallible;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::{HeaderName, Method, StatusCode};
use tollgate::{Check, ManualClock, MemoryStore, Outcome, Quota, Replay, Rule, Store};
use tollgate::{
    Denial, ForwardedHeader, HeaderStyle, KeyPart, Limit, RateLimitLayer, ResetFormat, Scope,
};

use crate::support::{
    manual_store, raw_status_line, serve_axum, serve_axum_without_peer, BrokenStore, Headers,
    TestClient,
};

fn rule(name: &str, quota: Quota) -> Rule {
    Rule::builder(name, quota).build().unwrap()
}

fn per_ip(limit: u64) -> Limit {
    Limit::new(rule("per_ip", Quota::per_minute(limit).unwrap())).key(KeyPart::client_ip())
}

fn hello(limiter: RateLimitLayer<impl Store>) -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route("/search", get(|| async { "results" }))
        .layer(limiter)
}

#[tokio::test]
async fn spoofed_forwarded_for_from_an_untrusted_peer_keeps_its_bucket() {
    let limiter = RateLimitLayer::builder().limit(per_ip(2)).build().unwrap();
    let client = TestClient::new(serve_axum(hello(limiter.clone())).await);
    let spoof = |ip: &'static [u8]| [("x-forwarded-for", ip)];
    assert_eq!(
        client
            .send(Method::GET, "/", &spoof(b"1.1.1.1"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        client
            .send(Method::GET, "/", &spoof(b"2.2.2.2"))
            .await
            .status,
        StatusCode::OK
    );
    for header in ["x-forwarded-for", "forwarded", "x-real-ip"] {
        let reply = client
            .send(Method::GET, "/", &[(header, b"for=3.3.3.3, 3.3.3.3")])
            .await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{header}");
    }
    assert_eq!(limiter.store().len(), 1, "one bucket: the peer's");
}

#[tokio::test]
async fn a_trusted_proxy_forwards_the_rightmost_untrusted_address() {
    for (header, kind, fmt) in [
        (
            "x-forwarded-for",
            ForwardedHeader::XForwardedFor,
            "{spoof}, {client}",
        ),
        (
            "forwarded",
            ForwardedHeader::Forwarded,
            "for={spoof}, for=\"{client}:4711\"",
        ),
    ] {
        let limiter = RateLimitLayer::builder()
            .limit(per_ip(1))
            .trusted_proxies(["127.0.0.0/8", "::1"])
            .forwarded_header(kind)
            .build()
            .unwrap();
        let client = TestClient::new(serve_axum(hello(limiter)).await);
        let value = |spoof: &str, client: &str| {
            fmt.replace("{spoof}", spoof)
                .replace("{client}", client)
                .into_bytes()
        };
        let send = |v: Vec<u8>| {
            let client = client.clone();
            async move { client.send(Method::GET, "/", &[(header, &v)]).await.status }
        };
        assert_eq!(send(value("9.9.9.9", "203.0.113.1")).await, StatusCode::OK);
        // The client-written (leftmost) part does not choose the bucket.
        assert_eq!(
            send(value("8.8.8.8", "203.0.113.1")).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            send(value("9.9.9.9", "203.0.113.2")).await,
            StatusCode::OK,
            "{header}"
        );
        // Garbage from the proxy: the proxy itself is the client.
        assert_eq!(send(b"not an address".to_vec()).await, StatusCode::OK);
        assert_eq!(send(b"[::1".to_vec()).await, StatusCode::TOO_MANY_REQUESTS);
    }
}

#[tokio::test]
async fn ipv6_clients_are_grouped_by_their_64() {
    let limiter = RateLimitLayer::builder()
        .limit(per_ip(1))
        .trusted_proxies(["127.0.0.1"])
        .build()
        .unwrap();
    let client = TestClient::new(serve_axum(hello(limiter)).await);
    let from = |ip: &'static str| {
        let client = client.clone();
        async move {
            client
                .send(Method::GET, "/", &[("x-forwarded-for", ip.as_bytes())])
                .await
                .status
        }
    };
    assert_eq!(from("2001:db8:1:2::1").await, StatusCode::OK);
    assert_eq!(
        from("2001:db8:1:2:ffff:ffff:ffff:9").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        from("[2001:db8:1:2::77]:443").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(from("2001:db8:1:3::1").await, StatusCode::OK);
    // IPv4 addresses stand alone, mapped or not.
    assert_eq!(from("192.0.2.1").await, StatusCode::OK);
    assert_eq!(
        from("::ffff:192.0.2.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(from("192.0.2.2").await, StatusCode::OK);
}

#[tokio::test]
async fn bad_input_gets_an_answer_and_no_per_byte_state() {
    let limiter = RateLimitLayer::builder()
        .trusted_proxies(["127.0.0.1"])
        .limit(
            Limit::new(rule("per_identity", Quota::per_minute(1000).unwrap()))
                .key(KeyPart::bearer_token().optional())
                .key(KeyPart::query("api_key").optional())
                .key(KeyPart::header(HeaderName::from_static("x-api-key")).optional())
                .key(KeyPart::client_ip()),
        )
        .build()
        .unwrap();
    let store = limiter.store().clone();
    let client = TestClient::new(serve_axum(hello(limiter)).await);
    // `http::Uri` stops at 64 KB: the biggest query a client can send through it.
    let big_a = format!("/?api_key={}", "a".repeat(60 * 1024));
    let big_b = format!("/?api_key={}", "%41".repeat(20 * 1024));
    let big_header = vec![b'k'; 100 * 1024];
    let cases: Vec<(String, Headers<'_>)> = vec![
        ("/".into(), vec![("authorization", b"Bearer \xff\xfe\x80")]),
        ("/".into(), vec![("authorization", b"\xffBearer")]),
        ("/".into(), vec![("authorization", b"Bearer")]),
        (big_a, vec![]),
        (big_b, vec![]),
        ("/".into(), vec![("x-api-key", &big_header)]),
        ("/?api_key=%zz%4%".into(), vec![]),
        ("/?api_key=%ff%00%FE".into(), vec![]),
        ("/?api_key&&=&api_key==".into(), vec![]),
        (
            "/".into(),
            vec![("x-forwarded-for", b",,, ,\xff, 999.1.1.1")],
        ),
        ("/".into(), vec![("x-forwarded-for", b"[::1]:99999")]),
        ("/".into(), vec![("forwarded", b"for=\"\\\";;,,=")]),
        ("/".into(), vec![("x-forwarded-for", &big_header)]),
    ];
    for (i, (path, headers)) in cases.iter().enumerate() {
        let reply = client.send(Method::GET, path, headers).await;
        assert_eq!(reply.status, StatusCode::OK, "case {i}");
        assert_eq!(reply.text(), "hello");
    }
    // One fixed-size key per distinct identity, whatever the sizes: the broken Authorization
    // headers and the garbage forwarding headers all fall back to "no part" and the proxy's
    // address, the bare request's identity. `?api_key&&=&api_key==` is the api_key "=": its
    // first copy is empty, and an empty copy does not make a repeated part absent.
    let identities = [
        "bearer \\xff\\xfe\\x80",
        "big api_key a",
        "big api_key %41",
        "big x-api-key",
        "api_key %zz%4%",
        "api_key %ff%00%FE",
        "api_key =",
        "no part (broken Authorization, garbage forwarding headers)",
    ];
    assert_eq!(store.len(), identities.len());

    // A 100 KB api_key cannot be a valid URI for the client library: send it raw. The server
    // answers (414 URI Too Long) before the layer is reached, and keeps serving.
    let raw = format!(
        "GET /?api_key={} HTTP/1.1\r\nhost: x\r\n\r\n",
        "k".repeat(100 * 1024)
    );
    let status = raw_status_line(client.addr(), raw.as_bytes()).await;
    assert!(status.starts_with("HTTP/1.1 4"), "{status}");
    assert_eq!(client.get("/").await.status, StatusCode::OK);
    assert_eq!(store.len(), identities.len());
}

#[tokio::test]
async fn a_missing_peer_address_is_a_clear_500_not_a_global_bucket() {
    let limiter = RateLimitLayer::builder()
        .limit(per_ip(100))
        .build()
        .unwrap();
    let client = TestClient::new(serve_axum_without_peer(hello(limiter.clone())).await);
    for _ in 0..2 {
        let reply = client.get("/").await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert!(reply
            .text()
            .starts_with(r#"{"success": false, "error": "rate limiter misconfigured: "#));
        assert!(reply
            .text()
            .contains("into_make_service_with_connect_info::<SocketAddr>()"));
    }
    assert_eq!(limiter.metrics().misconfigured, 2);
    assert!(limiter.store().is_empty());
}

#[tokio::test]
async fn a_store_error_is_a_503_with_a_json_body() {
    let limiter = RateLimitLayer::builder()
        .store(BrokenStore::<false>)
        .limit(per_ip(100))
        .build()
        .unwrap();
    let client = TestClient::new(serve_axum(hello(limiter.clone())).await);
    let reply = client.get("/").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.text(),
        r#"{"success": false, "error": "rate limiter unavailable"}"#
    );
    assert_eq!(limiter.metrics().limit("per_ip").unwrap().errors, 1);
}

/// A store that answers only after a real wait, as a networked store (Redis) does: the layer's
/// path for stores that do not answer at once.
#[derive(Clone)]
struct SlowStore(MemoryStore<ManualClock>);

impl Store for SlowStore {
    type Error = Infallible;

    async fn check(
        &self,
        checks: &[Check<'_>],
        replay: Option<&Replay>,
    ) -> Result<Outcome, Infallible> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.0.check(checks, replay).await
    }

    async fn peek(&self, checks: &[Check<'_>]) -> Result<Outcome, Infallible> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.0.peek(checks).await
    }
}

#[tokio::test]
async fn a_store_that_answers_later_admits_and_denies_the_same() {
    let (store, _clock) = manual_store(Duration::ZERO);
    let limiter = RateLimitLayer::builder()
        .store(SlowStore(store))
        .limit(per_ip(2))
        .build()
        .unwrap();
    let client = TestClient::new(serve_axum(hello(limiter)).await);
    for remaining in ["1", "0"] {
        let reply = client.get("/").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "hello");
        assert_eq!(reply.header("x-ratelimit-remaining"), Some(remaining));
    }
    let reply = client.get("/").await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(reply.retry_after() >= 1);
}

#[tokio::test]
async fn shadow_rules_are_counted_but_never_deny() {
    let (store, _clock) = manual_store(Duration::ZERO);
    let limiter = RateLimitLayer::builder()
        .store(store)
        .limit(
            Limit::new(
                Rule::builder("trial", Quota::per_minute(2).unwrap())
                    .shadow(true)
                    .build()
                    .unwrap(),
            )
            .key(KeyPart::client_ip()),
        )
        .limit(per_ip(100))
        .build()
        .unwrap();
    let client = TestClient::new(serve_axum(hello(limiter.clone())).await);
    for _ in 0..5 {
        let reply = client.get("/").await;
        assert_eq!(reply.status, StatusCode::OK);
        // Shadow rules never bind the reported figures.
        assert_eq!(reply.header("x-ratelimit-limit"), Some("100"));
    }
    let metrics = limiter.metrics();
    let trial = metrics.limit("trial").unwrap();
    assert_eq!(
        (trial.allowed, trial.denied, trial.shadow_denied),
        (2, 0, 3)
    );
    assert_eq!(metrics.limit("per_ip").unwrap().allowed, 5);
}

#[tokio::test]
async fn scopes_select_requests_by_path_and_method() {
    let limiter = RateLimitLayer::builder()
        .limit(
            Limit::new(rule("search", Quota::per_minute(1).unwrap()))
                .scope(Scope::all().path("/search").method(Method::GET))
                .key(KeyPart::client_ip()),
        )
        .build()
        .unwrap();
    let client = TestClient::new(serve_axum(hello(limiter)).await);
    assert_eq!(client.get("/search").await.status, StatusCode::OK);
    assert_eq!(
        client.get("/search").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let other = client.get("/").await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.header("x-ratelimit-limit"), None);
}

async fn with_options(
    configure: impl FnOnce(
        tollgate::RateLimitBuilder<MemoryStore<ManualClock>>,
    ) -> tollgate::RateLimitBuilder<MemoryStore<ManualClock>>,
) -> TestClient {
    let (store, _clock) = manual_store(Duration::from_secs(15));
    let builder = RateLimitLayer::builder().store(store).limit(
        Limit::new(
            Rule::builder("per_ip", Quota::per_minute(2).unwrap())
                .algorithm(tollgate::Algorithm::FixedWindow)
                .build()
                .unwrap(),
        )
        .key(KeyPart::client_ip()),
    );
    TestClient::new(serve_axum(hello(configure(builder).build().unwrap())).await)
}

#[tokio::test]
async fn ietf_fields_and_exposed_headers() {
    let client = with_options(|b| b.header_style(HeaderStyle::Ietf).expose_headers(true)).await;
    let reply = client.get("/").await;
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some(r#""per_ip";q=2;w=60"#)
    );
    assert_eq!(reply.header("ratelimit"), Some(r#""per_ip";r=1;t=45"#));
    assert_eq!(reply.header("x-ratelimit-limit"), None);
    assert_eq!(
        reply.header("access-control-expose-headers"),
        Some("ratelimit-policy, ratelimit, retry-after")
    );
    client.get("/").await;
    let denied = client.get("/").await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.header("ratelimit"), Some(r#""per_ip";r=0;t=45"#));
    assert_eq!(denied.header("retry-after"), Some("45"));
    assert_eq!(
        denied.header("access-control-expose-headers"),
        Some("ratelimit-policy, ratelimit, retry-after")
    );
}

#[tokio::test]
async fn hidden_headers_leave_only_retry_after() {
    let client = with_options(|b| b.header_style(HeaderStyle::Hidden)).await;
    let reply = client.get("/").await;
    assert!(reply
        .headers
        .keys()
        .all(|k| !k.as_str().contains("ratelimit")));
    client.get("/").await;
    let denied = client.get("/").await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.header("retry-after"), Some("45"));
    assert!(denied
        .headers
        .keys()
        .all(|k| !k.as_str().contains("ratelimit")));
}

#[tokio::test]
async fn reset_as_unix_time() {
    let client = with_options(|b| b.reset_format(ResetFormat::UnixTime)).await;
    let reply = client.get("/").await;
    let reset: u64 = reply.header("x-ratelimit-reset").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The system clock plus the 45 s the (manual) store reports.
    assert!((now + 45..=now + 47).contains(&reset), "{reset} vs {now}");
}

#[tokio::test]
async fn a_custom_429_builder_gets_the_denial() {
    let client = with_options(|b| {
        b.on_denied(|denial: &Denial<'_>| {
            let mut response = denial.json_bytes(format!(
                r#"{{"rule": "{}", "wait": {}, "path": "{}"}}"#,
                denial.rule().name(),
                denial.retry_after_secs(),
                denial.uri().path(),
            ));
            // Its own Retry-After wins over the layer's.
            response
                .headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("60"));
            response
        })
    })
    .await;
    client.get("/").await;
    client.get("/").await;
    let denied = client.get("/search").await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        denied.text(),
        r#"{"rule": "per_ip", "wait": 45, "path": "/search"}"#
    );
    assert_eq!(denied.header("retry-after"), Some("60"));
    assert_eq!(denied.header("x-ratelimit-remaining"), Some("0"));
}

#[tokio::test]
async fn default_429_body() {
    let client = with_options(|b| b).await;
    client.get("/").await;
    client.get("/").await;
    let denied = client.get("/").await;
    assert_eq!(
        denied.text(),
        r#"{"success": false, "error": "Rate limit exceeded. Retry after 45."}"#
    );
}

#[tokio::test]
async fn route_layer_and_matched_path() {
    let (store, _clock) = manual_store(Duration::ZERO);
    let limiter = RateLimitLayer::builder()
        .store(store)
        .limit(
            Limit::new(rule("per_route", Quota::per_minute(1).unwrap()))
                .key(KeyPart::route())
                .key(KeyPart::client_ip()),
        )
        .build()
        .unwrap();
    let app: Router = Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .route("/users/{id}", get(|| async { "user" }))
        .route_layer(limiter);
    let client = TestClient::new(serve_axum(app).await);
    assert_eq!(client.get("/items/1").await.status, StatusCode::OK);
    assert_eq!(
        client.get("/items/2").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(client.get("/users/1").await.status, StatusCode::OK);
}

#[test]
fn build_errors_are_clear() {
    let err = RateLimitLayer::builder()
        .trusted_proxies(["10.0.0.0/33"])
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("10.0.0.0/33"), "{err}");
    let err = RateLimitLayer::builder()
        .limit(per_ip(1))
        .limit(per_ip(2))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("unique"), "{err}");
    let err = RateLimitLayer::builder()
        .limit(per_ip(1).scope(Scope::all().path("api/*")))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("starts with '/'"), "{err}");
    let err = RateLimitLayer::builder()
        .ipv6_prefix(129)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("/129"), "{err}");
}

#[test]
fn layer_and_service_clones_are_cheap_and_shared() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<RateLimitLayer>();
    assert_traits::<tollgate::RateLimit<Router, MemoryStore>>();
    let layer = RateLimitLayer::builder().limit(per_ip(1)).build().unwrap();
    let clone = layer.clone();
    assert_eq!(layer.metrics(), clone.metrics());
    let _: Infallible;
}

/// A memory store whose answers are altered before the layer sees them: a store that answers
/// something other than the question. `peek` alters peeks (limits charged by the response are
/// peeked first), `check` alters checks and charges.
#[derive(Clone)]
struct TamperedStore {
    store: MemoryStore<ManualClock>,
    peek: fn(&mut Outcome),
    check: fn(&mut Outcome),
}

impl Store for TamperedStore {
    type Error = Infallible;

    async fn check(
        &self,
        checks: &[Check<'_>],
        replay: Option<&Replay>,
    ) -> Result<Outcome, Infallible> {
        let mut outcome = self.store.check(checks, replay).await?;
        (self.check)(&mut outcome);
        Ok(outcome)
    }

    async fn peek(&self, checks: &[Check<'_>]) -> Result<Outcome, Infallible> {
        let mut outcome = self.store.peek(checks).await?;
        (self.peek)(&mut outcome);
        Ok(outcome)
    }
}

/// An answer that does not fit the request (a decision missing, or a binding decision it did
/// not make) is not guessed at: the client gets a 503 and the limit counts an error.
#[tokio::test]
async fn a_store_answer_that_does_not_fit_the_request_is_a_503() {
    fn drop_one(outcome: &mut Outcome) {
        outcome.decisions.pop();
    }
    fn bind_past_the_end(outcome: &mut Outcome) {
        outcome.binding = Some(outcome.decisions.len());
    }
    let tampers = [
        ("a decision missing", drop_one as fn(&mut Outcome)),
        ("a binding decision out of range", bind_past_the_end),
    ];
    for (what, tamper) in tampers {
        let (store, _clock) = manual_store(Duration::ZERO);
        let limiter = RateLimitLayer::builder()
            .store(TamperedStore {
                store,
                peek: |_| {},
                check: tamper,
            })
            .limit(per_ip(100))
            .build()
            .unwrap();
        let client = TestClient::new(serve_axum(hello(limiter.clone())).await);
        let reply = client.get("/").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{what}");
        let per_ip = limiter.metrics().limit("per_ip").unwrap().errors;
        assert_eq!(per_ip, 1, "{what}");
    }
}

/// The same with a limit charged by the response beside one charged up front: a peek or a
/// charge that does not fit is a 503, never a guess (nor a panic); a charge the store's failure
/// policy answered is counted as degraded even when the peek was not.
#[tokio::test]
async fn a_peek_or_charge_that_does_not_fit_a_request_charged_by_its_response_is_a_503() {
    fn untouched(_: &mut Outcome) {}
    fn drop_one(outcome: &mut Outcome) {
        outcome.decisions.pop();
    }
    fn degraded(outcome: &mut Outcome) {
        outcome.degraded = true;
    }
    let layer_over = |peek, check| {
        let (store, _clock) = manual_store(Duration::ZERO);
        RateLimitLayer::builder()
            .store(TamperedStore { store, peek, check })
            .limit(per_ip(100))
            .limit(
                Limit::per_minute("failed_logins", 5)
                    .key(KeyPart::client_ip())
                    .charge_on([StatusCode::UNAUTHORIZED]),
            )
            .build()
            .unwrap()
    };
    let tampers = [
        (
            "a peek with a decision missing",
            drop_one as fn(&mut Outcome),
            untouched as fn(&mut Outcome),
        ),
        ("a charge with a decision missing", untouched, drop_one),
    ];
    for (what, peek, check) in tampers {
        let limiter = layer_over(peek, check);
        let client = TestClient::new(serve_axum(hello(limiter.clone())).await);
        let reply = client.get("/").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{what}");
        let per_ip = limiter.metrics().limit("per_ip").unwrap().clone();
        assert_eq!((per_ip.errors, per_ip.allowed), (1, 0), "{what}");
    }
    let limiter = layer_over(untouched, degraded);
    let client = TestClient::new(serve_axum(hello(limiter.clone())).await);
    assert_eq!(client.get("/").await.status, StatusCode::OK);
    let per_ip = limiter.metrics().limit("per_ip").unwrap().clone();
    assert_eq!((per_ip.degraded, per_ip.allowed), (1, 0));
}
