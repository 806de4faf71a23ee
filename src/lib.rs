//! tollgate: rate-limiting middleware for tower, axum and hyper.
//!
//! A [`RateLimitLayer`] wraps any `Service<http::Request<B>>` (an axum `Router`, a plain hyper
//! service built with tower), decides per request whether it may pass, answers
//! `429 Too Many Requests` when it may not, and tells every client where it stands through
//! `X-RateLimit-*` and `Retry-After` headers. Limits live in a [`Store`]: in memory
//! ([`MemoryStore`], the default) or in Redis (`tollgate-redis`).
//!
//! - [`Limit`]: a quota and its [`Algorithm`] in one expression (`Limit::per_minute("login",
//!   100)`), a [`Scope`] (which requests) and [`KeyPart`]s (who is counted apart: client IP,
//!   bearer token, header, query parameter, request extension, route template, method, or a
//!   closure over the [`RequestHead`]).
//! - [`RateLimitBuilder`]: limits, store, trusted proxies, headers, idempotency, 429 body; every
//!   mistake reported by [`build`](RateLimitBuilder::build) at once.
//! - [`presets`]: the Vast.ai and VMArea models in a few lines.
//! - [`tollgate_core`] (re-exported whole): rules, algorithms, decisions, the [`Store`] trait;
//!   its everyday types are re-exported here too.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use axum::{routing::get, Router};
//! use tollgate::{KeyPart, Limit, RateLimitLayer, Scope};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let limiter = RateLimitLayer::builder()
//!     .limit(Limit::per_minute("login", 100).scope(Scope::all().path("/login")).key(KeyPart::client_ip()))
//!     .limit(Limit::per_minute("per_key", 600).scope(Scope::all().path("/api/*")).key(KeyPart::header(
//!         http::HeaderName::from_static("x-api-key"),
//!     )))
//!     .build()?;
//! let app = Router::new()
//!     .route("/login", get(|| async { "hello" }))
//!     .layer(limiter);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! - `axum` (default): reads axum's `MatchedPath` (route templates, which scopes match) and
//!   `ConnectInfo<SocketAddr>` (peer addresses). Without it, give route patterns to
//!   [`RateLimitBuilder::routes`] and insert the peer `SocketAddr` as a request extension.

#![warn(missing_docs, missing_debug_implementations)]
// docs.rs (`--cfg docsrs`, see Cargo.toml) marks the items a feature gates.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod builder;
pub mod client_ip;
#[cfg(feature = "config")]
#[cfg_attr(docsrs, doc(cfg(feature = "config")))]
pub mod config;
mod error;
mod exempt;
mod head;
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

/// The core crate: rules, algorithms, decisions, the [`Store`] trait and the memory store, with
/// no HTTP. Under its own name, so that it does not shadow the standard `core`.
pub use tollgate_core;

pub use tollgate_core::{
    Algorithm, Check, ClientQuota, ClientQuotas, Clock, Decision, Key, KeyBuilder, KeySecret,
    ManualClock, MemoryStore, MemoryStoreBuilder, Outcome, ParseQuotaError, Quota, QuotaError,
    Replay, Rule, RuleBuilder, RuleError, Store, SystemClock,
};

pub use body::ResponseBody;
pub use builder::RateLimitBuilder;
pub use client_ip::{Cidr, CidrError, ForwardedHeader};
pub use error::{BuildError, InvalidQuota};
pub use head::RequestHead;
pub use idempotency::Idempotency;
pub use key::{Identifier, KeyPart, SessionUser, TokenId};
pub use layer::{RateLimit, RateLimitLayer, ResponseFuture};
pub use limit::{Limit, Tier};
pub use metrics::{LimitMetrics, Metrics};
pub use replay_body::{ReplayBody, ReplayBodyFuture, ReplayBodyLayer, ReplayBodyService};
pub use response::{Denial, HeaderStyle, ResetFormat};
pub use route::{RouteError, RoutePattern};
pub use scope::Scope;
