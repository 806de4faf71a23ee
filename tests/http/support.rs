//! Real servers on 127.0.0.1:0 and a real HTTP client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tollgate::{ManualClock, MemoryStore};
use tollgate::{SessionUser, TokenId};

/// An instant on a minute boundary (1_700_000_040 is a multiple of 60), in nanoseconds.
pub const MINUTE_START: u64 = 1_700_000_040 * 1_000_000_000;

/// A memory store whose time the test moves, starting `offset` into a minute.
pub fn manual_store(offset: Duration) -> (MemoryStore<ManualClock>, ManualClock) {
    let clock = ManualClock::new(MINUTE_START + offset.as_nanos() as u64);
    let store = MemoryStore::builder().clock(clock.clone()).build();
    (store, clock)
}

/// Serves an axum router with connect info (peer addresses), on an ephemeral port.
pub async fn serve_axum(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// Serves an axum router without connect info: no peer address reaches the layer.
pub async fn serve_axum_without_peer(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Serves a tower service on a plain hyper 1.x server, inserting each connection's peer
/// `SocketAddr` as a request extension.
pub async fn serve_hyper<Svc, B>(service: Svc) -> SocketAddr
where
    Svc: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    Svc::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use tower::ServiceExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let service = service.clone().map_request(
                move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer);
                    req
                },
            );
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        TokioIo::new(stream),
                        hyper_util::service::TowerToHyperService::new(service),
                    )
                    .await;
            });
        }
    });
    addr
}

/// Stands in for the app's auth layer: a non-empty `x-api-key` authenticates, and its token id
/// (here the key itself with a prefix) becomes a `TokenId` extension. A session layer is faked
/// the same way from `x-session-user`.
pub async fn fake_auth(mut req: Request, next: Next) -> Response {
    if let Some(key) = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
    {
        let id = TokenId(format!("tok_{key}"));
        req.extensions_mut().insert(id);
    }
    if let Some(user) = req
        .headers()
        .get("x-session-user")
        .and_then(|v| v.to_str().ok())
    {
        let user = SessionUser::from(user);
        req.extensions_mut().insert(user);
    }
    next.run(req).await
}

/// Request headers as (name, raw value) pairs.
pub type Headers<'a> = Vec<(&'a str, &'a [u8])>;

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    /// `Retry-After` as seconds.
    pub fn retry_after(&self) -> u64 {
        self.header("retry-after").unwrap().parse().unwrap()
    }
}

/// A real HTTP/1.1 client (hyper-util's pooled client).
#[derive(Clone)]
pub struct TestClient {
    client: Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
}

impl TestClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            addr,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[]).await
    }

    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &[u8])]) -> Reply {
        self.try_send(method, path, headers).await.unwrap()
    }

    /// Like [`send`](Self::send), but a connection the server closed without answering (as
    /// hyper may for a request over its limits) is an error, not a panic.
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &[u8])],
    ) -> Result<Reply, hyper_util::client::legacy::Error> {
        self.try_send_body(method, path, headers, Bytes::new())
            .await
    }

    /// [`send`](Self::send) with a body (sent with its `Content-Length`).
    pub async fn send_body(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &[u8])],
        body: &'static [u8],
    ) -> Reply {
        self.try_send_body(method, path, headers, Bytes::from_static(body))
            .await
            .unwrap()
    }

    async fn try_send_body(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &[u8])],
        body: Bytes,
    ) -> Result<Reply, hyper_util::client::legacy::Error> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path))
            .body(Full::new(body))
            .unwrap();
        for (name, value) in headers {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        let response = self.client.request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// Sends raw bytes on a fresh connection and returns the response's status line: for requests
/// a well-behaved client library refuses to build.
pub async fn raw_status_line(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let mut read = 0;
    while !buf[..read].windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf[read..]).await.unwrap();
        assert!(n > 0, "connection closed without an answer");
        read += n;
    }
    let text = String::from_utf8_lossy(&buf[..read]);
    text.lines().next().unwrap_or_default().to_owned()
}

/// A store that always fails, as a Redis store does during an outage; `SHARED` says whether it
/// passes for a shared store (the layer then warns about the public default key secret).
#[derive(Clone)]
pub struct BrokenStore<const SHARED: bool = false>;

#[derive(Debug, thiserror::Error)]
#[error("connection refused")]
pub struct Refused;

impl<const SHARED: bool> tollgate::Store for BrokenStore<SHARED> {
    type Error = Refused;
    const SHARED: bool = SHARED;

    fn check(
        &self,
        _: &[tollgate::Check<'_>],
        _: Option<&tollgate::Replay>,
    ) -> impl std::future::Future<Output = Result<tollgate::Outcome, Refused>> + Send {
        std::future::ready(Err(Refused))
    }

    fn peek(
        &self,
        _: &[tollgate::Check<'_>],
    ) -> impl std::future::Future<Output = Result<tollgate::Outcome, Refused>> + Send {
        std::future::ready(Err(Refused))
    }
}
