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

/// The default endpoint: the URI's authority and path, without the query, with path segments
/// that look like ids replaced by `{id}`: `api.example.com/v1/items/{id}/`.
pub(crate) fn host_and_route(_: &Method, uri: &Uri) -> String {
    let mut endpoint = String::from(uri.authority().map_or("", |a| a.as_str()));
    for (i, segment) in uri.path().split('/').enumerate() {
        if i > 0 {
            endpoint.push('/');
        }
        endpoint.push_str(if looks_like_id(segment) {
            "{id}"
        } else {
            segment
        });
    }
    endpoint
}

/// A number, a UUID, or a long run of hex digits (an object id, a hash): what servers put in a
/// route template's parameter, not in its fixed part.
fn looks_like_id(segment: &str) -> bool {
    let b = segment.as_bytes();
    let uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    let number = !b.is_empty() && b.iter().all(u8::is_ascii_digit);
    let hex = b.len() >= 16 && b.iter().all(u8::is_ascii_hexdigit);
    uuid || number || hex
}

impl Default for PoliteLayer {
    fn default() -> Self {
        Self::new()
    }
}

/// # Building
impl PoliteLayer {
    /// The defaults: [`Backoff::vast_serverless`], a [`max_wait`](Self::max_wait) of 60 s,
    /// learned pacing on, no minimum interval, no generated keys, endpoints by host and route
    /// (see [`endpoint`](Self::endpoint)).
    pub fn new() -> Self {
        Self {
            config: Config {
                backoff: Backoff::default(),
                max_wait: Duration::from_secs(60),
                min_interval: None,
                intervals: HashMap::new(),
                learn: true,
                idempotency_keys: false,
                endpoint: Arc::new(host_and_route),
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
    /// host and route, such as `api.vast.ai/api/v0/instances/{id}/`), over
    /// [`min_interval`](Self::min_interval).
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

    /// How requests are grouped into endpoints, each paced on its own. By default an endpoint
    /// is the URI's host and path with the segments that look like ids (numbers, UUIDs, 16 or
    /// more hex digits) replaced by `{id}`, without the query: `/v1/items/12` and
    /// `/v1/items/13` are both `api.example.com/v1/items/{id}`, as a server limiting by route
    /// template counts them. A server whose limit spans many routes (one bucket per API token,
    /// as VMArea's) is better matched per host; one that counts methods apart, per method:
    ///
    /// ```
    /// # use tollgate_client::PoliteLayer;
    /// // One limit per host, whatever the path (the seed client's global `min_delay`).
    /// let per_host = PoliteLayer::new().endpoint(|_, uri| uri.host().unwrap_or_default().to_owned());
    /// // Per method and path: GET and POST counted apart.
    /// let per_method = PoliteLayer::new().endpoint(|method, uri| format!("{method} {}", uri.path()));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(uri: &str) -> String {
        host_and_route(&Method::GET, &uri.parse().unwrap())
    }

    #[test]
    fn ids_in_the_path_are_one_endpoint() {
        assert_eq!(
            endpoint("http://api.vast.ai/api/v0/instances/123/?owner=me"),
            "api.vast.ai/api/v0/instances/{id}/"
        );
        assert_eq!(
            endpoint(
                "https://h:8443/v1/vms/8e03978e-40d5-43e8-bc93-6894a57f9324/disks/00ff00ff00ff00ff"
            ),
            "h:8443/v1/vms/{id}/disks/{id}"
        );
        // Words, short hex, versions and mixed ids are kept.
        assert_eq!(
            endpoint("http://h/v1/cafe/deadbeef/i-0abc12/2.5"),
            "h/v1/cafe/deadbeef/i-0abc12/2.5"
        );
        assert_eq!(endpoint("/relative/7"), "/relative/{id}");
        assert_eq!(endpoint("http://h"), "h/");
    }
}
