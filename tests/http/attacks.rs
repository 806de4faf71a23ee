//! Attacks, as a table: each row spends an attacker's bucket, then sends requests that try to
//! get out of it (spoofed or malformed forwarding headers, duplicated or re-encoded identity
//! parts, odd bytes, huge values, header and hop counts past every limit). Every attack must
//! land in the spent bucket: refused, never admitted, never a 5xx, and no new bucket in the
//! store. hyper refusing a request itself (431, 400) counts as refused.
//!
//! The server runs with a header-count limit well above hyper's default (100), so that
//! requests with hundreds of lines reach the layer instead of stopping at hyper, and behind a
//! guard that turns a panic anywhere in the service into a 500, so a panic fails the row.
//!
//! To add an attack, add a row (or a function returning rows) to [`table`].

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{Method, StatusCode};
use tollgate::core::{MemoryStore, Quota, Rule};
use tollgate::presets::vast::Vast;
use tollgate::{ForwardedHeader, Idempotency, KeyPart, Limit, RateLimitLayer};

use crate::support::TestClient;

/// One attack: the layer, the requests that spend the attacker's own bucket, and the requests
/// that try to get out of it.
struct Attack {
    name: &'static str,
    layer: RateLimitLayer<MemoryStore>,
    /// Admitted, in order; the last one spends the bucket.
    spend: Vec<Req>,
    /// Each must be refused (not 2xx, not 5xx) and leave the store's key count as it was.
    attacks: Vec<Req>,
}

/// A request: method, path and query, header lines in order.
#[derive(Clone)]
struct Req {
    method: Method,
    path: String,
    headers: Vec<(&'static str, Vec<u8>)>,
}

impl Req {
    fn get(path: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            path: path.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a header line (after those already there, even of the same name).
    fn header(mut self, name: &'static str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name, value.as_ref().to_vec()));
        self
    }

    /// Adds one line per value.
    fn lines<V: AsRef<[u8]>>(
        mut self,
        name: &'static str,
        values: impl IntoIterator<Item = V>,
    ) -> Self {
        for value in values {
            self = self.header(name, value);
        }
        self
    }

    fn describe(&self) -> String {
        let mut out = format!("{} {}", self.method, shorten(self.path.as_bytes()));
        for (name, value) in self.headers.iter().take(4) {
            out.push_str(&format!(" | {name}: {}", shorten(value)));
        }
        if self.headers.len() > 4 {
            out.push_str(&format!(" | ... {} lines", self.headers.len()));
        }
        out
    }
}

fn shorten(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(60) {
        Some((i, _)) => format!("{}... ({} bytes)", &text[..i], bytes.len()),
        None => text.into_owned(),
    }
}

/// The attacker's address as its proxy sees it.
const ATTACKER: &str = "203.0.113.9";
/// 100 KB of an API key.
fn huge() -> Vec<u8> {
    vec![b'k'; 100 * 1024]
}

fn one_per_minute(name: &str) -> Rule {
    Rule::builder(name, Quota::per_minute(1).unwrap())
        .build()
        .unwrap()
}

/// A layer with one limit of 1 request per minute keyed by `part`; behind a trusted proxy
/// (the test client's 127.0.0.1, and the 10/8 network) when `proxy` says which header it writes.
fn layer(part: KeyPart, proxy: Option<ForwardedHeader>) -> RateLimitLayer<MemoryStore> {
    let mut builder = RateLimitLayer::builder().limit(Limit::new(one_per_minute("row")).key(part));
    if let Some(header) = proxy {
        builder = builder
            .trusted_proxies(["127.0.0.1", "10.0.0.0/8"])
            .forwarded_header(header);
    }
    builder.build().unwrap()
}

/// Every attack.
fn table() -> Vec<Attack> {
    [
        spoofing_from_an_untrusted_peer(),
        spoofing_behind_a_trusted_proxy(),
        hop_counts(),
        duplicated_identity_parts(),
        odd_bytes_and_sizes(),
        identity_rotation(),
        idempotency_tricks(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn spoofing_from_an_untrusted_peer() -> Vec<Attack> {
    let attacks = [
        Req::get("/").header("x-forwarded-for", "1.1.1.1"),
        Req::get("/").header("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
        Req::get("/").lines("x-forwarded-for", ["1.1.1.1", "2.2.2.2"]),
        Req::get("/").header("forwarded", "for=1.1.1.1"),
        Req::get("/").header("forwarded", "for=\"[2001:db8::1]:80\""),
        Req::get("/").header("x-real-ip", "1.1.1.1"),
        Req::get("/").header("true-client-ip", "1.1.1.1"),
        Req::get("/").header("x-forwarded-for", "\""),
        Req::get("/").header("x-forwarded-for", "[::1"),
        Req::get("/").header("x-forwarded-for", b"\xff\xfe"),
        Req::get("/").header("forwarded", "for=9.9.9.9;x=\", for=1.1.1.1"),
    ];
    vec![Attack {
        name: "spoofed forwarding headers from an untrusted peer",
        layer: layer(KeyPart::client_ip(), None),
        spend: vec![Req::get("/")],
        attacks: attacks.to_vec(),
    }]
}

fn spoofing_behind_a_trusted_proxy() -> Vec<Attack> {
    // The proxy at 127.0.0.1 appends the attacker's address to whatever the attacker sent,
    // on the same line or on a line of its own.
    let xff = |client: &[u8]| {
        let mut same_line = client.to_vec();
        same_line.extend_from_slice(format!(", {ATTACKER}").as_bytes());
        [
            Req::get("/").header("x-forwarded-for", same_line),
            Req::get("/").lines("x-forwarded-for", [client, ATTACKER.as_bytes()]),
        ]
    };
    let forwarded = |client: &[u8]| {
        let mut same_line = client.to_vec();
        same_line.extend_from_slice(format!(", for={ATTACKER}").as_bytes());
        let own_line = format!("for=\"{ATTACKER}:4711\"");
        [
            Req::get("/").header("forwarded", same_line),
            Req::get("/").lines("forwarded", [client, own_line.as_bytes()]),
        ]
    };
    let client_text: [&[u8]; 12] = [
        b"1.1.1.1",
        b"1.1.1.1, 10.0.0.7",
        b"for=9.9.9.9;x=\"",
        b"for=\"9.9.9.9",
        b"for=9.9.9.9;x=\"\\",
        b"\"",
        b"\\",
        b"[2001:db8::1",
        b"for=9.9.9.9;for=1.1.1.1",
        b"unknown",
        b",,,;;;===",
        b"\xff\xfe, 1.1.1.1",
    ];
    vec![
        Attack {
            name: "client-written X-Forwarded-For behind a trusted proxy",
            layer: layer(KeyPart::client_ip(), Some(ForwardedHeader::XForwardedFor)),
            spend: vec![Req::get("/").header("x-forwarded-for", ATTACKER)],
            attacks: client_text.iter().flat_map(|c| xff(c)).collect(),
        },
        Attack {
            name: "client-written Forwarded behind a trusted proxy",
            layer: layer(KeyPart::client_ip(), Some(ForwardedHeader::Forwarded)),
            spend: vec![Req::get("/").header("forwarded", format!("for={ATTACKER}"))],
            attacks: client_text.iter().flat_map(|c| forwarded(c)).collect(),
        },
    ]
}

fn hop_counts() -> Vec<Attack> {
    let many: Vec<String> = (0..1000)
        .map(|i| format!("198.51.{}.{}", i / 250, i % 250))
        .collect();
    let long_list = many.join(", ");
    // 33 trusted hops: the walk stops at the 32nd from the right and reads nothing further.
    let trusted_chain = vec!["10.0.0.2"; 33].join(", ");
    vec![
        Attack {
            name: "more hops than the hop limit, from an untrusted peer",
            layer: layer(KeyPart::client_ip(), None),
            spend: vec![Req::get("/")],
            attacks: vec![
                Req::get("/").header("x-forwarded-for", &long_list),
                Req::get("/").lines("x-forwarded-for", &many[..500]),
            ],
        },
        Attack {
            name: "more hops than the hop limit, behind a trusted proxy",
            layer: layer(KeyPart::client_ip(), Some(ForwardedHeader::XForwardedFor)),
            spend: vec![Req::get("/").header("x-forwarded-for", ATTACKER)],
            attacks: vec![
                Req::get("/").header("x-forwarded-for", format!("{long_list}, {ATTACKER}")),
                Req::get("/")
                    .lines("x-forwarded-for", &many[..500])
                    .header("x-forwarded-for", ATTACKER),
            ],
        },
        Attack {
            name: "a trusted chain past the hop limit: what lies beyond it is never read",
            layer: layer(KeyPart::client_ip(), Some(ForwardedHeader::XForwardedFor)),
            spend: vec![Req::get("/").header("x-forwarded-for", &trusted_chain)],
            attacks: vec![
                Req::get("/").header("x-forwarded-for", format!("1.1.1.1, {trusted_chain}")),
                Req::get("/")
                    .header("x-forwarded-for", "garbage\", 2.2.2.2")
                    .header("x-forwarded-for", &trusted_chain),
            ],
        },
    ]
}

fn duplicated_identity_parts() -> Vec<Attack> {
    let api_key = KeyPart::query("api_key");
    let x_api_key = KeyPart::header(http::HeaderName::from_static("x-api-key"));
    vec![
        Attack {
            name: "duplicated and percent-encoded api_key query parameters",
            layer: layer(api_key.clone(), None),
            spend: vec![Req::get("/?api_key=X")],
            attacks: [
                "/?api_key=&api_key=X",
                "/?api_key=X&api_key=",
                "/?api_key=X&api_key=X",
                "/?api%5Fkey=X",
                "/?api%5fkey=&api_key=X",
                "/?api_key=%58",
                "/?api_key=X&api%5Fkey=%58",
                "/?other=1&api_key=&api_key=X&api_key",
                "/?api_key&api_key=X",
            ]
            .into_iter()
            .map(Req::get)
            .collect(),
        },
        Attack {
            name: "duplicated x-api-key header lines",
            layer: layer(x_api_key, None),
            spend: vec![Req::get("/").header("x-api-key", "X")],
            attacks: vec![
                Req::get("/").lines("x-api-key", ["", "X"]),
                Req::get("/").lines("x-api-key", ["X", ""]),
                Req::get("/").lines("x-api-key", ["X", "X"]),
                Req::get("/").lines("x-api-key", ["  ", "X", " X "]),
                Req::get("/").lines("x-api-key", vec!["X"; 500]),
            ],
        },
        Attack {
            name: "duplicated Authorization header lines",
            layer: layer(KeyPart::bearer_token(), None),
            spend: vec![Req::get("/").header("authorization", "Bearer X")],
            attacks: vec![
                Req::get("/").lines("authorization", ["Bearer ", "Bearer X"]),
                Req::get("/").lines("authorization", ["Basic dXNlcjpwdw==", "Bearer X"]),
                Req::get("/").lines("authorization", ["Bearer X", "Bearer"]),
                Req::get("/").lines("authorization", ["Bearer X", "bearer  X "]),
                Req::get("/").header("authorization", "BEARER X"),
            ],
        },
    ]
}

fn odd_bytes_and_sizes() -> Vec<Attack> {
    let x_api_key = || KeyPart::header(http::HeaderName::from_static("x-api-key"));
    let huge_xff = {
        let mut v = b"1.1.1.1, ".repeat(100 * 1024 / 9);
        v.extend_from_slice(ATTACKER.as_bytes());
        v
    };
    vec![
        Attack {
            name: "a non-UTF-8 API key, duplicated",
            layer: layer(x_api_key(), None),
            spend: vec![Req::get("/").header("x-api-key", b"\xff\xfe\x80")],
            attacks: vec![
                Req::get("/").header("x-api-key", b"\xff\xfe\x80"),
                Req::get("/").lines("x-api-key", [&b""[..], b"\xff\xfe\x80"]),
            ],
        },
        Attack {
            name: "a non-UTF-8 bearer token, duplicated",
            layer: layer(KeyPart::bearer_token(), None),
            spend: vec![Req::get("/").header("authorization", b"Bearer \xc3\x28")],
            attacks: vec![Req::get("/").lines(
                "authorization",
                [&b"Bearer \xc3\x28"[..], b"Bearer \xc3\x28"],
            )],
        },
        Attack {
            name: "a 100 KB API key",
            layer: layer(x_api_key(), None),
            spend: vec![Req::get("/").header("x-api-key", huge())],
            attacks: vec![
                Req::get("/").header("x-api-key", huge()),
                Req::get("/").lines("x-api-key", [vec![], huge()]),
            ],
        },
        // `http` caps a URI at 64 KB, so the query's value is 20 KB, percent-encoded to 60.
        Attack {
            name: "a 60 KB api_key query parameter",
            layer: layer(KeyPart::query("api_key"), None),
            spend: vec![Req::get(format!("/?api_key={}", "k".repeat(20 * 1024)))],
            attacks: vec![Req::get(format!(
                "/?api_key=&api_key={}",
                "%6B".repeat(20 * 1024)
            ))],
        },
        Attack {
            name: "a 100 KB X-Forwarded-For, behind a trusted proxy and not",
            layer: layer(KeyPart::client_ip(), Some(ForwardedHeader::XForwardedFor)),
            spend: vec![Req::get("/").header("x-forwarded-for", ATTACKER)],
            attacks: vec![Req::get("/").header("x-forwarded-for", huge_xff)],
        },
    ]
}

/// Raw identity values rotated from one address: the Vast preset's per-IP ceiling holds them.
fn identity_rotation() -> Vec<Attack> {
    let vast = |ceiling: u64| {
        Vast::new()
            .default_interval(Duration::from_secs(1))
            .ip_ceiling(Quota::per_minute(ceiling).unwrap())
            .builder()
            .build()
            .unwrap()
    };
    let rotated = |i: usize| {
        Req::get(format!("/?api_key=random{i}&api_key=valid"))
            .header("authorization", format!("Bearer random{i}"))
    };
    vec![Attack {
        name: "rotating bearer tokens and api_keys from one address (Vast ceiling)",
        layer: vast(5),
        spend: (0..5).map(rotated).collect(),
        attacks: (5..15).map(rotated).collect(),
    }]
}

/// Idempotency-Keys: fresh, replayed, repeated on another path or past the replay cap, against
/// a limit that does not honour replays (an abuse ceiling) and one that does (capped).
fn idempotency_tricks() -> Vec<Attack> {
    let keyed = |key: &str| Req::get("/").header("idempotency-key", key);
    let ceiling = RateLimitLayer::builder()
        .limit(Limit::new(one_per_minute("row")).key(KeyPart::client_ip()))
        // Even with GETs replayable, a limit that does not honour replays charges them.
        .idempotency(Idempotency::new().methods([Method::GET]))
        .build()
        .unwrap();
    let honouring = RateLimitLayer::builder()
        .limit(
            Limit::new(
                Rule::builder("row", Quota::per_minute(1).unwrap())
                    .honour_replays(true)
                    .build()
                    .unwrap(),
            )
            .key(KeyPart::bearer_token()),
        )
        .idempotency(Idempotency::new().methods([Method::GET]).max_replays(2))
        .build()
        .unwrap();
    let token = |req: Req| req.header("authorization", "Bearer t");
    vec![
        Attack {
            name: "Idempotency-Keys against a limit that does not honour replays",
            layer: ceiling,
            spend: vec![keyed("k1")],
            attacks: vec![
                keyed("k1"),
                keyed("k2"),
                Req::get("/").lines("idempotency-key", ["k1", "k1"]),
                Req::get("/").lines("idempotency-key", ["", "k1"]),
                keyed("K1"),
            ],
        },
        Attack {
            name: "replays past the cap, on another path, with another key",
            layer: honouring,
            // Charged once, then its two free replays.
            spend: vec![token(keyed("k1")), token(keyed("k1")), token(keyed("k1"))],
            attacks: vec![
                token(keyed("k1")),
                token(keyed("k2")),
                token(Req::get("/other").header("idempotency-key", "k1")),
            ],
        },
    ]
}

#[tokio::test]
async fn attacks_never_get_a_fresh_bucket() {
    let mut failures = Vec::new();
    for attack in table() {
        let store = attack.layer.clone();
        let client = TestClient::new(serve(attack.layer).await);
        for (i, req) in attack.spend.iter().enumerate() {
            let status = send(&client, req).await;
            if status != StatusCode::OK {
                failures.push(format!(
                    "{}: spending request {i} got {status}: {}",
                    attack.name,
                    req.describe()
                ));
            }
        }
        for req in &attack.attacks {
            let keys = store.store().len();
            let status = send(&client, req).await;
            let refused = status.is_client_error();
            let fresh = store.store().len() != keys;
            if !refused || fresh {
                failures.push(format!(
                    "{}: got {status}{}: {}",
                    attack.name,
                    if fresh { " and a new bucket" } else { "" },
                    req.describe()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} attacks got out:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Sends a request; a connection hyper closed without answering (it may, for a request over
/// its limits) reads as 431.
async fn send(client: &TestClient, req: &Req) -> StatusCode {
    let headers: Vec<(&str, &[u8])> = req
        .headers
        .iter()
        .map(|(name, value)| (*name, value.as_slice()))
        .collect();
    client
        .try_send(req.method.clone(), &req.path, &headers)
        .await
        .map_or(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, |reply| {
            reply.status
        })
}

/// Serves `/` behind the layer on a hyper server that accepts up to 2000 header lines, with
/// panics turned into 500s.
async fn serve(layer: RateLimitLayer<MemoryStore>) -> std::net::SocketAddr {
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer);
    let service = CatchPanic(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let service = tower::ServiceExt::map_request(
                service.clone(),
                move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer);
                    req
                },
            );
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .max_headers(2000)
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(stream),
                        hyper_util::service::TowerToHyperService::new(service),
                    )
                    .await;
            });
        }
    });
    addr
}

/// Turns a panic in the service (its `call` or its future) into a 500, so the table sees it.
#[derive(Clone)]
struct CatchPanic<S>(S);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for CatchPanic<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.0.call(req))) {
            Ok(future) => Box::pin(Unwind(Box::pin(future))),
            Err(_) => Box::pin(async { Ok(panicked()) }),
        }
    }
}

struct Unwind<F>(Pin<Box<F>>);

impl<F> Future for Unwind<F>
where
    F: Future<Output = Result<http::Response<Body>, Infallible>>,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(_) => Poll::Ready(Ok(panicked())),
        }
    }
}

fn panicked() -> http::Response<Body> {
    let mut response = http::Response::new(Body::from("the service panicked"));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}
