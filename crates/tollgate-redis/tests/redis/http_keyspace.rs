//! The whole keyspace after real HTTP traffic: the `tollgate` layer with the VMArea preset on a
//! Redis of its own, requests carrying raw tokens, api keys, IPs and Idempotency-Keys; then a
//! `SCAN` of the whole database must find exactly the keys the traffic explains, and no raw
//! identity in any key or value.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use http::{Method, StatusCode};
use tollgate::presets::vmarea::VmArea;
use tollgate::TokenId;
use tollgate_redis::RedisStore;
use tower::ServiceExt;

use crate::support::{scan_keys, TestRedis};

/// Raw identities, as a client sends them.
const API_KEYS: [&str; 3] = [
    "ak_live_7f3a9c2e51b84d6aa0e1",
    "sk-proj-Zm9vYmFyYmF6cXV4",
    "vmarea_3b9f0c6d8e2a41f7",
];
const IPS: [&str; 3] = ["203.0.113.77", "2001:db8::42", "198.51.100.7"];
const IDEMPOTENCY_KEYS: [&str; 2] = ["idem-5d41402abc4b2a76", "7c9e6679-7425-40de-944b"];
/// Sent along but not keyed on by the preset: they must not reach Redis either.
const BEARER: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0NzExIn0.c2lnbmF0dXJl";
const QUERY_API_KEY: &str = "qk_1c2d3e4f5a6b7c8d";

/// The app's auth layer: a non-empty `x-api-key` authenticates; the token id is the key with a
/// prefix (itself an identity: it must not reach Redis either). The counters' tests use it too.
pub(crate) async fn auth(mut req: Request, next: Next) -> Response {
    if let Some(key) = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
    {
        let id = TokenId(format!("tok_{key}"));
        req.extensions_mut().insert(id);
    }
    next.run(req).await
}

/// A request from `ip` with `headers`, as the server's connect info gives it.
pub(crate) fn request(method: Method, path: &str, ip: &str, headers: &[(&str, &str)]) -> Request {
    let mut req = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let mut req = req.body(Body::empty()).unwrap();
    let addr: std::net::IpAddr = ip.parse().unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(addr, 40_000)));
    req
}

#[tokio::test]
async fn http_traffic_leaves_exactly_its_keys_in_redis_and_no_raw_identity() {
    // A server of its own (never a shared REDIS_URL): the scan below sees every key there is.
    let redis = TestRedis::start_controllable().await;
    let store = RedisStore::connect(redis.url()).await.unwrap();
    let limiter = VmArea::new()
        .per_token(5)
        .per_ip(3)
        .builder()
        .store(store.clone())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/auth/login", post(|| async { "logged in" }))
        .route(
            "/api/public/v1/vms",
            get(|| async { "[]" }).post(|| async { "created" }),
        )
        .layer(limiter)
        .layer(axum::middleware::from_fn(auth));

    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut send = async |req: Request| {
        let status = app.clone().oneshot(req).await.unwrap().status();
        assert!(
            status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS,
            "{status}"
        );
        *statuses.entry(status.as_u16()).or_default() += 1;
    };
    let bearer = format!("Bearer {BEARER}");
    let vms = format!("/api/public/v1/vms?api_key={QUERY_API_KEY}");
    for (i, api_key) in API_KEYS.iter().enumerate() {
        let ip = IPS[i];
        let auth = [("x-api-key", *api_key), ("authorization", bearer.as_str())];
        // Reads: per-token only (the per-IP bucket skips authenticated requests).
        for _ in 0..2 {
            send(request(Method::GET, &vms, ip, &auth)).await;
        }
        // Writes with Idempotency-Keys, each sent twice (the second a free replay).
        for idem in IDEMPOTENCY_KEYS {
            let headers = [auth[0], auth[1], ("idempotency-key", idem)];
            for _ in 0..2 {
                send(request(Method::POST, &vms, ip, &headers)).await;
            }
        }
        // Logins without a token: per-IP, one over its limit.
        for _ in 0..4 {
            let headers = [("idempotency-key", IDEMPOTENCY_KEYS[0])];
            send(request(Method::POST, "/auth/login", ip, &headers)).await;
        }
    }
    // Per IP: 3 logins admitted and one denied; per token: 2 reads and 2 writes charged, 2
    // replays free: all admitted.
    assert_eq!(statuses.get(&429), Some(&3), "{statuses:?}");
    assert_eq!(statuses.get(&200), Some(&(3 * (2 + 4 + 3))), "{statuses:?}");

    let mut admin = redis.admin().await;
    let keys = scan_keys(&mut admin, "*").await;

    // Exactly: a per-token key per api key, a per-IP key per address that logged in, an
    // idempotency record per (token, Idempotency-Key) write; nothing for the logins' keys (the
    // per-IP bucket does not honour replays), nothing else at all.
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for key in &keys {
        let parts: Vec<&str> = key.split(':').collect();
        assert_eq!(parts.len(), 3, "unexpected key {key}");
        assert_eq!(parts[0], tollgate_redis::DEFAULT_PREFIX, "{key}");
        assert!(
            parts[2].len() == 32
                && parts[2]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{key}: a 32-hex-digit digest"
        );
        *by_kind.entry(parts[1]).or_default() += 1;
    }
    let expected = BTreeMap::from([
        ("per_ip", IPS.len()),
        ("per_token", API_KEYS.len()),
        ("~replay", API_KEYS.len() * IDEMPOTENCY_KEYS.len()),
    ]);
    assert_eq!(by_kind, expected, "{keys:#?}");

    let token_ids: Vec<String> = API_KEYS.iter().map(|k| format!("tok_{k}")).collect();
    let mut raw: Vec<&str> = API_KEYS
        .iter()
        .chain(&IPS)
        .chain(&IDEMPOTENCY_KEYS)
        .copied()
        .collect();
    raw.extend(token_ids.iter().map(String::as_str));
    raw.extend([BEARER, QUERY_API_KEY, "2001:0db8", "2001:db8"]);
    for key in &keys {
        let value: Vec<u8> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut admin)
            .await
            .unwrap();
        let text = String::from_utf8(value.clone()).unwrap_or_default();
        // A format tag, then decimal instants and counts only.
        let tag = if key.contains(":~replay:") {
            "r1:"
        } else {
            "f1:"
        };
        assert!(
            text.starts_with(tag)
                && text[3..]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b':' || b == b','),
            "{key} = {value:?}"
        );
        for secret in &raw {
            assert!(!key.contains(secret), "{secret} in key {key}");
            assert!(
                !value.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} in the value of {key}"
            );
        }
        let expiry: i64 = redis::cmd("PEXPIRETIME")
            .arg(key)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(expiry > 0, "{key} expires ({expiry})");
    }
}
