//! Real tollgate servers on 127.0.0.1:0 with a log of what they answered, and the client layer
//! over hyper-util's pooled client.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tollgate_client::{CallReport, Polite, PoliteLayer};
use tower::{Service, ServiceExt};
use tower_layer::Layer;

/// What the server answered to one request, as it left the server.
#[derive(Debug, Clone)]
pub struct Answer {
    pub method: Method,
    pub status: StatusCode,
    /// `Retry-After` in seconds, on a refusal.
    pub retry_after: Option<u64>,
    /// When the request arrived.
    pub arrived: Instant,
    /// When its answer left.
    pub answered: Instant,
}

/// Every answer a server gave, in order.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Answer>>>);

impl Log {
    pub fn answers(&self) -> Vec<Answer> {
        self.0.lock().unwrap().clone()
    }

    pub fn refusals(&self) -> usize {
        self.answers()
            .iter()
            .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
            .count()
    }
}

/// Serves `app` (already wrapped in a tollgate layer) with connect info, logging every answer
/// outside the limiter.
pub async fn serve(app: axum::Router) -> (SocketAddr, Log) {
    let log = Log::default();
    let recorder = log.clone();
    let app = app.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let log = recorder.clone();
            async move {
                let (method, arrived) = (req.method().clone(), Instant::now());
                let response = next.run(req).await;
                let retry_after = response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .map(|v| v.to_str().unwrap().parse().unwrap());
                log.0.lock().unwrap().push(Answer {
                    method,
                    status: response.status(),
                    retry_after,
                    arrived,
                    answered: Instant::now(),
                });
                response
            }
        },
    ));
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
    (addr, log)
}

pub type Http = Client<HttpConnector, Full<Bytes>>;

pub fn http() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The polite client to `addr`.
#[derive(Clone)]
pub struct PoliteClient {
    pub service: Polite<Http>,
    pub addr: SocketAddr,
}

/// What one call through the layer came to.
#[derive(Debug)]
pub struct Outcome {
    pub status: StatusCode,
    pub report: CallReport,
}

impl PoliteClient {
    pub fn new(layer: &PoliteLayer, addr: SocketAddr) -> Self {
        Self {
            service: layer.layer(http()),
            addr,
        }
    }

    pub async fn call(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Outcome {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::new())).unwrap();
        let mut service = self.service.clone();
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        let status = response.status();
        let report = *response.extensions().get::<CallReport>().unwrap();
        response.into_body().collect().await.unwrap();
        Outcome { status, report }
    }
}
