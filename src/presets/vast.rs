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
//! - Behind every endpoint, a **per-IP ceiling** ([`Vast::ip_ceiling`], on by default): one
//!   more limit keyed by the client IP alone, across all identities and endpoints. The identity
//!   is made of raw values a client chooses (any bearer token or `api_key` makes a fresh
//!   bucket, valid or not, since the preset runs before authentication), so without it a
//!   client rotating them from one address would never be limited. The default,
//!   [`DEFAULT_IP_CEILING`] requests per minute per address (10 per second sustained, bursts
//!   up to 600), is far above what one client that honours the intervals sends (a GET per
//!   second per endpoint is 60 per minute per endpoint) and caps a rotating client at 10 per
//!   second instead of unlimited.
//!
//!   The trade-off: every client behind one address (a NAT, a corporate proxy that is not
//!   among the [trusted proxies](RateLimitBuilder::trusted_proxies)) shares one ceiling, so 50
//!   busy users behind one office address averaging over 12 requests a minute each hit it.
//!   Raise it, configure the proxy as trusted so clients are told apart, or turn it off with
//!   `ip_ceiling(None)` if such traffic matters more than rotating clients.
//!
//! A refused request gets a 429 with
//! `{"success": false, "error": "rate_limited", "msg": "API requests too frequent: endpoint threshold=0.5"}`
//! (the threshold is the endpoint's interval in seconds; a tripped burst cap reports it too), or
//! one of the plain-text forms of Vast's documentation ([`VastBody`]). The ceiling's 429 says
//! so: `API requests too frequent: per-IP ceiling=600 requests per 60s`. Vast itself sends no
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
    ip_ceiling: Option<Quota>,
    body: VastBody,
}

/// The default [per-IP ceiling](Vast::ip_ceiling), in requests per minute per client address.
pub const DEFAULT_IP_CEILING: u64 = 600;

impl Default for Vast {
    fn default() -> Self {
        Self::new()
    }
}

impl Vast {
    /// No interval yet: set at least one. The identity reads `Authorization: Bearer`, the
    /// [`SessionUser`] extension, the `api_key` query parameter and the client IP; the per-IP
    /// ceiling is [`DEFAULT_IP_CEILING`] per minute.
    pub fn new() -> Self {
        Self {
            default_interval: None,
            method_intervals: Vec::new(),
            endpoints: Vec::new(),
            session_user: KeyPart::extension::<SessionUser>().optional(),
            api_key_param: "api_key".to_owned(),
            // 600 per minute is a valid quota: this is never `None`.
            ip_ceiling: Quota::per_minute(DEFAULT_IP_CEILING).ok(),
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

    /// The per-IP ceiling: at most `quota` requests from one client address (grouped as the
    /// layer groups addresses: an IPv6 /64 by default), whatever identities they carry, across
    /// every endpoint the preset limits (requests that match no route are not counted). Default
    /// [`DEFAULT_IP_CEILING`] per minute; `None` turns it off. See the [module
    /// documentation](self) for why it exists and the trade-off for clients behind one NAT.
    ///
    /// Its 429 reads `API requests too frequent: per-IP ceiling=<limit> requests per <period>s`
    /// (except with [`VastBody::PlainTextTerse`], which stays terse).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::core::Quota;
    /// use tollgate::presets::vast::Vast;
    ///
    /// // A higher ceiling for an API used from behind office NATs...
    /// let nat_friendly = Vast::new()
    ///     .default_interval(Duration::from_secs(1))
    ///     .ip_ceiling(Quota::per_minute(3000)?);
    /// // ...or none, when clients are told apart some other way.
    /// let none = Vast::new()
    ///     .default_interval(Duration::from_secs(1))
    ///     .ip_ceiling(None);
    /// # Ok::<(), tollgate::core::QuotaError>(())
    /// ```
    pub fn ip_ceiling(mut self, quota: impl Into<Option<Quota>>) -> Self {
        self.ip_ceiling = quota.into();
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
                for (limit, body) in limits {
                    bodies.push((limit.rule().id(), body));
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
        self.body_saying(interval.map(|interval| {
            let mut detail = String::from("endpoint threshold=");
            push_seconds(&mut detail, interval);
            detail
        }))
    }

    /// The 429 body for the per-IP ceiling.
    fn ceiling_body(&self, quota: &Quota) -> Bytes {
        let noun = if quota.limit() == 1 {
            "request"
        } else {
            "requests"
        };
        let mut detail = format!("per-IP ceiling={} {noun} per ", quota.limit());
        push_seconds(&mut detail, quota.period());
        detail.push('s');
        self.body_saying(Some(detail))
    }

    /// `API requests too frequent`, then `: <detail>` unless the body is terse.
    fn body_saying(&self, detail: Option<String>) -> Bytes {
        let mut msg = String::from("API requests too frequent");
        if let (Some(detail), false) = (detail, self.body == VastBody::PlainTextTerse) {
            msg.push_str(": ");
            msg.push_str(&detail);
        }
        match self.body {
            VastBody::Json => Bytes::from(format!(
                r#"{{"success": false, "error": "rate_limited", "msg": "{msg}"}}"#
            )),
            VastBody::PlainText | VastBody::PlainTextTerse => Bytes::from(msg),
        }
    }

    /// Every limit, with its 429 body.
    fn limits(&self) -> Result<Vec<(Limit, Bytes)>, BuildError> {
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
            let body = self.body_for(Some(endpoint.interval));
            limits.push((self.limit(rule, scope.clone(), true), body.clone()));
            if let Some((calls, period)) = endpoint.max_calls {
                let cap = Rule::builder(format!("{name}.cap"), Quota::new(calls, period)?)
                    .algorithm(Algorithm::SlidingLog)
                    .build()?;
                limits.push((self.limit(cap, scope, true), body));
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
            limits.push((
                self.limit(rule, scope, true),
                self.body_for(Some(*interval)),
            ));
        }
        if let Some(interval) = self.default_interval {
            let mut scope = except_endpoints(Scope::all(), None);
            for (method, _) in &self.method_intervals {
                scope = scope.except(Scope::all().method(method.clone()));
            }
            let rule = Rule::builder("vast.default", Quota::min_interval(interval)?).build()?;
            limits.push((
                self.limit(rule, scope, false),
                self.body_for(Some(interval)),
            ));
        }
        if let Some(quota) = &self.ip_ceiling {
            // Keyed by address alone; applied to every request with a route, as the endpoint
            // limits are (a request without one is outside the preset).
            let rule = Rule::builder("vast.ip_ceiling", *quota).build()?;
            let routed = Scope::all().except(Scope::all().without(KeyPart::route()));
            let ceiling = Limit::new(rule).scope(routed).key(KeyPart::client_ip());
            limits.push((ceiling, self.ceiling_body(quota)));
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
        let ceiling = Quota::new(90, Duration::from_millis(1500)).unwrap();
        assert_eq!(
            Vast::new().ceiling_body(&ceiling),
            r#"{"success": false, "error": "rate_limited", "msg": "API requests too frequent: per-IP ceiling=90 requests per 1.5s"}"#
        );
    }

    #[test]
    fn the_ceiling_is_on_by_default_and_keyed_by_address_alone() {
        let limits = |vast: Vast| {
            vast.default_interval(Duration::from_secs(1))
                .limits()
                .unwrap()
        };
        let with = limits(Vast::new());
        let (ceiling, _) = with.last().unwrap();
        assert_eq!(ceiling.rule().name(), "vast.ip_ceiling");
        assert_eq!(
            *ceiling.rule().quota(),
            Quota::per_minute(DEFAULT_IP_CEILING).unwrap()
        );
        assert_eq!(ceiling.key, [KeyPart::client_ip()]);
        let without = limits(Vast::new().ip_ceiling(None));
        assert_eq!(without.len() + 1, with.len());
        assert!(without
            .iter()
            .all(|(l, _)| l.rule().name() != "vast.ip_ceiling"));
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
