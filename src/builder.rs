//! [`RateLimitBuilder`]: everything a layer is configured with, checked once by
//! [`build`](RateLimitBuilder::build).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use tollgate_core::{KeySecret, MemoryStore, Store};

use crate::client_ip::{Cidr, ClientIpConfig, ForwardedHeader};
use crate::error::BuildError;
use crate::exempt::Exemptions;
use crate::head::RequestHead;
use crate::idempotency::Idempotency;
use crate::key::KeyPart;
use crate::layer::RateLimitLayer;
use crate::limit::Limit;
use crate::limiter::{erase_client_quotas, Limiter, LoadQuotas};
use crate::response::{Denial, HeaderStyle, ResetFormat, Responder};

/// Set once the public default secret has been warned about.
static WARNED_DEFAULT_SECRET: AtomicBool = AtomicBool::new(false);

/// Configures a [`RateLimitLayer`]; start with [`RateLimitLayer::builder`], or from a
/// [preset](crate::presets) (`RateLimitBuilder::from(VmArea::new())`).
///
/// Mistakes (a bad quota, a bad route pattern, a bad CIDR, two limits with one name) are
/// collected and reported together by [`build`](Self::build), so a chain of calls needs one
/// `?`.
///
/// ```
/// use std::time::Duration;
/// use tollgate::{HeaderStyle, KeyPart, Limit, MemoryStore, RateLimitLayer, Scope};
///
/// let layer = RateLimitLayer::builder()
///     .store(MemoryStore::new())
///     .trusted_proxies(["10.0.0.0/8"])
///     .limit(Limit::per_minute("per_ip", 100).key(KeyPart::client_ip()))
///     .limit(
///         Limit::min_interval("search", Duration::from_secs(1))
///             .scope(Scope::all().path("/search"))
///             .key(KeyPart::client_ip()),
///     )
///     .header_style(HeaderStyle::Both)
///     .expose_headers(true)
///     .build()?;
/// # Ok::<(), tollgate::BuildError>(())
/// ```
#[must_use]
pub struct RateLimitBuilder<S = MemoryStore> {
    store: S,
    settings: Settings,
    /// Mistakes found so far, in the order they were made.
    mistakes: Vec<BuildError>,
}

/// Everything but the store: what [`Limiter::new`] compiles.
pub(crate) struct Settings {
    pub(crate) secret: KeySecret,
    pub(crate) limits: Vec<Limit>,
    pub(crate) client_ip: ClientIpConfig,
    pub(crate) routes: Vec<String>,
    pub(crate) idempotency: Option<Idempotency>,
    pub(crate) exempt: Exemptions,
    pub(crate) client_quotas: Option<(LoadQuotas, std::time::Duration)>,
    pub(crate) near_limit_percent: u8,
    pub(crate) style: HeaderStyle,
    pub(crate) reset: ResetFormat,
    pub(crate) expose: bool,
    pub(crate) responder: Option<Responder>,
}

impl<S> std::fmt::Debug for RateLimitBuilder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.settings;
        f.debug_struct("RateLimitBuilder")
            .field("limits", &s.limits)
            .field("client_ip", &s.client_ip)
            .field("routes", &s.routes)
            .field("idempotency", &s.idempotency)
            .field("exempt", &s.exempt)
            .field("style", &s.style)
            .field("reset", &s.reset)
            .field("expose", &s.expose)
            .field("custom_responder", &s.responder.is_some())
            .field("mistakes", &self.mistakes)
            .finish_non_exhaustive()
    }
}

impl RateLimitBuilder<MemoryStore> {
    pub(crate) fn new() -> Self {
        Self {
            store: MemoryStore::new(),
            settings: Settings {
                secret: KeySecret::DEFAULT,
                limits: Vec::new(),
                client_ip: ClientIpConfig::default(),
                routes: Vec::new(),
                idempotency: None,
                exempt: Exemptions::default(),
                client_quotas: None,
                near_limit_percent: 20,
                style: HeaderStyle::default(),
                reset: ResetFormat::default(),
                expose: false,
                responder: None,
            },
            mistakes: Vec::new(),
        }
    }
}

/// # Limits
impl<S: Store> RateLimitBuilder<S> {
    /// Adds a limit. Every applicable limit is checked, all-or-nothing: a request refused by
    /// one is charged by none. A mistake the limit carries is reported by
    /// [`build`](Self::build).
    ///
    /// ```
    /// use tollgate::{KeyPart, Limit, RateLimitLayer, Scope};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .limit(Limit::per_minute("login", 10).scope(Scope::all().path("/login")).key(KeyPart::client_ip()))
    ///     .build()?;
    /// # Ok::<(), tollgate::BuildError>(())
    /// ```
    pub fn limit(mut self, limit: Limit) -> Self {
        if let Some(mistake) = limit.mistake() {
            self.mistakes.push(mistake.clone());
        }
        self.settings.limits.push(limit);
        self
    }

    /// Adds several limits, in order.
    pub fn limits(self, limits: impl IntoIterator<Item = Limit>) -> Self {
        limits.into_iter().fold(self, Self::limit)
    }

    /// Reads client quotas that an operator changes at runtime from `source` (for a fleet, the
    /// Redis-backed `tollgate_redis::RedisClientQuotas`), again every `refresh`: a change
    /// reaches every instance within one interval. A client quota there wins over those given
    /// in code ([`Limit::quota_for`], [`Limit::tier`]); it applies to limits keyed by one part,
    /// whose value's digest ([`RateLimitLayer::client_digest`]) names the client. Until the
    /// first read completes, and while reads fail, the last table read (at first none) stays.
    /// The layer must be built inside a Tokio runtime (the reads run on it).
    ///
    /// [`RateLimitLayer::client_digest`]: crate::RateLimitLayer::client_digest
    pub fn client_quotas<Q: tollgate_core::ClientQuotas>(
        mut self,
        source: Q,
        refresh: std::time::Duration,
    ) -> Self {
        self.settings.client_quotas = Some((erase_client_quotas(source), refresh));
        self
    }

    /// Lets a request that repeats an idempotency key already charged for the same request
    /// pass free the limits that [honour replays](Limit::honour_replays); every other limit
    /// charges it as usual. See [`Idempotency`]. Default: off.
    ///
    /// ```
    /// use tollgate::{Idempotency, KeyPart, Limit, RateLimitLayer, TokenId};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .limit(Limit::per_minute("per_token", 600).honour_replays(true).key(KeyPart::extension::<TokenId>()))
    ///     .idempotency(Idempotency::new())
    ///     .build()?;
    /// # Ok::<(), tollgate::BuildError>(())
    /// ```
    pub fn idempotency(mut self, idempotency: Idempotency) -> Self {
        self.settings.idempotency = Some(idempotency);
        self
    }
}

/// # Store
impl<S: Store> RateLimitBuilder<S> {
    /// Where the limits' state lives (default: a [`MemoryStore`], this process only). Any
    /// [`Store`] works: a `MemoryStore` with a `ManualClock` in tests, the Redis store to share
    /// limits between instances. When the store fails, the layer answers 503 with a JSON body.
    ///
    /// ```
    /// use tollgate::{ManualClock, MemoryStore, RateLimitLayer};
    ///
    /// let clock = ManualClock::new(0);
    /// let layer = RateLimitLayer::builder()
    ///     .store(MemoryStore::builder().clock(clock.clone()).build())
    ///     .build()?;
    /// # Ok::<(), tollgate::BuildError>(())
    /// ```
    pub fn store<S2: Store>(self, store: S2) -> RateLimitBuilder<S2> {
        RateLimitBuilder {
            store,
            settings: self.settings,
            mistakes: self.mistakes,
        }
    }

    /// The secret keying the digests of client identities (default: the public
    /// [`KeySecret::DEFAULT`]). Set your own, the same on every instance sharing a store, so
    /// that whoever reads the store cannot test guesses against the digests.
    pub fn key_secret(mut self, secret: KeySecret) -> Self {
        self.settings.secret = secret;
        self
    }
}

/// # Clients
impl<S: Store> RateLimitBuilder<S> {
    /// Peers in these ranges (CIDR notation: `10.0.0.0/8`, `::1`) are proxies whose forwarding
    /// header is believed; see [`client_ip`](crate::client_ip). Default: none, so the peer
    /// address is the client.
    ///
    /// ```
    /// use tollgate::{ForwardedHeader, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .trusted_proxies(["10.0.0.0/8", "fd00::/8"])
    ///     .forwarded_header(ForwardedHeader::Forwarded)
    ///     .build()?;
    /// # Ok::<(), tollgate::BuildError>(())
    /// ```
    pub fn trusted_proxies<I>(mut self, ranges: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let ranges = self.ranges(ranges);
        self.settings.client_ip.trusted.extend(ranges);
        self
    }

    /// Which forwarding header the trusted proxies write (default `X-Forwarded-For`). Only
    /// that one is read.
    pub fn forwarded_header(mut self, header: ForwardedHeader) -> Self {
        self.settings.client_ip.header = header;
        self
    }

    /// IPv4 clients are grouped by this prefix (default /32: each address alone).
    pub fn ipv4_prefix(mut self, prefix: u8) -> Self {
        self.prefix("IPv4", prefix, 32);
        self.settings.client_ip.ipv4_prefix = prefix;
        self
    }

    /// IPv6 clients are grouped by this prefix (default /64, the block one subscriber usually
    /// holds, so a client cannot get fresh buckets by rotating addresses within it).
    ///
    /// ```
    /// use tollgate::RateLimitLayer;
    ///
    /// // Count each /56 as one client.
    /// let layer = RateLimitLayer::builder().ipv6_prefix(56).build()?;
    /// # Ok::<(), tollgate::BuildError>(())
    /// ```
    pub fn ipv6_prefix(mut self, prefix: u8) -> Self {
        self.prefix("IPv6", prefix, 128);
        self.settings.client_ip.ipv6_prefix = prefix;
        self
    }

    /// The ranges that parse; a mistake for each one that does not.
    fn ranges<I>(&mut self, ranges: I) -> Vec<Cidr>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        ranges
            .into_iter()
            .filter_map(|range| {
                range
                    .as_ref()
                    .parse::<Cidr>()
                    .map_err(|e| self.mistakes.push(e.into()))
                    .ok()
            })
            .collect()
    }

    fn prefix(&mut self, family: &'static str, prefix: u8, max: u8) {
        if prefix > max {
            self.mistakes.push(BuildError::Prefix {
                family,
                prefix,
                max,
            });
        }
    }
}

/// # Exemptions
///
/// An exempt request passes every limit uncounted and uncharged, and its response carries no
/// rate-limit headers (it has no limit to report), like a request no limit applies to.
impl<S: Store> RateLimitBuilder<S> {
    /// Exempts clients whose address (as [`client_ip`](crate::client_ip) finds it: the peer,
    /// or behind trusted proxies the forwarded client) is in one of these ranges.
    ///
    /// ```
    /// use tollgate::{KeyPart, Limit, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .limit(Limit::per_minute("per_ip", 100).key(KeyPart::client_ip()))
    ///     .exempt_ips(["10.0.0.0/8", "::1"]) // the office, and health checks from the host
    ///     .build()?;
    /// # Ok::<(), tollgate::BuildError>(())
    /// ```
    pub fn exempt_ips<I>(mut self, ranges: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let ranges = self.ranges(ranges);
        self.settings.exempt.ranges.extend(ranges);
        self
    }

    /// Exempts requests whose `part` has one of `values` (and no other value): an internal
    /// service's API key, a monitoring token. The values are digested with the key secret
    /// when the layer is built and are not kept.
    ///
    /// ```
    /// use http::HeaderName;
    /// use tollgate::{KeyPart, Limit, RateLimitLayer};
    ///
    /// let api_key = KeyPart::header(HeaderName::from_static("x-api-key"));
    /// let layer = RateLimitLayer::builder()
    ///     .limit(Limit::per_minute("per_key", 600).key(api_key.clone()))
    ///     .exempt_identities(api_key, ["internal-batch-key"])
    ///     .build()?;
    /// # Ok::<(), tollgate::BuildError>(())
    /// ```
    pub fn exempt_identities<V: AsRef<[u8]>>(
        mut self,
        part: KeyPart,
        values: impl IntoIterator<Item = V>,
    ) -> Self {
        let values = values.into_iter().map(|v| v.as_ref().into()).collect();
        self.settings.exempt.identities.push((part, values));
        self
    }

    /// Exempts the requests for which `predicate` is true.
    ///
    /// ```
    /// use tollgate::{KeyPart, Limit, RateLimitLayer, RequestHead};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .limit(Limit::per_minute("per_ip", 100).key(KeyPart::client_ip()))
    ///     .exempt_if(|head: &RequestHead<'_>| head.uri().path() == "/metrics")
    ///     .build()?;
    /// # Ok::<(), tollgate::BuildError>(())
    /// ```
    pub fn exempt_if<F>(mut self, predicate: F) -> Self
    where
        F: Fn(&RequestHead<'_>) -> bool + Send + Sync + 'static,
    {
        self.settings.exempt.predicates.push(Arc::new(predicate));
        self
    }
}

/// # Routes
impl<S: Store> RateLimitBuilder<S> {
    /// Route templates for services without a router (a plain hyper service): a request's
    /// route is the first pattern matching its path (see [`RoutePattern`](crate::RoutePattern)).
    /// Behind axum the router's `MatchedPath` is used and these are only a fallback.
    ///
    /// ```
    /// use tollgate::{KeyPart, Limit, RateLimitLayer};
    ///
    /// // Per client and endpoint: /vms/1 and /vms/2 share the bucket of /vms/{id}.
    /// let layer = RateLimitLayer::builder()
    ///     .routes(["/vms/{id}", "/vms"])
    ///     .limit(Limit::per_second("per_endpoint", 5).key(KeyPart::route()).key(KeyPart::client_ip()))
    ///     .build()?;
    /// # Ok::<(), tollgate::BuildError>(())
    /// ```
    pub fn routes<I>(mut self, patterns: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.settings
            .routes
            .extend(patterns.into_iter().map(Into::into));
        self
    }
}

/// # Responses
impl<S: Store> RateLimitBuilder<S> {
    /// Which rate-limit fields responses carry (default `X-RateLimit-*`).
    pub fn header_style(mut self, style: HeaderStyle) -> Self {
        self.settings.style = style;
        self
    }

    /// How `X-RateLimit-Reset` is written (default: delta seconds).
    pub fn reset_format(mut self, format: ResetFormat) -> Self {
        self.settings.reset = format;
        self
    }

    /// An admitted request that leaves less than `percent` of a limit is *near the limit*
    /// (default 20, Envoy's near-limit signal): counted in
    /// [`LimitMetrics::near_limit`](crate::LimitMetrics::near_limit) and, with the `metrics`
    /// feature, `tollgate_near_limit_total{rule}`. Above 100 is taken as 100.
    pub fn near_limit_percent(mut self, percent: u8) -> Self {
        self.settings.near_limit_percent = percent.min(100);
        self
    }

    /// Adds `Access-Control-Expose-Headers` naming the rate-limit fields, so that browser code
    /// on another origin can read them (default: off).
    pub fn expose_headers(mut self, expose: bool) -> Self {
        self.settings.expose = expose;
        self
    }

    /// Builds the answer to a refused request (default: a 429 with
    /// `{"success": false, "error": "Rate limit exceeded. Retry after N."}`). The layer adds the
    /// rate-limit headers the response does not already have.
    ///
    /// ```
    /// use tollgate::{Denial, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .on_denied(|denial: &Denial<'_>| {
    ///         denial.plain_text(format!("slow down: retry in {} s", denial.retry_after_secs()))
    ///     })
    ///     .build()?;
    /// # Ok::<(), tollgate::BuildError>(())
    /// ```
    pub fn on_denied<F>(mut self, responder: F) -> Self
    where
        F: Fn(&Denial<'_>) -> Response<Full<Bytes>> + Send + Sync + 'static,
    {
        self.settings.responder = Some(Arc::new(responder));
        self
    }
}

/// # Building
impl<S: Store> RateLimitBuilder<S> {
    /// Records a preset's own mistake, reported by [`build`](Self::build).
    pub(crate) fn mistake(mut self, mistake: BuildError) -> Self {
        self.mistakes.push(mistake);
        self
    }

    /// Checks the configuration and builds the layer: every mistake is reported, the one
    /// alone, several as [`BuildError::Several`].
    pub fn build(self) -> Result<RateLimitLayer<S>, BuildError> {
        let store = Arc::new(self.store);
        let limiter = compile(&store, self.settings, self.mistakes)?;
        Ok(RateLimitLayer::from_limiter(store, limiter))
    }

    /// The settings compiled on `store` (not this builder's own): how a running layer takes a
    /// new configuration.
    pub(crate) fn compile_on<T: Store>(self, store: &Arc<T>) -> Result<Limiter<T>, BuildError> {
        compile(store, self.settings, self.mistakes)
    }
}

fn compile<S: Store>(
    store: &Arc<S>,
    settings: Settings,
    mistakes: Vec<BuildError>,
) -> Result<Limiter<S>, BuildError> {
    let shared_default_secret = S::SHARED && settings.secret == KeySecret::DEFAULT;
    let limiter = Limiter::new(Arc::clone(store), settings, mistakes)?;
    if shared_default_secret && !WARNED_DEFAULT_SECRET.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "tollgate: a shared store (Redis) is keyed with the public default KeySecret, so \
             whoever can read the store can test guesses (an IP address has few possible \
             values) against its key digests; set RateLimitBuilder::key_secret to a secret of \
             your own, the same on every instance (logged once)"
        );
    }
    Ok(limiter)
}
