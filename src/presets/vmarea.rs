//! The VMArea model: two stacked buckets, per API token and per client IP.
//!
//! | bucket | limit | keyed by | applies to |
//! | --- | --- | --- | --- |
//! | `per_token` | 600 requests / minute | the token id the app's auth layer sets | `/api/public/v1/*` |
//! | `per_ip` | 100 requests / minute | client IP | requests without an authenticated token |
//!
//! Both use fixed 60-second windows by default, so `X-RateLimit-Reset` is the number of seconds
//! until the window resets. The 429 body names the bucket that tripped:
//!
//! ```text
//! {"success": false, "error": "Rate limit exceeded for this API token: 600 requests per minute. Retry after 42."}
//! {"success": false, "error": "Rate limit exceeded for this IP address: 100 requests per minute. Retry after 7."}
//! ```
//!
//! # Why the per-IP bucket skips authenticated requests
//!
//! The per-token bucket exists so that customers behind one NAT are not penalised for each
//! other's traffic. Were the 100/min per-IP cap also charged for authenticated requests, a
//! token's 600/min would be unreachable (every request from that token's address would hit the
//! per-IP cap first), and every customer behind a shared address would share 100/min. So by
//! default the per-IP bucket charges only requests that carry no authenticated token: it guards
//! the unauthenticated routes (login, signup), where abuse comes from. [`VmArea::strict`] makes
//! both buckets apply to every request, for deployments that want a hard per-address ceiling.
//!
//! # Wiring
//!
//! The per-token bucket is keyed by a typed request extension — [`TokenId`] unless
//! [`VmArea::token`] names another type — that the app's auth layer inserts once `x-api-key`
//! checks out. Put the rate-limit layer *inside* (after) the auth layer, so it sees the
//! extension: with axum, the last `.layer()` call runs first.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use tollgate::presets::vmarea::VmArea;
//!
//! # fn auth_layer() -> tower::layer::util::Identity { tower::layer::util::Identity::new() }
//! # fn run() -> Result<(), tollgate::BuildError> {
//! let limiter = VmArea::new().builder().build()?;
//! let app: Router = Router::new()
//!     .route("/api/public/v1/vms", get(|| async { "[]" }))
//!     .layer(limiter)       // runs second: sees the TokenId
//!     .layer(auth_layer()); // runs first: inserts the TokenId
//! # Ok(()) }
//! ```
//!
//! Idempotent replays are on by default for the per-token bucket: a retried write
//! (`POST`/`PUT`/`PATCH`/`DELETE` on `/api/public/v1/*`) repeating an `Idempotency-Key` already
//! charged for the same token, method and route does not burn its quota again (24 h, 5 replays;
//! see [`Idempotency`]). The per-IP bucket charges every request, replay or not: it is the
//! abuse ceiling of the login and signup routes, and an Idempotency-Key must not be a way past
//! it.

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use tollgate_core::{Algorithm, MemoryStore};

use crate::key::{Identifier, KeyPart, TokenId};
use crate::response::{default_denial, Denial, FailureTemplate};
use crate::{Idempotency, Limit, RateLimitBuilder, RateLimitLayer, Scope};

/// The name of the per-token rule.
pub const PER_TOKEN: &str = "per_token";
/// The name of the per-IP rule.
pub const PER_IP: &str = "per_ip";

/// Configures the VMArea preset; it converts into a [`RateLimitBuilder`]
/// ([`RateLimitBuilder::from`], or [`builder`](Self::builder)) for the store, trusted proxies
/// and any other setting.
///
/// ```
/// use tollgate::presets::vmarea::VmArea;
/// use tollgate::RateLimitBuilder;
///
/// let limiter = RateLimitBuilder::from(VmArea::new().strict(true))
///     .trusted_proxies(["10.0.0.0/8"])
///     .build()?;
/// assert_eq!(limiter.metrics().limits.len(), 2);
/// # Ok::<(), tollgate::BuildError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct VmArea {
    per_token: u64,
    per_ip: u64,
    api_path: String,
    token: KeyPart,
    strict: bool,
    algorithm: Algorithm,
    idempotency: Option<Idempotency>,
}

impl Default for VmArea {
    fn default() -> Self {
        Self::new()
    }
}

impl VmArea {
    /// 600 per minute per token on `/api/public/v1/*`, 100 per minute per IP for
    /// unauthenticated requests, fixed windows, idempotent replays on.
    pub fn new() -> Self {
        Self {
            per_token: 600,
            per_ip: 100,
            api_path: "/api/public/v1/*".to_owned(),
            token: KeyPart::extension::<TokenId>(),
            strict: false,
            algorithm: Algorithm::FixedWindow,
            idempotency: Some(Idempotency::new()),
        }
    }

    /// Requests per minute per token (default 600).
    pub fn per_token(mut self, per_minute: u64) -> Self {
        self.per_token = per_minute;
        self
    }

    /// Requests per minute per client IP (default 100).
    pub fn per_ip(mut self, per_minute: u64) -> Self {
        self.per_ip = per_minute;
        self
    }

    /// The request extension that carries the authenticated token's id (default [`TokenId`]).
    pub fn token<T: Identifier>(mut self) -> Self {
        self.token = KeyPart::extension::<T>();
        self
    }

    /// The paths of the per-token bucket (default `/api/public/v1/*`; see
    /// [`RoutePattern`](crate::RoutePattern)).
    pub fn api_path(mut self, pattern: impl Into<String>) -> Self {
        self.api_path = pattern.into();
        self
    }

    /// Strict mode: the per-IP bucket applies to every request, authenticated or not (default
    /// off; see the [module documentation](crate::presets::vmarea) for why).
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// The algorithm of both buckets (default fixed windows, reset on the minute).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Idempotent replays (default: [`Idempotency::new`]); `None` turns them off.
    pub fn idempotency(mut self, idempotency: Option<Idempotency>) -> Self {
        self.idempotency = idempotency;
        self
    }

    /// The preset as a layer builder, with a [`MemoryStore`] until
    /// [`store`](RateLimitBuilder::store) says otherwise: the same as
    /// [`RateLimitBuilder::from`].
    pub fn builder(self) -> RateLimitBuilder<MemoryStore> {
        self.into()
    }

    fn limits(&self) -> [Limit; 2] {
        let bucket =
            |name, per_minute| Limit::per_minute(name, per_minute).algorithm(self.algorithm);
        let per_token = bucket(PER_TOKEN, self.per_token)
            .honour_replays(self.idempotency.is_some())
            .scope(Scope::all().path(&self.api_path))
            .key(self.token.clone());
        let ip_scope = if self.strict {
            Scope::all()
        } else {
            Scope::all().without(self.token.clone())
        };
        let per_ip = bucket(PER_IP, self.per_ip)
            .scope(ip_scope)
            .key(KeyPart::client_ip());
        [per_token, per_ip]
    }
}

/// The preset's limits, idempotency and 429 body on a layer builder.
///
/// ```
/// use tollgate::presets::vmarea::VmArea;
/// use tollgate::RateLimitBuilder;
///
/// let limiter = RateLimitBuilder::from(VmArea::new()).build()?;
/// # Ok::<(), tollgate::BuildError>(())
/// ```
impl From<VmArea> for RateLimitBuilder<MemoryStore> {
    fn from(preset: VmArea) -> Self {
        let builder = RateLimitLayer::builder()
            .limits(preset.limits())
            .on_denied(deny(&preset));
        match preset.idempotency {
            Some(idempotency) => builder.idempotency(idempotency),
            None => builder,
        }
    }
}

/// The VMArea 429 body, naming the bucket that tripped: its two messages are serialized once.
fn deny(preset: &VmArea) -> impl Fn(&Denial<'_>) -> Response<Full<Bytes>> + Send + Sync + 'static {
    let bucket = |noun: &str, per_minute: u64| {
        FailureTemplate::new(
            &format!("Rate limit exceeded for this {noun}: {per_minute} requests per minute. Retry after "),
            ".",
        )
    };
    let per_token = bucket("API token", preset.per_token);
    let per_ip = bucket("IP address", preset.per_ip);
    move |denial: &Denial<'_>| {
        let body = match denial.rule().name() {
            PER_TOKEN => &per_token,
            PER_IP => &per_ip,
            _ => return default_denial(denial),
        };
        denial.json_bytes(body.with(denial.retry_after_secs()))
    }
}
