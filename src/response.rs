//! What clients are told: rate-limit headers on every response, and the 429 (or 503, or 500)
//! the layer answers by itself.
//!
//! Admitted responses carry `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
//! `X-RateLimit-Reset`, figures of the most restrictive applicable rule
//! ([`Outcome::binding`](tollgate_core::Outcome::binding)). A denial adds `Retry-After` in whole
//! seconds, rounded up and at least 1 (a rounded-down value makes clients retry too early and
//! fail again), and a body built by the denial responder: a JSON default, a preset's, or a
//! closure given to [`RateLimitBuilder::on_denied`](crate::RateLimitBuilder::on_denied).
//!
//! Options ([`HeaderStyle`], [`ResetFormat`], `Access-Control-Expose-Headers`) are fixed when the
//! layer is built; header names and static values are precomputed, and small numbers come from a
//! shared table, so the common path formats nothing.

use std::fmt;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{ACCESS_CONTROL_EXPOSE_HEADERS, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri};
use http_body_util::Full;
use smallvec::SmallVec;
use tollgate_core::{Decision, Rule};

/// `X-RateLimit-Limit`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-11).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers-11).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// Which rate-limit fields responses carry. `Retry-After` is sent on every 429 whatever the
/// style: it is the standard (RFC 9110) way to say when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderStyle {
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (default): what most
    /// APIs send and most clients read.
    #[default]
    XRateLimit,
    /// The IETF draft-11 fields `RateLimit-Policy` and `RateLimit`, listing every applicable
    /// policy: `RateLimit-Policy: "per_token";q=600;w=60` and
    /// `RateLimit: "per_token";r=599;t=42`.
    Ietf,
    /// Both of the above.
    Both,
    /// Neither: clients learn nothing about the limits but `Retry-After` on a 429.
    Hidden,
}

impl HeaderStyle {
    fn x_ratelimit(self) -> bool {
        matches!(self, HeaderStyle::XRateLimit | HeaderStyle::Both)
    }

    fn ietf(self) -> bool {
        matches!(self, HeaderStyle::Ietf | HeaderStyle::Both)
    }
}

/// How `X-RateLimit-Reset` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResetFormat {
    /// Seconds until the window resets, rounded up (default).
    #[default]
    DeltaSeconds,
    /// The Unix time (seconds, rounded up) at which the window resets, from the system clock.
    UnixTime,
}

/// Why a request was refused, for a denial responder to build its answer from.
///
/// ```
/// use tollgate::{Denial, RateLimitLayer};
///
/// let layer = RateLimitLayer::builder()
///     .on_denied(|denial: &Denial<'_>| {
///         denial.json(format!(
///             r#"{{"error": "slow down", "rule": "{}", "retry_after": {}}}"#,
///             denial.rule().name(),
///             denial.retry_after_secs(),
///         ))
///     })
///     .build()?;
/// # Ok::<(), tollgate::BuildError>(())
/// ```
pub struct Denial<'a> {
    pub(crate) rule: &'a Rule,
    pub(crate) decision: &'a Decision,
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
}

/// Shows what was refused and why, never the request's secrets: the path without its query
/// (which may hold an `api_key`), and how many headers there were, not their values
/// (`Authorization`, cookies).
impl fmt::Debug for Denial<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Denial")
            .field("rule", &self.rule.name())
            .field("decision", self.decision)
            .field("method", self.method)
            .field("path", &self.uri.path())
            .field(
                "headers",
                &format_args!("<{} redacted>", self.headers.len()),
            )
            .finish()
    }
}

impl<'a> Denial<'a> {
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
        self.method
    }

    /// The refused request's URI. Mind that it may hold secrets (an `api_key` parameter).
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The refused request's headers. Mind that they hold secrets.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// A `429 Too Many Requests` with `body` as `application/json`. The body is sent as given:
    /// escape what you put in it.
    pub fn json(&self, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
        respond(StatusCode::TOO_MANY_REQUESTS, APPLICATION_JSON, body.into())
    }

    /// A `429 Too Many Requests` with `body` as `text/plain; charset=utf-8`.
    pub fn plain_text(&self, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
        respond(StatusCode::TOO_MANY_REQUESTS, TEXT_PLAIN, body.into())
    }
}

/// Builds the answer to a refused request.
pub(crate) type Responder = Arc<dyn Fn(&Denial<'_>) -> Response<Full<Bytes>> + Send + Sync>;

/// The default denial body: `{"success": false, "error": "Rate limit exceeded. Retry after N."}`.
pub(crate) fn default_responder() -> Responder {
    Arc::new(|denial: &Denial<'_>| {
        denial.json(format!(
            r#"{{"success": false, "error": "Rate limit exceeded. Retry after {}."}}"#,
            denial.retry_after_secs()
        ))
    })
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
        Bytes::from_static(br#"{"success": false, "error": "rate limiter unavailable"}"#),
    )
}

/// `500`: the server gives the layer no peer address to key clients by.
pub(crate) fn missing_peer_addr() -> Response<Full<Bytes>> {
    respond(
        StatusCode::INTERNAL_SERVER_ERROR,
        APPLICATION_JSON,
        Bytes::from_static(MISSING_PEER_ADDR_BODY.as_bytes()),
    )
}

/// What the 500 (and the log line) say when no peer address is found.
pub(crate) const MISSING_PEER_ADDR: &str = "rate limiter misconfigured: the request has no peer address; with axum serve the router with into_make_service_with_connect_info::<SocketAddr>(), with hyper insert the connection's SocketAddr as a request extension";
const MISSING_PEER_ADDR_BODY: &str = r#"{"success": false, "error": "rate limiter misconfigured: the request has no peer address; with axum serve the router with into_make_service_with_connect_info::<SocketAddr>(), with hyper insert the connection's SocketAddr as a request extension"}"#;

/// The rate-limit fields to add to one response, kept as figures until written.
#[derive(Debug, Default)]
pub(crate) struct RateLimitHeaders {
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    figures: Option<[u64; 3]>,
    retry_after: Option<u64>,
    /// `RateLimit-Policy` and `RateLimit`.
    ietf: Option<Box<[HeaderValue; 2]>>,
    /// `Access-Control-Expose-Headers`.
    expose: Option<HeaderValue>,
}

impl RateLimitHeaders {
    /// Writes the fields into a response. Rate-limit fields the response already has (from a
    /// custom denial responder, or an inner limiter) are left alone;
    /// `Access-Control-Expose-Headers` is appended to whatever a CORS layer set.
    pub(crate) fn apply(self, target: &mut HeaderMap) {
        let mut set = |name: HeaderName, value: HeaderValue| {
            if let http::header::Entry::Vacant(slot) = target.entry(name) {
                slot.insert(value);
            }
        };
        if let Some([limit, remaining, reset]) = self.figures {
            set(X_RATELIMIT_LIMIT, number(limit));
            set(X_RATELIMIT_REMAINING, number(remaining));
            set(X_RATELIMIT_RESET, number(reset));
        }
        if let Some(wait) = self.retry_after {
            set(RETRY_AFTER, number(wait));
        }
        if let Some(ietf) = self.ietf {
            let [policy, state] = *ietf;
            set(RATELIMIT_POLICY, policy);
            set(RATELIMIT, state);
        }
        if let Some(expose) = self.expose {
            target.append(ACCESS_CONTROL_EXPOSE_HEADERS, expose);
        }
    }
}

/// One applicable enforced check, as the header writer sees it.
pub(crate) struct Reported<'a> {
    pub(crate) name: &'a str,
    pub(crate) policy: &'a str,
    pub(crate) decision: &'a Decision,
}

/// How rate-limit headers are written; fixed when the layer is built.
pub(crate) struct HeaderWriter {
    pub(crate) style: HeaderStyle,
    pub(crate) reset: ResetFormat,
    /// `Access-Control-Expose-Headers`, when asked for.
    pub(crate) expose: Option<HeaderValue>,
}

impl HeaderWriter {
    pub(crate) fn new(style: HeaderStyle, reset: ResetFormat, expose: bool) -> Self {
        let expose = expose.then(|| {
            let mut names = SmallVec::<[&str; 6]>::new();
            if style.x_ratelimit() {
                names.extend([
                    "x-ratelimit-limit",
                    "x-ratelimit-remaining",
                    "x-ratelimit-reset",
                ]);
            }
            if style.ietf() {
                names.extend(["ratelimit-policy", "ratelimit"]);
            }
            names.push("retry-after");
            HeaderValue::from_str(&names.join(", "))
                .unwrap_or(HeaderValue::from_static("retry-after"))
        });
        Self {
            style,
            reset,
            expose,
        }
    }

    /// The headers for a decided request: figures of `binding`, every applicable policy in the
    /// IETF fields, and `Retry-After` when denied.
    pub(crate) fn headers<'a>(
        &self,
        binding: Option<&Decision>,
        applicable: impl Iterator<Item = Reported<'a>>,
    ) -> RateLimitHeaders {
        let mut out = RateLimitHeaders {
            expose: self.expose.clone(),
            ..RateLimitHeaders::default()
        };
        if let Some(d) = binding {
            if self.style.x_ratelimit() {
                let reset = match self.reset {
                    ResetFormat::DeltaSeconds => ceil_secs(d.reset_after),
                    ResetFormat::UnixTime => unix_secs_ceil(d.reset_after),
                };
                out.figures = Some([d.limit, d.remaining, reset]);
            }
            out.retry_after = d.retry_after.map(retry_after_secs);
        }
        if self.style.ietf() {
            let mut policy = String::new();
            let mut state = String::new();
            for (i, r) in applicable.enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                policy.push_str(sep);
                policy.push_str(r.policy);
                let _ = write!(
                    state,
                    "{sep}\"{}\";r={};t={}",
                    r.name,
                    r.decision.remaining,
                    ceil_secs(r.decision.reset_after)
                );
            }
            if let (Ok(p), Ok(s)) = (HeaderValue::try_from(policy), HeaderValue::try_from(state)) {
                if !p.is_empty() {
                    out.ietf = Some(Box::new([p, s]));
                }
            }
        }
        out
    }
}

/// The IETF `RateLimit-Policy` item of a rule: `"name";q=limit;w=seconds` (`w` only when the
/// period is whole seconds).
pub(crate) fn policy_item(rule: &Rule) -> String {
    let quota = rule.quota();
    let mut item = format!("\"{}\";q={}", rule.name(), quota.limit());
    let period = quota.period();
    if period.subsec_nanos() == 0 {
        let _ = write!(item, ";w={}", period.as_secs());
    }
    item
}

/// Seconds, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `Retry-After` seconds: rounded up, at least 1.
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    ceil_secs(d).max(1)
}

fn unix_secs_ceil(after: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    ceil_secs(now.saturating_add(after))
}

/// Numbers below this come from a shared table: cloning a cached value copies no bytes.
const CACHED_NUMBERS: u64 = 1024;

/// A number as a header value.
fn number(n: u64) -> HeaderValue {
    static SMALL: OnceLock<Box<[HeaderValue]>> = OnceLock::new();
    let table = SMALL.get_or_init(|| (0..CACHED_NUMBERS).map(HeaderValue::from).collect());
    usize::try_from(n)
        .ok()
        .and_then(|i| table.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(42)), 42);
        assert_eq!(ceil_secs(Duration::from_millis(41_001)), 42);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
    }

    #[test]
    fn numbers() {
        for n in [0, 1, 599, 1023, 1024, 99_999, u64::MAX] {
            assert_eq!(number(n).to_str().unwrap(), n.to_string());
        }
    }

    #[test]
    fn exposed_names_follow_the_style() {
        let w = HeaderWriter::new(HeaderStyle::Both, ResetFormat::DeltaSeconds, true);
        assert_eq!(
            w.expose.unwrap(),
            "x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset, ratelimit-policy, ratelimit, retry-after"
        );
        let w = HeaderWriter::new(HeaderStyle::Hidden, ResetFormat::DeltaSeconds, true);
        assert_eq!(w.expose.unwrap(), "retry-after");
        assert!(
            HeaderWriter::new(HeaderStyle::XRateLimit, ResetFormat::UnixTime, false)
                .expose
                .is_none()
        );
    }

    #[test]
    fn policy_items() {
        let rule = |q| Rule::builder("per_token", q).build().unwrap();
        let q = tollgate_core::Quota::per_minute(600).unwrap();
        assert_eq!(policy_item(&rule(q)), "\"per_token\";q=600;w=60");
        let q = tollgate_core::Quota::min_interval(Duration::from_millis(500)).unwrap();
        assert_eq!(policy_item(&rule(q)), "\"per_token\";q=1");
    }
}
