//! tollgate-client: a tower layer for HTTP clients that honours every rate-limit signal.
//!
//! [`PoliteLayer`] wraps any tower HTTP client over [`http::Request`] and [`http::Response`]
//! (hyper-util's legacy `Client`, or any `Service<http::Request<B>>`) and makes it:
//!
//! - **wait what the server said**, never less: `Retry-After` (delta-seconds or HTTP-date), the
//!   IETF `RateLimit` field's `t` (draft-11, `RateLimit: "default";r=0;t=5`) and the older
//!   `RateLimit-Reset`, `X-RateLimit-Reset` (delta or Unix time, told apart by size), with
//!   jitter only on top, and a cap beyond which the response is returned instead;
//! - **back off by a policy** when the server says nothing: [`Backoff`] with presets for the
//!   Vast.ai SDK, its serverless client, VMArea's recipe and the Vast rate-limit recipe, each
//!   documented with its formula;
//! - **pace itself**: a minimum interval per endpoint, and learned holds (a response with 0
//!   remaining holds the next requests to that endpoint until the reset), shared by every clone;
//! - **retry only what is safe**: idempotent methods, others only with an `Idempotency-Key`
//!   (optionally generated), and bodies only when they can be replayed ([`ReplayBody`]).
//!
//! It knows nothing of tollgate's server crates: any server that sends these headers is read
//! the same way. It waits on tokio's timer, so it runs in a tokio runtime with time enabled
//! (and a paused tokio clock makes its waits instant in tests).
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tollgate_client::{CallReport, PoliteLayer};
//! use tower::{Service, ServiceExt};
//! use tower_layer::Layer;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let mut client = PoliteLayer::new().layer(http);
//! for _ in 0..3 {
//!     let request = http::Request::get("http://127.0.0.1:3000/api/v0/users/current")
//!         .body(Full::new(Bytes::new()))?;
//!     let response = client.ready().await?.call(request).await?;
//!     let report = response.extensions().get::<CallReport>().copied().unwrap_or_default();
//!     println!("{} ({} attempts)", response.status(), report.attempts());
//! }
//! # Ok(()) }
//! ```
//!
//! # What "never less" means
//!
//! The wait before a retry is the [`Backoff`]'s [`delay`](Backoff::delay), which is never
//! shorter than the server's wait. When several fields speak, `Retry-After` wins (it answers
//! this request); else the reset of the longest exhausted limit; else an `X-RateLimit-Reset`
//! given without its remaining count. A field repeated on several lines counts for its longest
//! value. An HTTP-date or a Unix time is read against the response's `Date` (the server's
//! clock), else the local clock. Values that are not numbers (`-1`, `soon`) are no signal; a
//! number too large is a wait beyond any cap, so the response is returned, never retried early.
//!
//! # Endpoints
//!
//! Pacing is kept per endpoint; by default an endpoint is the URI's host and path (without the
//! query). A server that counts by route template or per host is matched better by
//! [`PoliteLayer::endpoint`].
//!
//! # reqwest
//!
//! `reqwest::Client` is not a tower service over `http::Request`, so it cannot be wrapped
//! directly; and reqwest-middleware's retry layer cannot see the response it retries
//! (reqwest-middleware#146). Use hyper-util's client, or any tower HTTP client.

#![warn(missing_docs)]

mod backoff;
mod idempotency;
mod layer;
mod pacing;
mod replay;
mod service;
mod signals;

pub use backoff::Backoff;
pub use idempotency::IDEMPOTENCY_KEY;
pub use layer::PoliteLayer;
pub use replay::ReplayBody;
pub use service::{CallReport, Polite, ResponseFuture};
