//! [`RateLimitBuilder`]: everything a layer is configured with, checked once by
//! [`build`](RateLimitBuilder::build).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use tollgate_core::{KeySecret, LogThrottle, MemoryStore, Store};

use crate::client_ip::{Cidr, ClientIpConfig, ForwardedHeader};
use crate::error::BuildError;
use crate::idempotency::Idempotency;
use crate::key::{KeyPart, Source};
use crate::layer::RateLimitLayer;
use crate::limit::Limit;
use crate::limiter::{CompiledLimit, CompiledSource, Limiter};
use crate::metrics::{Counters, LayerCounters};
use crate::response::{
    default_responder, policy_item, Denial, HeaderStyle, HeaderWriter, ResetFormat, Responder,
};
use crate::route::RoutePattern;
use crate::scope::{Scope, ScopeMatcher};

/// At most one line per this interval for each event that can happen on every request.
const LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Set once the public default secret has been warned about.
static WARNED_DEFAULT_SECRET: AtomicBool = AtomicBool::new(false);

/// Configures a [`RateLimitLayer`]; start with [`RateLimitLayer::builder`].
///
/// Mistakes (a bad route pattern, a bad CIDR, two limits with one name) are collected and
/// reported by [`build`](Self::build), so a chain of calls needs one `?`.
///
/// ```
/// use std::time::Duration;
/// use tollgate::core::{MemoryStore, Quota, Rule};
/// use tollgate::{HeaderStyle, KeyPart, Limit, RateLimitLayer, Scope};
///
/// let layer = RateLimitLayer::builder()
///     .store(MemoryStore::new())
///     .trusted_proxies(["10.0.0.0/8"])
///     .limit(
///         Limit::new(Rule::builder("per_ip", Quota::per_minute(100)?).build()?)
///             .key(KeyPart::client_ip()),
///     )
///     .limit(
///         Limit::new(Rule::builder("search", Quota::min_interval(Duration::from_secs(1))?).build()?)
///             .scope(Scope::all().path("/search"))
///             .key(KeyPart::client_ip()),
///     )
///     .header_style(HeaderStyle::Both)
///     .expose_headers(true)
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use]
pub struct RateLimitBuilder<S = MemoryStore> {
    store: S,
    secret: KeySecret,
    limits: Vec<Limit>,
    client_ip: ClientIpConfig,
    routes: Vec<String>,
    idempotency: Option<Idempotency>,
    style: HeaderStyle,
    reset: ResetFormat,
    expose: bool,
    responder: Option<Responder>,
    errors: Vec<BuildError>,
}

impl<S> std::fmt::Debug for RateLimitBuilder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("limits", &self.limits)
            .field("client_ip", &self.client_ip)
            .field("routes", &self.routes)
            .field("idempotency", &self.idempotency)
            .field("style", &self.style)
            .field("reset", &self.reset)
            .field("expose", &self.expose)
            .field("custom_responder", &self.responder.is_some())
            .field("errors", &self.errors)
            .finish_non_exhaustive()
    }
}

impl RateLimitBuilder<MemoryStore> {
    pub(crate) fn new() -> Self {
        Self {
            store: MemoryStore::new(),
            secret: KeySecret::DEFAULT,
            limits: Vec::new(),
            client_ip: ClientIpConfig::default(),
            routes: Vec::new(),
            idempotency: None,
            style: HeaderStyle::default(),
            reset: ResetFormat::default(),
            expose: false,
            responder: None,
            errors: Vec::new(),
        }
    }
}

impl<S: Store> RateLimitBuilder<S> {
    /// Where the limits' state lives (default: a [`MemoryStore`], this process only). Any
    /// [`Store`] works: a `MemoryStore` with a `ManualClock` in tests, the Redis store to share
    /// limits between instances. When the store fails, the layer answers 503 with a JSON body.
    pub fn store<S2: Store>(self, store: S2) -> RateLimitBuilder<S2> {
        RateLimitBuilder {
            store,
            secret: self.secret,
            limits: self.limits,
            client_ip: self.client_ip,
            routes: self.routes,
            idempotency: self.idempotency,
            style: self.style,
            reset: self.reset,
            expose: self.expose,
            responder: self.responder,
            errors: self.errors,
        }
    }

    /// The secret keying the digests of client identities (default: the public
    /// [`KeySecret::DEFAULT`]). Set your own, the same on every instance sharing a store, so
    /// that whoever reads the store cannot test guesses against the digests.
    pub fn key_secret(mut self, secret: KeySecret) -> Self {
        self.secret = secret;
        self
    }

    /// Adds a limit. Every applicable limit is checked, all-or-nothing: a request refused by
    /// one is charged by none.
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limits.push(limit);
        self
    }

    /// Peers in these ranges (CIDR notation: `10.0.0.0/8`, `::1`) are proxies whose forwarding
    /// header is believed; see [`client_ip`](crate::client_ip). Default: none, so the peer
    /// address is the client.
    pub fn trusted_proxies<I>(mut self, ranges: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        for range in ranges {
            match range.as_ref().parse::<Cidr>() {
                Ok(cidr) => self.client_ip.trusted.push(cidr),
                Err(e) => self.errors.push(e.into()),
            }
        }
        self
    }

    /// Which forwarding header the trusted proxies write (default `X-Forwarded-For`). Only
    /// that one is read.
    pub fn forwarded_header(mut self, header: ForwardedHeader) -> Self {
        self.client_ip.header = header;
        self
    }

    /// IPv4 clients are grouped by this prefix (default /32: each address alone).
    pub fn ipv4_prefix(mut self, prefix: u8) -> Self {
        if prefix > 32 {
            self.errors.push(BuildError::Prefix {
                family: "IPv4",
                prefix,
                max: 32,
            });
        }
        self.client_ip.ipv4_prefix = prefix;
        self
    }

    /// IPv6 clients are grouped by this prefix (default /64, the block one subscriber usually
    /// holds, so a client cannot get fresh buckets by rotating addresses within it).
    pub fn ipv6_prefix(mut self, prefix: u8) -> Self {
        if prefix > 128 {
            self.errors.push(BuildError::Prefix {
                family: "IPv6",
                prefix,
                max: 128,
            });
        }
        self.client_ip.ipv6_prefix = prefix;
        self
    }

    /// Route templates for services without a router (a plain hyper service): a request's
    /// route is the first pattern matching its path (see [`RoutePattern`]). Behind axum the
    /// router's `MatchedPath` is used and these are only a fallback.
    pub fn routes<I>(mut self, patterns: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.routes.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// Lets a request that repeats an idempotency key already charged for the same request
    /// pass free the limits whose rule [honours
    /// replays](tollgate_core::RuleBuilder::honour_replays); every other limit charges it as
    /// usual. See [`Idempotency`]. Default: off.
    pub fn idempotency(mut self, idempotency: Idempotency) -> Self {
        self.idempotency = Some(idempotency);
        self
    }

    /// Which rate-limit fields responses carry (default `X-RateLimit-*`).
    pub fn header_style(mut self, style: HeaderStyle) -> Self {
        self.style = style;
        self
    }

    /// How `X-RateLimit-Reset` is written (default: delta seconds).
    pub fn reset_format(mut self, format: ResetFormat) -> Self {
        self.reset = format;
        self
    }

    /// Adds `Access-Control-Expose-Headers` naming the rate-limit fields, so that browser code
    /// on another origin can read them (default: off).
    pub fn expose_headers(mut self, expose: bool) -> Self {
        self.expose = expose;
        self
    }

    /// Builds the answer to a refused request (default: a 429 with
    /// `{"success": false, "error": "Rate limit exceeded. Retry after N."}`). The layer adds the
    /// rate-limit headers the response does not already have.
    pub fn on_denied<F>(mut self, responder: F) -> Self
    where
        F: Fn(&Denial<'_>) -> Response<Full<Bytes>> + Send + Sync + 'static,
    {
        self.responder = Some(Arc::new(responder));
        self
    }

    /// Records a mistake found while configuring, reported by [`build`](Self::build).
    pub(crate) fn error(mut self, error: BuildError) -> Self {
        self.errors.push(error);
        self
    }

    /// Checks the configuration and builds the layer.
    pub fn build(self) -> Result<RateLimitLayer<S>, BuildError> {
        if let Some(error) = self.errors.into_iter().next() {
            return Err(error);
        }
        let mut sources = SourceTable::default();
        let mut limits = Vec::with_capacity(self.limits.len());
        for limit in self.limits {
            if limits
                .iter()
                .any(|l: &CompiledLimit| l.rule.name() == limit.rule.name())
            {
                return Err(BuildError::DuplicateRule(limit.rule.name().to_owned()));
            }
            let scope = compile_scope(&limit.scope, &mut sources)?;
            let parts = limit
                .key
                .iter()
                .map(|part| (sources.index(part), part.required))
                .collect();
            limits.push(CompiledLimit {
                policy: policy_item(&limit.rule).into_boxed_str(),
                rule: limit.rule,
                scope,
                parts,
                counters: Counters::default(),
                shadow_log: LogThrottle::new(LOG_INTERVAL),
            });
        }
        if let Some(idempotency) = &self.idempotency {
            idempotency.validate()?;
        }
        if S::SHARED
            && self.secret == KeySecret::DEFAULT
            && !WARNED_DEFAULT_SECRET.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "tollgate: a shared store (Redis) is keyed with the public default KeySecret, so \
                 whoever can read the store can test guesses (an IP address has few possible \
                 values) against its key digests; set RateLimitBuilder::key_secret to a secret of \
                 your own, the same on every instance (logged once)"
            );
        }
        let routes = self
            .routes
            .iter()
            .map(|p| RoutePattern::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        let limiter = Limiter {
            store: self.store,
            secret: self.secret,
            sources: sources.0.into_boxed_slice(),
            limits: limits.into_boxed_slice(),
            client_ip: self.client_ip,
            routes: routes.into_boxed_slice(),
            idempotency: self.idempotency,
            headers: HeaderWriter::new(self.style, self.reset, self.expose),
            responder: self.responder.unwrap_or_else(default_responder),
            counters: LayerCounters::default(),
            warned_no_peer: AtomicBool::new(false),
            warned_no_route: AtomicBool::new(false),
            store_log: LogThrottle::new(LOG_INTERVAL),
        };
        Ok(RateLimitLayer::from_limiter(Arc::new(limiter)))
    }
}

/// The distinct key parts read by any limit or scope, numbered.
#[derive(Default)]
struct SourceTable(Vec<CompiledSource>);

impl SourceTable {
    fn index(&mut self, part: &KeyPart) -> usize {
        self.find(&part.source).unwrap_or_else(|| {
            self.0.push(CompiledSource {
                tag: part.source.tag(),
                source: part.source.clone(),
            });
            self.0.len() - 1
        })
    }

    fn find(&self, source: &Source) -> Option<usize> {
        self.0.iter().position(|s| s.source == *source)
    }
}

fn compile_scope(scope: &Scope, sources: &mut SourceTable) -> Result<ScopeMatcher, BuildError> {
    Ok(ScopeMatcher {
        paths: scope
            .paths
            .iter()
            .map(|p| RoutePattern::parse(p))
            .collect::<Result<_, _>>()?,
        methods: scope.methods.iter().cloned().collect(),
        without: scope.without.iter().map(|p| sources.index(p)).collect(),
        except: scope
            .except
            .iter()
            .map(|s| compile_scope(s, sources))
            .collect::<Result<_, _>>()?,
    })
}
