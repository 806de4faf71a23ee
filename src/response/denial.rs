//! Denials: the 429 a denial responder builds from a [`Denial`], and the 503 and 500 the layer
//! answers by itself. Every JSON body is written by `serde_json` (see [`json`](super::json)):
//! nothing is escaped by hand.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use http_body_util::Full;
use serde::Serialize;
use tollgate_core::{Decision, Rule};

use super::headers::{retry_after_secs, Repeated};
use super::json::{self, Failure, FailureTemplate};
use crate::head::RequestHead;

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// Why a request was refused, for a denial responder to build its answer from.
///
/// ```
/// use serde::Serialize;
/// use tollgate::{Denial, RateLimitLayer};
///
/// #[derive(Serialize)]
/// struct SlowDown<'a> {
///     error: &'a str,
///     rule: &'a str,
///     retry_after: u64,
/// }
///
/// let layer = RateLimitLayer::builder()
///     .on_denied(|denial: &Denial<'_>| {
///         denial.json(SlowDown {
///             error: "slow down",
///             rule: denial.rule().name(),
///             retry_after: denial.retry_after_secs(),
///         })
///     })
///     .build()?;
/// # Ok::<(), tollgate::BuildError>(())
/// ```
pub struct Denial<'a> {
    rule: &'a Rule,
    decision: &'a Decision,
    head: RequestHead<'a>,
}

/// Shows what was refused and why, never the request's secrets: the path without its query
/// (which may hold an `api_key`), and how many headers there were, not their values
/// (`Authorization`, cookies).
impl fmt::Debug for Denial<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Denial")
            .field("rule", &self.rule.name())
            .field("decision", self.decision)
            .field("method", self.head.method())
            .field("path", &self.head.uri().path())
            .field(
                "headers",
                &format_args!("<{} redacted>", self.head.headers().len()),
            )
            .finish()
    }
}

impl<'a> Denial<'a> {
    pub(crate) fn new(rule: &'a Rule, decision: &'a Decision, head: RequestHead<'a>) -> Self {
        Self {
            rule,
            decision,
            head,
        }
    }

    /// The rule that refused the request (the one with the longest wait when several did).
    pub fn rule(&self) -> &'a Rule {
        self.rule
    }

    /// That rule's decision.
    pub fn decision(&self) -> &'a Decision {
        self.decision
    }

    /// The exact time until the request would pass.
    pub fn retry_after(&self) -> Duration {
        self.decision.retry_after.unwrap_or(Duration::from_secs(1))
    }

    /// The `Retry-After` value: [`retry_after`](Self::retry_after) in whole seconds, rounded up,
    /// at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        retry_after_secs(self.retry_after())
    }

    /// The refused request's method.
    pub fn method(&self) -> &'a Method {
        self.head.method()
    }

    /// The refused request's URI. Mind that it may hold secrets (an `api_key` parameter).
    pub fn uri(&self) -> &'a Uri {
        self.head.uri()
    }

    /// The refused request's headers. Mind that they hold secrets.
    pub fn headers(&self) -> &'a HeaderMap {
        self.head.headers()
    }

    /// The refused request's head: method, URI, headers and extensions.
    pub fn request(&self) -> RequestHead<'a> {
        self.head
    }

    /// A `429 Too Many Requests` with `body` serialized as `application/json`, written the way
    /// tollgate writes its own bodies (`{"key": "value", "n": 1}`: a space after each `:` and
    /// `,`). A value that cannot be serialized (a map with non-string keys) is logged and
    /// answered with the default body.
    pub fn json(&self, body: impl Serialize) -> Response<Full<Bytes>> {
        match json::to_bytes(&body) {
            Ok(bytes) => self.json_bytes(bytes),
            Err(error) => {
                tracing::error!(%error, "a denial body could not be serialized; sending the default");
                default_denial(self)
            }
        }
    }

    /// A `429 Too Many Requests` with `body`, already JSON, as `application/json`. The body is
    /// sent as given: it is yours to escape.
    pub fn json_bytes(&self, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
        respond(StatusCode::TOO_MANY_REQUESTS, APPLICATION_JSON, body.into())
    }

    /// A `429 Too Many Requests` with `body` as `text/plain; charset=utf-8`.
    pub fn plain_text(&self, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
        respond(StatusCode::TOO_MANY_REQUESTS, TEXT_PLAIN, body.into())
    }
}

/// Builds the answer to a refused request.
pub(crate) type Responder = Arc<dyn Fn(&Denial<'_>) -> Response<Full<Bytes>> + Send + Sync>;

/// The default denial responder: [`default_denial`].
pub(crate) fn default_responder() -> Responder {
    Arc::new(default_denial)
}

/// The default 429: `{"success": false, "error": "Rate limit exceeded. Retry after N."}`.
pub(crate) fn default_denial(denial: &Denial<'_>) -> Response<Full<Bytes>> {
    static BODY: OnceLock<FailureTemplate> = OnceLock::new();
    // In a flood of denials the wait changes once a second: the body is made once a second.
    thread_local! {
        static LAST: Repeated<Bytes> = const { Repeated::new() };
    }
    let body = BODY.get_or_init(|| FailureTemplate::new("Rate limit exceeded. Retry after ", "."));
    let bytes = LAST.with(|last| last.get(denial.retry_after_secs(), |n| body.with(n)));
    denial.json_bytes(bytes)
}

fn respond(status: StatusCode, content_type: HeaderValue, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}

/// `503`: the store could not decide.
pub(crate) fn unavailable() -> Response<Full<Bytes>> {
    respond(
        StatusCode::SERVICE_UNAVAILABLE,
        APPLICATION_JSON,
        Failure::new(&"rate limiter unavailable").to_bytes(),
    )
}

/// `500`: the server gives the layer no peer address to key clients by.
pub(crate) fn missing_peer_addr() -> Response<Full<Bytes>> {
    respond(
        StatusCode::INTERNAL_SERVER_ERROR,
        APPLICATION_JSON,
        Failure::new(&MISSING_PEER_ADDR).to_bytes(),
    )
}

/// `400`: the request says its cost in a form that cannot be read (`what` names where).
pub(crate) fn unreadable_cost(what: &str) -> Response<Full<Bytes>> {
    let error = format!("{what} must be one whole number: it is what the request costs");
    respond(
        StatusCode::BAD_REQUEST,
        APPLICATION_JSON,
        Failure::new(&error).to_bytes(),
    )
}

/// `429` without `Retry-After`: the request costs more than the limit ever admits at once, so
/// no wait would let it pass.
pub(crate) fn cost_never_passes(rule: &str, cost: u64, capacity: u64) -> Response<Full<Bytes>> {
    let error = format!(
        "This request costs {cost}, more than the limit {rule:?} ever admits at once \
         ({capacity}): it can never pass; split it."
    );
    respond(
        StatusCode::TOO_MANY_REQUESTS,
        APPLICATION_JSON,
        Failure::new(&error).to_bytes(),
    )
}

/// What the 500 (and the log line) say when no peer address is found.
pub(crate) const MISSING_PEER_ADDR: &str = "rate limiter misconfigured: the request has no peer address; with axum serve the router with into_make_service_with_connect_info::<SocketAddr>(), with hyper insert the connection's SocketAddr as a request extension";

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn body(response: Response<Full<Bytes>>) -> Bytes {
        let collected = response.into_body().collect();
        match poll_ready_future(collected) {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        }
    }

    /// `Full` is ready at once: poll it without a runtime.
    fn poll_ready_future<F: std::future::Future>(future: F) -> F::Output {
        use std::task::{Context, Poll, Waker};
        let mut future = std::pin::pin!(future);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return out;
            }
        }
    }

    #[test]
    fn the_layers_own_bodies_keep_their_bytes() {
        assert_eq!(
            body(unavailable()),
            &br#"{"success": false, "error": "rate limiter unavailable"}"#[..]
        );
        assert_eq!(
            body(missing_peer_addr()),
            format!(r#"{{"success": false, "error": "{MISSING_PEER_ADDR}"}}"#).as_bytes()
        );
    }
}
