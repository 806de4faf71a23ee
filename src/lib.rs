//! tollgate: rate-limiting middleware for tower, axum and hyper.
//!
//! A [`RateLimitLayer`] wraps any `Service<http::Request<B>>` (an axum `Router`, a plain hyper
//! service built with tower), decides per request whether it may pass, answers
//! `429 Too Many Requests` when it may not, and tells every client where it stands through
//! `X-RateLimit-*` and `Retry-After` headers. Limits live in a [`Store`](core::Store): in memory
//! ([`MemoryStore`](core::MemoryStore), the default) or in Redis (`tollgate-redis`).
//!
//! - [`Limit`]: a core [`Rule`](core::Rule) (quota and algorithm), a [`Scope`] (which requests)
//!   and [`KeyPart`]s (who is counted apart: client IP, bearer token, header, query parameter,
//!   request extension, route template, method).
//! - [`RateLimitBuilder`]: limits, store, trusted proxies, headers, idempotency, 429 body.
//! - [`presets`]: the Vast.ai and VMArea models in a few lines.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use axum::{routing::get, Router};
//! use tollgate::core::{Quota, Rule};
//! use tollgate::{KeyPart, Limit, RateLimitLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let limiter = RateLimitLayer::builder()
//!     .limit(
//!         Limit::new(Rule::builder("per_ip", Quota::per_minute(100)?).build()?)
//!             .key(KeyPart::client_ip()),
//!     )
//!     .build()?;
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(limiter);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! - `axum` (default): reads axum's `MatchedPath` (route templates) and
//!   `ConnectInfo<SocketAddr>` (peer addresses). Without it, give route patterns to
//!   [`RateLimitBuilder::routes`] and insert the peer `SocketAddr` as a request extension.

#![warn(missing_docs, missing_debug_implementations)]

mod body;
mod builder;
pub mod client_ip;
mod error;
mod idempotency;
mod key;
mod layer;
mod limit;
mod limiter;
mod metrics;
pub mod presets;
mod replay_body;
pub mod response;
mod route;
mod scope;

pub use tollgate_core as core;

pub use body::ResponseBody;
pub use builder::RateLimitBuilder;
pub use client_ip::{Cidr, CidrError, ForwardedHeader};
pub use error::BuildError;
pub use idempotency::Idempotency;
pub use key::{Identifier, KeyPart, SessionUser, TokenId};
pub use layer::{RateLimit, RateLimitLayer, ResponseFuture};
pub use limit::Limit;
pub use metrics::{LimitMetrics, Metrics};
pub use replay_body::{ReplayBody, ReplayBodyFuture, ReplayBodyLayer, ReplayBodyService};
pub use response::{Denial, HeaderStyle, ResetFormat};
pub use route::{RouteError, RoutePattern};
pub use scope::Scope;
