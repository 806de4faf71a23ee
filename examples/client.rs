//! The client side: `tollgate-client`'s layer over hyper-util's client, with its default
//! policy, making `<count>` calls and printing one JSON line per call.
//!
//! ```sh
//! cargo run --example vast &        # a server limited the Vast way, on 127.0.0.1:3000
//! cargo run --example client -- http://127.0.0.1:3000 GET /api/v0/users/current 3
//! ```
//!
//! prints, for each call, `{"status": 200, "attempts": 1, "waited_ms": 0}`: the final status,
//! how many times the request was sent, and how long the layer waited (pacing and retries).
//! Against the `vast` example (GET 1 s apart), learned pacing holds each call for the reset
//! the one before reported, so none is refused.

use std::process::ExitCode;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate_client::{CallReport, PoliteLayer};
use tower::{Layer, Service, ServiceExt};

const USAGE: &str = "usage: cargo run --example client -- <base-url> <METHOD> <path> <count>";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, method, path, count] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let (Ok(method), Ok(count)) = (method.parse::<Method>(), count.parse::<u32>()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let uri = format!("{}{path}", base.trim_end_matches('/'));

    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut client = PoliteLayer::new().layer(http);
    for _ in 0..count {
        let request = match Request::builder()
            .method(method.clone())
            .uri(&uri)
            .body(Full::new(Bytes::new()))
        {
            Ok(request) => request,
            Err(e) => {
                eprintln!("bad request {uri}: {e}");
                return ExitCode::from(2);
            }
        };
        let response = match client.ready().await {
            Ok(ready) => ready.call(request).await,
            Err(e) => Err(e),
        };
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                eprintln!("{uri}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let status = response.status().as_u16();
        let report = response
            .extensions()
            .get::<CallReport>()
            .copied()
            .unwrap_or_default();
        // Read the body through, so the connection is reused.
        let _ = response.into_body().collect().await;
        println!(
            r#"{{"status": {status}, "attempts": {}, "waited_ms": {}}}"#,
            report.attempts(),
            report.waited().as_millis()
        );
    }
    ExitCode::SUCCESS
}
