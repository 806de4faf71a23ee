//! The Vast.ai model: a minimum interval between two admitted requests, per endpoint and per
//! identity.
//!
//! - The **endpoint** is the route template (`/api/v0/instances/{id}/`), never the raw path, so
//!   ids in the path share their endpoint's bucket. Requests that match no route (404s) are not
//!   limited by this preset.
//! - The **identity** is bearer token + session user + `api_key` query parameter + client IP.
//!   A request lacking a part simply has that part empty; changing any one part gives another
//!   bucket.
//! - Intervals can be set for every method ([`Vast::default_interval`]), per method
//!   ([`Vast::method_interval`]: GET and POST counted apart) and per endpoint
//!   ([`Endpoint`]), optionally with a max-calls-per-period cap for bursts on top of the
//!   interval. The most specific setting wins: endpoint and method, then endpoint, then method,
//!   then the default. A method-wide interval counts each endpoint apart; the default interval
//!   counts an endpoint's methods together.
//!
//! A refused request gets a 429 with
//! `{"success": false, "error": "rate_limited", "msg": "API requests too frequent: endpoint threshold=0.5"}`
//! (the threshold is the endpoint's interval in seconds; a tripped burst cap reports it too), or
//! one of the plain-text forms of Vast's documentation ([`VastBody`]). Vast itself sends no
//! `Retry-After`; tollgate does, so clients wait exactly as long as needed.
//!
//! ```
//! use std::time::Duration;
//! use http::Method;
//! use tollgate::presets::vast::{Endpoint, Vast};
//!
//! let limiter = Vast::new()
//!     .method_interval(Method::GET, Duration::from_secs(1))
//!     .method_interval(Method::PUT, Duration::from_secs(2))
//!     .endpoint(
//!         Endpoint::new(Method::POST, "/api/v0/bundles/", Duration::from_millis(500))
//!             .max_calls(5, Duration::from_secs(10)),
//!     )
//!     .builder()
//!     .build()?;
//! # Ok::<(), tollgate::BuildError>(())
//! ```

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tollgate_core::{Algorithm, MemoryStore, Quota, Rule};

use crate::key::{Identifier, KeyPart, SessionUser};
use crate::response::Denial;
use crate::{BuildError, Limit, RateLimitBuilder, RateLimitLayer, Scope};

/// What a refused request's body looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VastBody {
    /// `{"success": false, "error": "rate_limited", "msg": "API requests too frequent: endpoint threshold=1"}`
    /// (default).
    #[default]
    Json,
    /// `API requests too frequent: endpoint threshold=1`, as `text/plain`.
    PlainText,
    /// `API requests too frequent`, as `text/plain`.
    PlainTextTerse,
}

/// One endpoint's own interval, and optionally a cap on calls per period.
#[derive(Debug, Clone)]
#[must_use]
pub struct Endpoint {
    method: Option<Method>,
    route: String,
    interval: Duration,
    max_calls: Option<(u64, Duration)>,
}

impl Endpoint {
    /// At least `interval` between two admitted `method` requests to `route` (a template such
    /// as `/api/v0/instances/{id}/`), per identity.
    pub fn new(method: Method, route: impl Into<String>, interval: Duration) -> Self {
        Self {
            method: Some(method),
            route: route.into(),
            interval,
            max_calls: None,
        }
    }

    /// At least `interval` between two admitted requests to `route`, whatever their method.
    pub fn any_method(route: impl Into<String>, interval: Duration) -> Self {
        Self {
            method: None,
            route: route.into(),
            interval,
            max_calls: None,
        }
    }

    /// On top of the interval, at most `calls` in any `period` (exact: a sliding log).
    pub fn max_calls(mut self, calls: u64, period: Duration) -> Self {
        self.max_calls = Some((calls, period));
        self
    }

    /// A scope matching this endpoint's requests.
    fn scope(&self) -> Scope {
        let scope = Scope::all().path(&self.route);
        match &self.method {
            Some(method) => scope.method(method.clone()),
            None => scope,
        }
    }
}

/// Configures the Vast preset; [`builder`](Self::builder) turns it into a [`RateLimitBuilder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct Vast {
    default_interval: Option<Duration>,
    method_intervals: Vec<(Method, Duration)>,
    endpoints: Vec<Endpoint>,
    session_user: KeyPart,
    api_key_param: String,
    body: VastBody,
}

impl Default for Vast {
    fn default() -> Self {
        Self::new()
    }
}

impl Vast {
    /// No interval yet: set at least one. The identity reads `Authorization: Bearer`, the
    /// [`SessionUser`] extension, the `api_key` query parameter and the client IP.
    pub fn new() -> Self {
        Self {
            default_interval: None,
            method_intervals: Vec::new(),
            endpoints: Vec::new(),
            session_user: KeyPart::extension::<SessionUser>().optional(),
            api_key_param: "api_key".to_owned(),
            body: VastBody::Json,
        }
    }

    /// The interval of every endpoint and method not configured more specifically. An
    /// endpoint's methods share one bucket under it.
    pub fn default_interval(mut self, interval: Duration) -> Self {
        self.default_interval = Some(interval);
        self
    }

    /// The interval of every endpoint for one method (each endpoint counted apart, and apart
    /// from other methods).
    pub fn method_interval(mut self, method: Method, interval: Duration) -> Self {
        self.method_intervals.retain(|(m, _)| *m != method);
        self.method_intervals.push((method, interval));
        self
    }

    /// An endpoint's own interval (and burst cap).
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// The request extension naming the session's user (default [`SessionUser`]).
    pub fn session_user<T: Identifier>(mut self) -> Self {
        self.session_user = KeyPart::extension::<T>().optional();
        self
    }

    /// The query parameter carrying an API key (default `api_key`).
    pub fn api_key_param(mut self, name: impl Into<String>) -> Self {
        self.api_key_param = name.into();
        self
    }

    /// The body of a refused request (default JSON).
    pub fn body(mut self, body: VastBody) -> Self {
        self.body = body;
        self
    }

    /// The preset as a layer builder, with a [`MemoryStore`] until
    /// [`store`](RateLimitBuilder::store) says otherwise.
    pub fn builder(self) -> RateLimitBuilder<MemoryStore> {
        let mut builder = RateLimitLayer::builder();
        let mut bodies = Vec::new();
        match self.limits() {
            Ok(limits) => {
                for (limit, interval) in limits {
                    bodies.push((limit.rule().id(), self.body_for(interval)));
                    builder = builder.limit(limit);
                }
            }
            Err(error) => builder = builder.error(error),
        }
        let bodies: Arc<[(u64, Bytes)]> = bodies.into();
        let plain = self.body != VastBody::Json;
        let fallback = self.body_for(None);
        builder.on_denied(move |denial: &Denial<'_>| {
            let id = denial.rule().id();
            let body = bodies
                .iter()
                .find(|(rule, _)| *rule == id)
                .map_or_else(|| fallback.clone(), |(_, body)| body.clone());
            if plain {
                denial.plain_text(body)
            } else {
                denial.json(body)
            }
        })
    }

    /// The 429 body for an endpoint threshold, computed once.
    fn body_for(&self, interval: Option<Duration>) -> Bytes {
        let mut msg = String::from("API requests too frequent");
        if let (Some(interval), false) = (interval, self.body == VastBody::PlainTextTerse) {
            msg.push_str(": endpoint threshold=");
            push_seconds(&mut msg, interval);
        }
        match self.body {
            VastBody::Json => Bytes::from(format!(
                r#"{{"success": false, "error": "rate_limited", "msg": "{msg}"}}"#
            )),
            VastBody::PlainText | VastBody::PlainTextTerse => Bytes::from(msg),
        }
    }

    /// Every limit, with the interval its 429 reports.
    fn limits(&self) -> Result<Vec<(Limit, Option<Duration>)>, BuildError> {
        let error = |reason: String| BuildError::Preset {
            preset: "vast",
            reason,
        };
        if self.default_interval.is_none()
            && self.method_intervals.is_empty()
            && self.endpoints.is_empty()
        {
            return Err(error(
                "no interval is configured; set default_interval, method_interval or an endpoint"
                    .to_owned(),
            ));
        }
        for (i, a) in self.endpoints.iter().enumerate() {
            if self.endpoints[..i]
                .iter()
                .any(|b| b.route == a.route && b.method == a.method)
            {
                return Err(error(format!(
                    "endpoint {} {} is configured twice; configure it once",
                    a.method.as_ref().map_or("(any method)", Method::as_str),
                    a.route
                )));
            }
        }

        let mut limits = Vec::new();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let mut scope = endpoint.scope();
            if endpoint.method.is_none() {
                // Methods with their own setting on this endpoint leave it.
                for other in &self.endpoints {
                    if let (Some(method), true) = (&other.method, other.route == endpoint.route) {
                        scope = scope.except(Scope::all().method(method.clone()));
                    }
                }
            }
            let name = format!("vast.endpoint.{i}");
            let rule = Rule::builder(&name, Quota::min_interval(endpoint.interval)?).build()?;
            limits.push((
                self.limit(rule, scope.clone(), true),
                Some(endpoint.interval),
            ));
            if let Some((calls, period)) = endpoint.max_calls {
                let cap = Rule::builder(format!("{name}.cap"), Quota::new(calls, period)?)
                    .algorithm(Algorithm::SlidingLog)
                    .build()?;
                limits.push((self.limit(cap, scope, true), Some(endpoint.interval)));
            }
        }
        // Endpoints configured for `method` (or for any method) leave the method-wide interval.
        let except_endpoints = |mut scope: Scope, method: Option<&Method>| {
            for endpoint in &self.endpoints {
                let covered = match (method, &endpoint.method) {
                    (_, None) => true,
                    (Some(m), Some(e)) => m == e,
                    (None, Some(_)) => false,
                };
                if covered {
                    scope = scope.except(Scope::all().path(&endpoint.route));
                } else if method.is_none() {
                    scope = scope.except(endpoint.scope());
                }
            }
            scope
        };
        for (method, interval) in &self.method_intervals {
            let scope = except_endpoints(Scope::all().method(method.clone()), Some(method));
            let name = format!("vast.{}", method.as_str().to_ascii_lowercase());
            let rule = Rule::builder(name, Quota::min_interval(*interval)?).build()?;
            limits.push((self.limit(rule, scope, true), Some(*interval)));
        }
        if let Some(interval) = self.default_interval {
            let mut scope = except_endpoints(Scope::all(), None);
            for (method, _) in &self.method_intervals {
                scope = scope.except(Scope::all().method(method.clone()));
            }
            let rule = Rule::builder("vast.default", Quota::min_interval(interval)?).build()?;
            limits.push((self.limit(rule, scope, false), Some(interval)));
        }
        Ok(limits)
    }

    /// A limit keyed by endpoint (and method, when `by_method`) and identity.
    fn limit(&self, rule: Rule, scope: Scope, by_method: bool) -> Limit {
        let mut limit = Limit::new(rule).scope(scope).key(KeyPart::route());
        if by_method {
            limit = limit.key(KeyPart::method());
        }
        limit
            .key(KeyPart::bearer_token().optional())
            .key(self.session_user.clone())
            .key(KeyPart::query(self.api_key_param.clone()).optional())
            .key(KeyPart::client_ip())
    }
}

/// Seconds written naturally: `1`, `0.5`, `2.25`, `0.001`.
fn push_seconds(out: &mut String, d: Duration) {
    let _ = write!(out, "{}", d.as_secs());
    let nanos = d.subsec_nanos();
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(d: Duration) -> String {
        let mut s = String::new();
        push_seconds(&mut s, d);
        s
    }

    #[test]
    fn seconds_are_written_naturally() {
        assert_eq!(seconds(Duration::from_secs(1)), "1");
        assert_eq!(seconds(Duration::from_millis(500)), "0.5");
        assert_eq!(seconds(Duration::from_millis(2250)), "2.25");
        assert_eq!(seconds(Duration::from_millis(1)), "0.001");
        assert_eq!(seconds(Duration::from_nanos(1)), "0.000000001");
        assert_eq!(seconds(Duration::from_secs(120)), "120");
    }

    #[test]
    fn bodies() {
        let d = Some(Duration::from_millis(500));
        assert_eq!(
            Vast::new().body_for(d),
            r#"{"success": false, "error": "rate_limited", "msg": "API requests too frequent: endpoint threshold=0.5"}"#
        );
        assert_eq!(
            Vast::new().body(VastBody::PlainText).body_for(d),
            "API requests too frequent: endpoint threshold=0.5"
        );
        assert_eq!(
            Vast::new().body(VastBody::PlainTextTerse).body_for(d),
            "API requests too frequent"
        );
    }

    #[test]
    fn configuration_mistakes_are_build_errors() {
        assert!(matches!(
            Vast::new().builder().build(),
            Err(BuildError::Preset { .. })
        ));
        let twice = Vast::new()
            .endpoint(Endpoint::new(Method::GET, "/a", Duration::from_secs(1)))
            .endpoint(Endpoint::new(Method::GET, "/a", Duration::from_secs(2)));
        assert!(matches!(
            twice.builder().build(),
            Err(BuildError::Preset { .. })
        ));
        assert!(matches!(
            Vast::new()
                .default_interval(Duration::ZERO)
                .builder()
                .build(),
            Err(BuildError::Quota(_))
        ));
        assert!(matches!(
            Vast::new()
                .endpoint(Endpoint::new(
                    Method::GET,
                    "no-slash",
                    Duration::from_secs(1)
                ))
                .builder()
                .build(),
            Err(BuildError::Route(_))
        ));
    }
}
