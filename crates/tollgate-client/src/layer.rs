//! The layer: configuration of waiting, pacing and retries, and the pacing table its services
//! share.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Uri};
use tower_layer::Layer;

use crate::pacing::Pacer;
use crate::{Backoff, Polite};

/// Names the limit a request counts against, for pacing: see [`PoliteLayer::endpoint`].
type EndpointFn = dyn Fn(&Method, &Uri) -> String + Send + Sync;

/// A [`Layer`] that makes an HTTP client polite: it waits what the server said, paces itself so
/// it is not throttled, and retries only what is safe to retry.
///
/// - **Honest waiting**: a `429` (or a `503` that says how long) is retried after the wait the
///   server gave (`Retry-After`, the IETF `RateLimit` field's `t`, `X-RateLimit-Reset`), never
///   sooner, with the [`Backoff`]'s jitter on top; without a signal, after the [`Backoff`]'s own
///   delay. A wait longer than [`max_wait`](Self::max_wait) is not waited: the response is
///   returned.
/// - **Pacing**: a [`min_interval`](Self::min_interval) between two sends to one endpoint, and
///   learned holds ([`learn_pacing`](Self::learn_pacing), on by default): when a response says a
///   limit has 0 requests remaining, the next requests to that endpoint wait for its reset
///   instead of being refused. One pacing table serves every service this layer builds and all
///   their clones.
/// - **Safe retries**: idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) are retried;
///   others only when they carry an `Idempotency-Key`, which
///   [`idempotency_keys`](Self::idempotency_keys) can add. A body is sent again only when it can
///   be replayed ([`ReplayBody`](crate::ReplayBody)); otherwise the response is returned.
///
/// Every response carries a [`CallReport`](crate::CallReport) extension: how many attempts it
/// took and how long the layer waited.
///
/// ```no_run
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use tollgate_client::{Backoff, CallReport, PoliteLayer};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
/// let mut client = ServiceBuilder::new()
///     .layer(
///         PoliteLayer::new()
///             .backoff(Backoff::vast_sdk())
///             .min_interval(Duration::from_millis(500))
///             .max_wait(Duration::from_secs(30)),
///     )
///     .service(http);
///
/// let request = http::Request::get("http://127.0.0.1:3000/api/v0/instances/1/")
///     .body(Full::new(Bytes::new()))?;
/// let response = client.ready().await?.call(request).await?;
/// let report = response.extensions().get::<CallReport>().copied().unwrap_or_default();
/// println!("{} after {} attempts, {:?} waited", response.status(), report.attempts(), report.waited());
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use]
pub struct PoliteLayer {
    config: Config,
    pacer: Arc<Pacer>,
}

/// What a [`Polite`] service does, fixed when the layer builds it.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) backoff: Backoff,
    pub(crate) max_wait: Duration,
    pub(crate) min_interval: Option<Duration>,
    pub(crate) intervals: HashMap<String, Duration>,
    pub(crate) learn: bool,
    pub(crate) idempotency_keys: bool,
    pub(crate) endpoint: Arc<EndpointFn>,
}

impl Config {
    /// The endpoint a request counts against and the minimum interval configured for it.
    pub(crate) fn endpoint(&self, method: &Method, uri: &Uri) -> (String, Option<Duration>) {
        let endpoint = (self.endpoint)(method, uri);
        let interval = self.intervals.get(&endpoint).copied().or(self.min_interval);
        (endpoint, interval)
    }
}

/// The default endpoint: the URI's authority and path, without the query
/// (`api.example.com/v1/items`).
pub(crate) fn host_and_path(_: &Method, uri: &Uri) -> String {
    let authority = uri.authority().map_or("", |a| a.as_str());
    format!("{authority}{}", uri.path())
}

impl Default for PoliteLayer {
    fn default() -> Self {
        Self::new()
    }
}

/// # Building
impl PoliteLayer {
    /// The defaults: [`Backoff::vast_serverless`], a [`max_wait`](Self::max_wait) of 60 s,
    /// learned pacing on, no minimum interval, no generated keys, endpoints by host and path.
    pub fn new() -> Self {
        Self {
            config: Config {
                backoff: Backoff::default(),
                max_wait: Duration::from_secs(60),
                min_interval: None,
                intervals: HashMap::new(),
                learn: true,
                idempotency_keys: false,
                endpoint: Arc::new(host_and_path),
            },
            pacer: Arc::default(),
        }
    }

    /// The retry policy: which statuses, how many times, which delays.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// The longest the layer waits before one send (a retry, or a learned hold). A server
    /// asking for more gets its response returned to the caller instead of a sleeping task;
    /// a hold for longer lets the request go and the server answer it.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.config.max_wait = max_wait;
        self
    }

    /// A minimum interval between two sends to each endpoint (retries included), as the seed
    /// client's `min_delay`. Sends are spaced in the order they are made, across clones.
    pub fn min_interval(mut self, interval: Duration) -> Self {
        self.config.min_interval = Some(interval);
        self
    }

    /// A minimum interval for one endpoint (as named by [`endpoint`](Self::endpoint); by default
    /// `host/path`), over [`min_interval`](Self::min_interval).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tollgate_client::PoliteLayer;
    /// let layer = PoliteLayer::new()
    ///     .min_interval(Duration::from_millis(500))
    ///     .min_interval_for("api.vast.ai/api/v0/bundles/", Duration::from_secs(2));
    /// ```
    pub fn min_interval_for(mut self, endpoint: impl Into<String>, interval: Duration) -> Self {
        self.config.intervals.insert(endpoint.into(), interval);
        self
    }

    /// Whether a response reporting an exhausted limit (remaining 0 in `X-RateLimit-Remaining`,
    /// `RateLimit-Remaining` or the IETF `RateLimit` field), or a 429 with a wait, holds the
    /// next requests to its endpoint until the reset. On by default.
    pub fn learn_pacing(mut self, learn: bool) -> Self {
        self.config.learn = learn;
        self
    }

    /// Whether a non-idempotent request (POST, PATCH) without an `Idempotency-Key` gets a
    /// generated one (a random UUID), which makes it safe to retry. Off by default: the server
    /// must understand the header for the retry to be safe.
    pub fn idempotency_keys(mut self, add: bool) -> Self {
        self.config.idempotency_keys = add;
        self
    }

    /// How requests are grouped into endpoints, each paced on its own: by default the URI's
    /// host and path (`api.example.com/v1/items`), so `/items/1` and `/items/2` are two
    /// endpoints. A server that limits by route template, or per host, is better matched by a
    /// function of its own:
    ///
    /// ```
    /// # use tollgate_client::PoliteLayer;
    /// // One limit per host, whatever the path (the seed client's global `min_delay`).
    /// let per_host = PoliteLayer::new().endpoint(|_, uri| uri.host().unwrap_or_default().to_owned());
    /// // Per method and first two path segments: GET and POST counted apart.
    /// let per_route = PoliteLayer::new().endpoint(|method, uri| {
    ///     let route: Vec<&str> = uri.path().split('/').take(3).collect();
    ///     format!("{method} {}", route.join("/"))
    /// });
    /// ```
    pub fn endpoint<F>(mut self, endpoint: F) -> Self
    where
        F: Fn(&Method, &Uri) -> String + Send + Sync + 'static,
    {
        self.config.endpoint = Arc::new(endpoint);
        self
    }
}

impl<S> Layer<S> for PoliteLayer {
    type Service = Polite<S>;

    fn layer(&self, inner: S) -> Polite<S> {
        Polite::new(inner, Arc::new(self.config.clone()), self.pacer.clone())
    }
}

impl fmt::Debug for PoliteLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoliteLayer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("backoff", &self.backoff)
            .field("max_wait", &self.max_wait)
            .field("min_interval", &self.min_interval)
            .field("intervals", &self.intervals)
            .field("learn", &self.learn)
            .field("idempotency_keys", &self.idempotency_keys)
            .finish_non_exhaustive()
    }
}
