//! The VMArea preset end to end through axum: stacked buckets, exact bodies, idempotency.

use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use http::{Method, StatusCode};
use tollgate::core::{ManualClock, MemoryStore};
use tollgate::presets::vmarea::VmArea;
use tollgate::RateLimitLayer;

use crate::support::{fake_auth, manual_store, serve_axum, TestClient};

fn app(limiter: RateLimitLayer<MemoryStore<ManualClock>>) -> Router {
    Router::new()
        .route("/auth/login", post(|| async { "logged in" }))
        .route(
            "/api/public/v1/vms",
            get(|| async { "[]" }).post(|| async { "created" }),
        )
        .route("/api/public/v1/disks", post(|| async { "created" }))
        .route("/api/other", get(|| async { "other" }))
        .layer(limiter)
        .layer(axum::middleware::from_fn(fake_auth))
}

async fn start(
    preset: VmArea,
    offset: Duration,
) -> (
    TestClient,
    ManualClock,
    RateLimitLayer<MemoryStore<ManualClock>>,
) {
    let (store, clock) = manual_store(offset);
    let limiter = preset.builder().store(store).build().unwrap();
    let addr = serve_axum(app(limiter.clone())).await;
    (TestClient::new(addr), clock, limiter)
}

const KEY_A: (&str, &[u8]) = ("x-api-key", b"key-a");
const KEY_B: (&str, &[u8]) = ("x-api-key", b"key-b");

#[tokio::test]
async fn token_bucket_is_600_per_minute_with_the_exact_429() {
    // 18 s into the minute: the window resets in 42 s.
    let (client, clock, limiter) = start(VmArea::new(), Duration::from_secs(18)).await;
    for i in 0..600u64 {
        let reply = client
            .send(Method::GET, "/api/public/v1/vms", &[KEY_A])
            .await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}");
        assert_eq!(reply.text(), "[]");
        assert_eq!(reply.header("x-ratelimit-limit"), Some("600"));
        assert_eq!(
            reply.header("x-ratelimit-remaining"),
            Some((599 - i).to_string().as_str())
        );
        assert_eq!(reply.header("x-ratelimit-reset"), Some("42"));
        assert_eq!(reply.header("retry-after"), None);
    }
    let denied = client
        .send(Method::GET, "/api/public/v1/vms", &[KEY_A])
        .await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        denied.text(),
        r#"{"success": false, "error": "Rate limit exceeded for this API token: 600 requests per minute. Retry after 42."}"#
    );
    assert_eq!(denied.header("content-type"), Some("application/json"));
    assert_eq!(denied.header("retry-after"), Some("42"));
    assert_eq!(denied.header("x-ratelimit-limit"), Some("600"));
    assert_eq!(denied.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(denied.header("x-ratelimit-reset"), Some("42"));

    // Another token has its own bucket.
    let other = client
        .send(Method::GET, "/api/public/v1/vms", &[KEY_B])
        .await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.header("x-ratelimit-remaining"), Some("599"));

    // Waiting exactly Retry-After is enough.
    clock.advance(Duration::from_secs(denied.retry_after()));
    let again = client
        .send(Method::GET, "/api/public/v1/vms", &[KEY_A])
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.header("x-ratelimit-remaining"), Some("599"));
    assert_eq!(again.header("x-ratelimit-reset"), Some("60"));

    let metrics = limiter.metrics();
    let per_token = metrics.limit("per_token").unwrap();
    assert_eq!((per_token.allowed, per_token.denied), (602, 1));
    assert_eq!(metrics.limit("per_ip").unwrap().allowed, 0);
}

#[tokio::test]
async fn ip_bucket_catches_unauthenticated_traffic_with_the_exact_429() {
    let (client, clock, _) = start(VmArea::new(), Duration::from_secs(53)).await;
    for i in 0..100u64 {
        let reply = client.send(Method::POST, "/auth/login", &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}");
        assert_eq!(reply.header("x-ratelimit-limit"), Some("100"));
        assert_eq!(reply.header("x-ratelimit-reset"), Some("7"));
    }
    let denied = client.send(Method::POST, "/auth/login", &[]).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    let n = denied.retry_after();
    assert_eq!(n, 7);
    assert_eq!(
        denied.text(),
        format!(
            r#"{{"success": false, "error": "Rate limit exceeded for this IP address: 100 requests per minute. Retry after {n}."}}"#
        )
    );
    // Unauthenticated requests to the public API share the per-IP bucket.
    let api = client.get("/api/public/v1/vms").await;
    assert_eq!(api.status, StatusCode::TOO_MANY_REQUESTS);

    // Authenticated traffic from the same address is not penalised (the default reading).
    let authed = client
        .send(Method::GET, "/api/public/v1/vms", &[KEY_A])
        .await;
    assert_eq!(authed.status, StatusCode::OK);
    assert_eq!(authed.header("x-ratelimit-limit"), Some("600"));

    clock.advance(Duration::from_secs(n));
    assert_eq!(
        client.send(Method::POST, "/auth/login", &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn default_mode_does_not_charge_the_ip_bucket_for_tokens() {
    let (client, _clock, limiter) = start(VmArea::new(), Duration::ZERO).await;
    // Far more authenticated requests than the per-IP limit...
    for _ in 0..150 {
        let reply = client
            .send(Method::GET, "/api/public/v1/vms", &[KEY_A])
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    // ...leave the per-IP bucket untouched.
    let anonymous = client.send(Method::POST, "/auth/login", &[]).await;
    assert_eq!(anonymous.status, StatusCode::OK);
    assert_eq!(anonymous.header("x-ratelimit-remaining"), Some("99"));
    // Authenticated requests outside the public API carry no limit at all.
    let other = client.send(Method::GET, "/api/other", &[KEY_A]).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.header("x-ratelimit-limit"), None);
    let metrics = limiter.metrics();
    assert_eq!(metrics.limit("per_token").unwrap().allowed, 150);
    assert_eq!(metrics.limit("per_ip").unwrap().allowed, 1);
}

#[tokio::test]
async fn strict_mode_applies_both_buckets_to_every_request() {
    let (client, _clock, _) = start(VmArea::new().strict(true), Duration::from_secs(30)).await;
    for i in 0..100u64 {
        let reply = client
            .send(Method::GET, "/api/public/v1/vms", &[KEY_A])
            .await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}");
        // The most restrictive bucket is reported: the per-IP one.
        assert_eq!(reply.header("x-ratelimit-limit"), Some("100"));
        assert_eq!(
            reply.header("x-ratelimit-remaining"),
            Some((99 - i).to_string().as_str())
        );
    }
    let denied = client
        .send(Method::GET, "/api/public/v1/vms", &[KEY_B])
        .await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        denied.text(),
        r#"{"success": false, "error": "Rate limit exceeded for this IP address: 100 requests per minute. Retry after 30."}"#
    );
}

#[tokio::test]
async fn a_request_refused_by_one_bucket_charges_no_other() {
    let (store, _clock) = manual_store(Duration::ZERO);
    let limiter = VmArea::new()
        .strict(true)
        .per_ip(2)
        .builder()
        .store(store)
        .header_style(tollgate::HeaderStyle::Both)
        .build()
        .unwrap();
    let client = TestClient::new(serve_axum(app(limiter)).await);
    for _ in 0..2 {
        let ok = client
            .send(Method::GET, "/api/public/v1/vms", &[KEY_A])
            .await;
        assert_eq!(ok.status, StatusCode::OK);
    }
    // Refused by the per-IP bucket again and again, key B's token bucket stays whole: each
    // time it reports what one request would leave (599), never less.
    for _ in 0..3 {
        let denied = client
            .send(Method::GET, "/api/public/v1/vms", &[KEY_B])
            .await;
        assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            denied.header("ratelimit-policy"),
            Some(r#""per_token";q=600;w=60, "per_ip";q=100;w=60"#.replace("q=100", "q=2").as_str())
        );
        assert_eq!(
            denied.header("ratelimit"),
            Some(r#""per_token";r=599;t=60, "per_ip";r=0;t=60"#)
        );
        assert_eq!(denied.header("x-ratelimit-limit"), Some("2"));
    }
}

#[tokio::test]
async fn idempotent_retries_do_not_burn_quota_up_to_the_cap() {
    let (client, _clock, limiter) = start(VmArea::new(), Duration::ZERO).await;
    let idem: (&str, &[u8]) = ("idempotency-key", b"create-vm-1");
    let first = client
        .send(Method::POST, "/api/public/v1/vms", &[KEY_A, idem])
        .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("x-ratelimit-remaining"), Some("599"));
    // Five free replays...
    for _ in 0..5 {
        let replay = client
            .send(Method::POST, "/api/public/v1/vms", &[KEY_A, idem])
            .await;
        assert_eq!(replay.status, StatusCode::OK);
        assert_eq!(replay.header("x-ratelimit-remaining"), Some("599"));
    }
    // ...then it is charged like any request.
    let charged = client
        .send(Method::POST, "/api/public/v1/vms", &[KEY_A, idem])
        .await;
    assert_eq!(charged.header("x-ratelimit-remaining"), Some("598"));
    // The same idempotency key from another identity is charged.
    let other = client
        .send(Method::POST, "/api/public/v1/vms", &[KEY_B, idem])
        .await;
    assert_eq!(other.header("x-ratelimit-remaining"), Some("599"));
    let other = client
        .send(Method::POST, "/api/public/v1/vms", &[KEY_B, idem])
        .await;
    assert_eq!(other.header("x-ratelimit-remaining"), Some("599"));
    // A fresh key is charged.
    let fresh = client
        .send(
            Method::POST,
            "/api/public/v1/vms",
            &[KEY_A, ("idempotency-key", b"create-vm-2")],
        )
        .await;
    assert_eq!(fresh.header("x-ratelimit-remaining"), Some("597"));
    assert_eq!(limiter.metrics().replayed, 6);
}

#[tokio::test]
async fn a_replay_passes_even_when_the_bucket_is_empty() {
    let (client, _clock, _) = start(VmArea::new().per_token(1), Duration::ZERO).await;
    let idem: (&str, &[u8]) = ("idempotency-key", b"k");
    let first = client
        .send(Method::POST, "/api/public/v1/vms", &[KEY_A, idem])
        .await;
    assert_eq!(first.status, StatusCode::OK);
    let plain = client
        .send(Method::POST, "/api/public/v1/vms", &[KEY_A])
        .await;
    assert_eq!(plain.status, StatusCode::TOO_MANY_REQUESTS);
    let replay = client
        .send(Method::POST, "/api/public/v1/vms", &[KEY_A, idem])
        .await;
    assert_eq!(replay.status, StatusCode::OK);
}

/// The attack of issue 8: one address logs in with a fresh Idempotency-Key per attempt and
/// replays each key five times. The per-IP bucket does not honour replays, so it admits exactly
/// its limit, not six times it.
#[tokio::test]
async fn idempotency_keys_never_get_logins_past_the_per_ip_cap() {
    let (client, _clock, limiter) = start(VmArea::new().per_ip(10), Duration::ZERO).await;
    let mut admitted = 0;
    for attempt in 0..30 {
        let key = format!("login-{attempt}");
        for _ in 0..6 {
            let reply = client
                .send(
                    Method::POST,
                    "/auth/login",
                    &[("idempotency-key", key.as_bytes())],
                )
                .await;
            if reply.status == StatusCode::OK {
                admitted += 1;
            } else {
                assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
            }
        }
    }
    assert_eq!(admitted, 10);
    assert_eq!(limiter.metrics().replayed, 0);
}

/// A charged key buys nothing on another method or another route: the replay is the same
/// request or it is charged.
#[tokio::test]
async fn a_charged_idempotency_key_is_free_only_on_its_own_method_and_route() {
    let (client, _clock, limiter) = start(VmArea::new(), Duration::ZERO).await;
    let idem: (&str, &[u8]) = ("idempotency-key", b"k");
    let remaining = |reply: &crate::support::Reply| {
        assert_eq!(reply.status, StatusCode::OK);
        reply.header("x-ratelimit-remaining").unwrap().to_owned()
    };
    let first = client
        .send(Method::POST, "/api/public/v1/vms", &[KEY_A, idem])
        .await;
    assert_eq!(remaining(&first), "599");
    // Another method on the same route: charged (and a GET is never a free replay).
    let get = client
        .send(Method::GET, "/api/public/v1/vms", &[KEY_A, idem])
        .await;
    assert_eq!(remaining(&get), "598");
    let get = client
        .send(Method::GET, "/api/public/v1/vms", &[KEY_A, idem])
        .await;
    assert_eq!(remaining(&get), "597");
    // Another route: charged, and recorded for that route.
    let disks = client
        .send(Method::POST, "/api/public/v1/disks", &[KEY_A, idem])
        .await;
    assert_eq!(remaining(&disks), "596");
    // The original request, repeated: free.
    let replay = client
        .send(Method::POST, "/api/public/v1/vms", &[KEY_A, idem])
        .await;
    assert_eq!(remaining(&replay), "596");
    let replay = client
        .send(Method::POST, "/api/public/v1/disks", &[KEY_A, idem])
        .await;
    assert_eq!(remaining(&replay), "596");
    assert_eq!(limiter.metrics().replayed, 2);
}

/// In strict mode both buckets apply: a replay passes the per-token bucket free, and the
/// per-IP bucket charges it like any request.
#[tokio::test]
async fn in_strict_mode_the_per_ip_bucket_charges_replays() {
    let (client, _clock, _) = start(VmArea::new().strict(true).per_ip(3), Duration::ZERO).await;
    let idem: (&str, &[u8]) = ("idempotency-key", b"k");
    for (n, want_ip) in [(1, "2"), (2, "1"), (3, "0")] {
        let reply = client
            .send(Method::POST, "/api/public/v1/vms", &[KEY_A, idem])
            .await;
        assert_eq!(reply.status, StatusCode::OK, "request {n}");
        // The per-IP bucket binds (fewest remaining).
        assert_eq!(reply.header("x-ratelimit-remaining"), Some(want_ip));
    }
    let denied = client
        .send(Method::POST, "/api/public/v1/vms", &[KEY_A, idem])
        .await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(denied.text().contains("IP address"), "{}", denied.text());
}

mod replay_invariant {
    //! For any sequence of requests from one client, whatever Idempotency-Keys they carry, a
    //! bucket outside the replay scope admits at most its limit per window.

    use std::net::SocketAddr;

    use axum::extract::ConnectInfo;
    use http::{Method, Request, StatusCode};
    use proptest::prelude::*;
    use tower::ServiceExt;

    use super::{app, VmArea};
    use crate::support::manual_store;

    #[derive(Debug, Clone)]
    struct Attempt {
        method: Method,
        path: &'static str,
        token: bool,
        key: Option<u8>,
    }

    fn attempt() -> impl Strategy<Value = Attempt> {
        (
            prop_oneof![Just(Method::POST), Just(Method::GET), Just(Method::PUT)],
            prop_oneof![
                Just("/auth/login"),
                Just("/api/public/v1/vms"),
                Just("/api/public/v1/disks"),
                Just("/api/other"),
            ],
            any::<bool>(),
            proptest::option::of(0u8..4),
        )
            .prop_map(|(method, path, token, key)| Attempt {
                method,
                path,
                token,
                key,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn the_per_ip_bucket_admits_at_most_its_limit_whatever_the_keys(
            strict in any::<bool>(),
            attempts in proptest::collection::vec(attempt(), 1..80),
        ) {
            const PER_IP: usize = 5;
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let admitted = runtime.block_on(async {
                let (store, _clock) = manual_store(std::time::Duration::ZERO);
                let limiter = VmArea::new()
                    .strict(strict)
                    .per_ip(PER_IP as u64)
                    .builder()
                    .store(store)
                    .build()
                    .unwrap();
                let app = app(limiter);
                let peer: SocketAddr = "203.0.113.9:4000".parse().unwrap();
                let mut admitted = 0;
                for a in &attempts {
                    let mut req = Request::builder().method(a.method.clone()).uri(a.path);
                    if a.token {
                        req = req.header("x-api-key", "key-a");
                    }
                    if let Some(k) = a.key {
                        req = req.header("idempotency-key", format!("k{k}"));
                    }
                    let mut req = req.body(axum::body::Body::empty()).unwrap();
                    req.extensions_mut().insert(ConnectInfo(peer));
                    let status = app.clone().oneshot(req).await.unwrap().status();
                    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR);
                    // The per-IP bucket applies to every request in strict mode, else to those
                    // without a token.
                    let per_ip_applies = strict || !a.token;
                    if status != StatusCode::TOO_MANY_REQUESTS && per_ip_applies {
                        admitted += 1;
                    }
                }
                admitted
            });
            prop_assert!(admitted <= PER_IP, "{admitted} admitted through a per-IP cap of {PER_IP}");
        }
    }
}

mod replay_bodies {
    //! With `Idempotency::body`, a replay must repeat the body too.

    use axum::routing::post;
    use axum::Router;
    use http::{Method, StatusCode};
    use tollgate::core::{Quota, Rule};
    use tollgate::{Idempotency, KeyPart, Limit, RateLimitLayer};

    use crate::support::{raw_status_line, serve_axum, Reply, TestClient};

    const TOKEN: (&str, &[u8]) = ("authorization", b"Bearer t");
    const KEY: (&str, &[u8]) = ("idempotency-key", b"k");

    async fn start(limit: u64, mount_body_layer: bool) -> TestClient {
        let idempotency = Idempotency::new().body(16);
        let limiter = RateLimitLayer::builder()
            .limit(
                Limit::new(
                    Rule::builder("per_token", Quota::per_minute(limit).unwrap())
                        .honour_replays(true)
                        .build()
                        .unwrap(),
                )
                .key(KeyPart::bearer_token()),
            )
            .idempotency(idempotency.clone())
            .build()
            .unwrap();
        let app = Router::new()
            .route("/vms", post(|body: String| async move { body }))
            .layer(limiter);
        let app = if mount_body_layer {
            app.layer(idempotency.body_layer())
        } else {
            app
        };
        TestClient::new(serve_axum(app).await)
    }

    fn remaining(reply: &Reply) -> &str {
        reply.header("x-ratelimit-remaining").unwrap()
    }

    #[tokio::test]
    async fn a_replay_is_free_only_with_the_same_body_and_the_body_arrives_intact() {
        let client = start(10, true).await;
        let post =
            |body: &'static [u8]| client.send_body(Method::POST, "/vms", &[TOKEN, KEY], body);
        let first = post(b"{\"size\": 1}").await;
        assert_eq!(
            (first.status, first.text()),
            (StatusCode::OK, "{\"size\": 1}")
        );
        assert_eq!(remaining(&first), "9");
        let replay = post(b"{\"size\": 1}").await;
        assert_eq!((replay.text(), remaining(&replay)), ("{\"size\": 1}", "9"));
        // Another body under the same key is another request: charged.
        let other = post(b"{\"size\": 2}").await;
        assert_eq!((other.text(), remaining(&other)), ("{\"size\": 2}", "8"));
        // Over the 16-byte bound: not read, charged, passed on whole.
        let long = post(b"{\"size\": 1, \"pad\": 0}").await;
        assert_eq!(
            (long.text(), remaining(&long)),
            ("{\"size\": 1, \"pad\": 0}", "7")
        );
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_is_charged_and_passed_on() {
        let client = start(2, true).await;
        let first = client
            .send_body(Method::POST, "/vms", &[TOKEN, KEY], b"abc")
            .await;
        assert_eq!(remaining(&first), "1");
        // The same bytes, chunked: no known length, so no free replay.
        let chunked =
            b"POST /vms HTTP/1.1\r\nhost: x\r\nauthorization: Bearer t\r\nidempotency-key: k\r\n\
            transfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(
            raw_status_line(client.addr(), chunked).await,
            "HTTP/1.1 200 OK"
        );
        assert_eq!(
            raw_status_line(client.addr(), chunked).await,
            "HTTP/1.1 429 Too Many Requests"
        );
    }

    #[tokio::test]
    async fn without_the_body_layer_no_replay_is_free() {
        let client = start(10, false).await;
        for want in ["9", "8", "7"] {
            let reply = client
                .send_body(Method::POST, "/vms", &[TOKEN, KEY], b"abc")
                .await;
            assert_eq!((reply.status, remaining(&reply)), (StatusCode::OK, want));
        }
    }
}
