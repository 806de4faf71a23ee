//! A [`Limit`]: a core [`Rule`] (how much, measured how) placed on HTTP requests: which requests
//! it applies to ([`Scope`]) and who it counts separately ([`KeyPart`]s).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use smallvec::SmallVec;
use tollgate_core::{Algorithm, Quota, QuotaError, Rule};

use crate::error::{BuildError, InvalidQuota};
use crate::head::RequestHead;
use crate::key::KeyPart;
use crate::scope::Scope;

/// A rule, the requests it applies to, and the parts of its key, declared in one expression.
///
/// A limit without key parts is one bucket shared by every request in its scope (a global cap).
/// Mistakes (a zero limit, a bad name, a cost above what the quota can ever admit) are kept in
/// the limit and reported, naming it, by [`RateLimitBuilder::build`](crate::RateLimitBuilder::build),
/// together with every other mistake: a chain of calls needs no `?` until then.
///
/// ```
/// use std::time::Duration;
/// use tollgate::{Algorithm, KeyPart, Limit, RateLimitLayer, Scope, TokenId};
///
/// let layer = RateLimitLayer::builder()
///     .limit(Limit::per_minute("login", 100).scope(Scope::all().path("/login")).key(KeyPart::client_ip()))
///     .limit(
///         Limit::per_minute("per_token", 600)
///             .algorithm(Algorithm::FixedWindow)
///             .scope(Scope::all().path("/api/*"))
///             .key(KeyPart::extension::<TokenId>()),
///     )
///     .limit(Limit::min_interval("search", Duration::from_secs(1)).key(KeyPart::client_ip()))
///     .build()?;
/// # Ok::<(), tollgate::BuildError>(())
/// ```
///
/// A [`Rule`] built by hand works too: [`Limit::new`].
#[derive(Clone)]
#[must_use]
pub struct Limit {
    name: String,
    settings: Settings,
    /// The rule the settings make, or their first mistake; kept in step by every setter.
    rule: Result<Rule, BuildError>,
    pub(crate) scope: Scope,
    pub(crate) key: Vec<KeyPart>,
    /// Quotas for the requests of a [`Tier`].
    pub(crate) tiers: Vec<(Arc<str>, Quota)>,
    /// Quotas for one client each, by the value of the limit's key part.
    pub(crate) identities: Vec<(Box<[u8]>, Quota)>,
    /// The response statuses that charge the limit; empty: every admitted request is charged
    /// up front, like any limit.
    pub(crate) charge_on: SmallVec<[StatusCode; 2]>,
    /// Where a request's own cost comes from, if not from the rule.
    pub(crate) cost_from: Option<CostSource>,
}

/// What a request's cost is read from: a closure over the request head. `Ok(None)`: the
/// request does not say, the rule's cost applies; `Err`: it says something unreadable.
#[derive(Clone)]
pub(crate) struct CostSource {
    /// What the 400 names when the cost cannot be read: "the x-batch-size header".
    pub(crate) what: Arc<str>,
    pub(crate) read: Arc<CostFn>,
}

pub(crate) type CostFn = dyn Fn(&RequestHead<'_>) -> Result<Option<u64>, ()> + Send + Sync;

/// The most a header may say a request costs, whatever the limit: far above any quota's
/// capacity (so a bigger number is refused as never passing, not misread), small enough that
/// no arithmetic on it overflows.
const MAX_HEADER_COST: u64 = 1 << 40;

/// The plan a client is on, for a request extension the application's auth inserts once it
/// knows the client: limits with a quota for the tier ([`Limit::tier`]) apply it to the request.
///
/// ```
/// use tollgate::Tier;
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(Tier::new("enterprise"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tier(Arc<str>);

impl Tier {
    /// The tier named `name`.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self(name.into())
    }

    /// The tier's name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// What a limit's rule is made of.
#[derive(Clone)]
struct Settings {
    quota: Result<Quota, QuotaError>,
    burst: Option<u64>,
    algorithm: Algorithm,
    cost: u64,
    shadow: bool,
    replays: bool,
}

impl Settings {
    /// The rule named `name`, or the first mistake, naming the limit.
    fn rule(&self, name: &str) -> Result<Rule, BuildError> {
        let invalid = |e| BuildError::Quota(InvalidQuota::new(name, e));
        let mut quota = self.quota.clone().map_err(invalid)?;
        if let Some(burst) = self.burst {
            quota = quota.with_burst(burst).map_err(invalid)?;
        }
        Ok(Rule::builder(name, quota)
            .algorithm(self.algorithm)
            .cost(self.cost)
            .shadow(self.shadow)
            .honour_replays(self.replays)
            .build()?)
    }
}

/// # Declaring a limit
impl Limit {
    /// At most `limit` requests per second.
    pub fn per_second(name: impl Into<String>, limit: u64) -> Self {
        Self::quota(name.into(), Quota::per_second(limit))
    }

    /// At most `limit` requests per minute.
    ///
    /// ```
    /// use tollgate::{KeyPart, Limit};
    ///
    /// let login = Limit::per_minute("login", 100).key(KeyPart::client_ip());
    /// assert_eq!(login.rule().unwrap().quota().limit(), 100);
    /// ```
    pub fn per_minute(name: impl Into<String>, limit: u64) -> Self {
        Self::quota(name.into(), Quota::per_minute(limit))
    }

    /// At most `limit` requests per hour.
    pub fn per_hour(name: impl Into<String>, limit: u64) -> Self {
        Self::quota(name.into(), Quota::per_hour(limit))
    }

    /// At most `limit` requests per day.
    pub fn per_day(name: impl Into<String>, limit: u64) -> Self {
        Self::quota(name.into(), Quota::per_day(limit))
    }

    /// At most `limit` requests per `period`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::{Algorithm, Limit};
    ///
    /// // "1,000 requests in any 1 hour interval are allowed, the 1,001st is not."
    /// let exact = Limit::per_period("hourly", 1000, Duration::from_secs(3600))
    ///     .algorithm(Algorithm::SlidingLog);
    /// ```
    pub fn per_period(name: impl Into<String>, limit: u64, period: Duration) -> Self {
        Self::quota(name.into(), Quota::new(limit, period))
    }

    /// At least `interval` between two admitted requests (the quota 1 per `interval`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::{KeyPart, Limit};
    ///
    /// let search = Limit::min_interval("search", Duration::from_secs(1)).key(KeyPart::client_ip());
    /// ```
    pub fn min_interval(name: impl Into<String>, interval: Duration) -> Self {
        Self::quota(name.into(), Quota::min_interval(interval))
    }

    /// A limit of a quota already built.
    ///
    /// ```
    /// use tollgate::{Limit, Quota};
    ///
    /// let smooth = Limit::with_quota("smooth", Quota::per_second(10)?.with_burst(2)?);
    /// # Ok::<(), tollgate::QuotaError>(())
    /// ```
    pub fn with_quota(name: impl Into<String>, quota: Quota) -> Self {
        Self::quota(name.into(), Ok(quota))
    }

    /// A limit of a rule built by hand, on every request, with one bucket for all (add
    /// [`key`](Self::key) parts to count clients apart).
    ///
    /// ```
    /// use tollgate::{Limit, Quota, Rule};
    ///
    /// let rule = Rule::builder("per_ip", Quota::per_minute(100)?).build()?;
    /// let per_ip = Limit::new(rule);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(rule: Rule) -> Self {
        let settings = Settings {
            quota: Ok(*rule.quota()),
            burst: None,
            algorithm: rule.algorithm(),
            cost: rule.cost(),
            shadow: rule.is_shadow(),
            replays: rule.honours_replays(),
        };
        Self {
            name: rule.name().to_owned(),
            settings,
            rule: Ok(rule),
            scope: Scope::all(),
            key: Vec::new(),
            tiers: Vec::new(),
            identities: Vec::new(),
            charge_on: SmallVec::new(),
            cost_from: None,
        }
    }

    fn quota(name: String, quota: Result<Quota, QuotaError>) -> Self {
        let settings = Settings {
            quota,
            burst: None,
            algorithm: Algorithm::default(),
            cost: 1,
            shadow: false,
            replays: false,
        };
        Self {
            rule: settings.rule(&name),
            name,
            settings,
            scope: Scope::all(),
            key: Vec::new(),
            tiers: Vec::new(),
            identities: Vec::new(),
            charge_on: SmallVec::new(),
            cost_from: None,
        }
    }
}

/// # How it counts
impl Limit {
    /// The algorithm (default: GCRA, smooth; see [`Algorithm`]).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.settings.algorithm = algorithm;
        self.rebuilt()
    }

    /// How many requests may arrive at once (GCRA; default: the limit). See
    /// [`Quota::with_burst`].
    pub fn burst(mut self, burst: u64) -> Self {
        self.settings.burst = Some(burst);
        self.rebuilt()
    }

    /// What one request costs (default: 1). A cost above what the quota can ever admit at once
    /// is a build error.
    pub fn cost(mut self, cost: u64) -> Self {
        self.settings.cost = cost;
        self.rebuilt()
    }

    /// Reads each request's cost from the request (default: every request costs
    /// [`cost`](Self::cost)): `f` returns the cost, or `None` for the limit's own. A cost of 0
    /// counts as 1 (a request is never free), and a cost above what the quota can ever admit
    /// at once gets a 429 that says it can never pass, without a `Retry-After`.
    ///
    /// ```
    /// use tollgate::{KeyPart, Limit, RequestHead};
    ///
    /// // A search costs 1; an export costs 10.
    /// let limit = Limit::per_minute("per_ip", 100)
    ///     .key(KeyPart::client_ip())
    ///     .cost_from_fn(|head: &RequestHead<'_>| head.uri().path().starts_with("/export").then_some(10));
    /// ```
    pub fn cost_from_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&RequestHead<'_>) -> Option<u64> + Send + Sync + 'static,
    {
        self.cost_from = Some(CostSource {
            what: "the request's cost".into(),
            read: Arc::new(move |head| Ok(f(head))),
        });
        self
    }

    /// Reads each request's cost from the header `name`, a whole number such as a batch size
    /// (default: every request costs [`cost`](Self::cost)); a request without the header costs
    /// the limit's own cost. A value that is not a whole number (or is repeated with different
    /// values) gets a 400 naming the header: a client cannot pay less by sending nonsense. A
    /// cost of 0 counts as 1, and one above what the quota can ever admit at once gets a 429
    /// that says it can never pass.
    ///
    /// ```
    /// use http::HeaderName;
    /// use tollgate::{KeyPart, Limit};
    ///
    /// let items = Limit::per_minute("items", 1000)
    ///     .key(KeyPart::client_ip())
    ///     .cost_header(HeaderName::from_static("x-batch-size"));
    /// ```
    pub fn cost_header(mut self, name: http::HeaderName) -> Self {
        let what: Arc<str> = format!("the {name} header").into();
        let read = move |head: &RequestHead<'_>| {
            let mut values = head.headers().get_all(&name).iter();
            let Some(first) = values.next() else {
                return Ok(None);
            };
            if values.any(|other| other != first) {
                return Err(());
            }
            let text = first.to_str().map_err(|_| ())?.trim();
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            // More digits than fit is more than any limit admits: refused as never passing.
            Ok(Some(
                text.parse::<u64>()
                    .map_or(MAX_HEADER_COST, |c| c.min(MAX_HEADER_COST)),
            ))
        };
        self.cost_from = Some(CostSource {
            what,
            read: Arc::new(read),
        });
        self
    }

    /// Shadow mode: evaluate, count and log, never deny (default: off).
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.settings.shadow = shadow;
        self.rebuilt()
    }

    /// Lets idempotent replays pass this limit free (default: off); see
    /// [`RateLimitBuilder::idempotency`](crate::RateLimitBuilder::idempotency). Never for an
    /// abuse ceiling such as a per-IP login limit: a replay would be a way around it.
    pub fn honour_replays(mut self, honour: bool) -> Self {
        self.settings.replays = honour;
        self.rebuilt()
    }

    /// Remakes the rule, or finds the first mistake, after any setting changed.
    /// Charges the limit only for requests whose response has one of `statuses`: the
    /// fail2ban pattern, counting failed logins (401, 403) and not the successful ones. A
    /// request is refused up front once the limit is spent; the limit's other figures
    /// (headers, 429s) are as for any limit. The request's other limits still decide and
    /// charge it all-or-nothing, before it runs.
    ///
    /// # The race, and its bound
    /// The response comes after the request ran, so requests in flight have not been charged
    /// yet. Each instance of the layer therefore lets at most as many requests of one key be
    /// in flight at once as the limit has left (a request past that is refused with a
    /// `Retry-After` of one second, the time for one in flight to finish). With the memory
    /// store no request past the limit ever runs. With a store shared by `n` instances, each
    /// instance holds its own in-flight count, so at most `n` times what is left can run at
    /// once: the worst case admits `(n - 1)` times the limit more in one window. Requests in
    /// flight that end up not charged (a successful login) hold their place until they answer,
    /// so concurrent successes can briefly refuse a request that would have passed.
    ///
    /// ```
    /// use http::StatusCode;
    /// use tollgate::{KeyPart, Limit, Scope};
    /// use std::time::Duration;
    ///
    /// let failed_logins = Limit::per_period("failed_logins", 5, Duration::from_secs(15 * 60))
    ///     .scope(Scope::all().path("/auth/login"))
    ///     .key(KeyPart::client_ip())
    ///     .charge_on([StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN]);
    /// ```
    pub fn charge_on(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.charge_on.extend(statuses);
        self.rebuilt()
    }

    fn rebuilt(mut self) -> Self {
        self.rule = self
            .settings
            .rule(&self.name)
            .and_then(|rule| self.per_client_mistake(&rule).map_or(Ok(rule), Err));
        self
    }

    /// A tier or client quota that cannot apply: one the rule cannot take (a cost above what
    /// it admits), client quotas on a limit not keyed by exactly one part, an empty value.
    fn per_client_mistake(&self, rule: &Rule) -> Option<BuildError> {
        let quotas = self.tiers.iter().map(|(_, q)| q);
        let quotas = quotas.chain(self.identities.iter().map(|(_, q)| q));
        if let Some(mistake) = quotas.filter_map(|q| rule.with_quota(*q).err()).next() {
            return Some(mistake.into());
        }
        let reason = if self.identities.is_empty() {
            return None;
        } else if self.key.len() != 1 {
            format!(
                "quota_for needs a limit keyed by exactly one part (this one has {}), whose \
                 value names the client",
                self.key.len()
            )
        } else if self.identities.iter().any(|(value, _)| value.is_empty()) {
            "a client quota is for an empty value, which no request carries".to_owned()
        } else {
            return None;
        };
        Some(BuildError::QuotaFor {
            limit: self.name.clone(),
            reason,
        })
    }
}

/// # Which requests, counted by whom
impl Limit {
    /// The requests the limit applies to (default: all).
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Adds a part to the key. Parts are hashed in the order they are added.
    pub fn key(mut self, part: KeyPart) -> Self {
        self.key.push(part);
        self.rebuilt()
    }
}

/// # Quotas per customer
///
/// A limit can give some clients another quota: those of a [`Tier`] (set by the application's
/// auth), or one client named by the value of the limit's key part. Either way the client keeps
/// its one bucket in the limit, now measured by its own quota, and the rate-limit headers and
/// 429 bodies report the quota that applied. A client-specific quota wins over a tier's. The
/// limit's algorithm, cost, shadow mode and replays stay as they are; a tier's quota brings
/// its own burst ([`Quota::with_burst`]).
impl Limit {
    /// Requests carrying the extension [`Tier`] named `tier` are limited by `quota`.
    ///
    /// ```
    /// use tollgate::{KeyPart, Limit, Quota, TokenId};
    ///
    /// let per_token = Limit::per_minute("per_token", 600)
    ///     .key(KeyPart::extension::<TokenId>())
    ///     .tier("enterprise", Quota::per_minute(6000)?);
    /// # Ok::<(), tollgate::QuotaError>(())
    /// ```
    pub fn tier(mut self, tier: impl Into<Arc<str>>, quota: Quota) -> Self {
        self.tiers.push((tier.into(), quota));
        self.rebuilt()
    }

    /// The client whose key part has `value` (the header, query or token text; for an
    /// extension, the bytes its [`Identifier`](crate::Identifier) writes, a string's UTF-8)
    /// is limited by `quota`. The limit must have exactly one key part. The value is digested
    /// with the key secret when the layer is built, and not kept.
    ///
    /// ```
    /// use http::HeaderName;
    /// use tollgate::{KeyPart, Limit, Quota};
    ///
    /// let per_key = Limit::per_minute("per_key", 600)
    ///     .key(KeyPart::header(HeaderName::from_static("x-api-key")))
    ///     .quota_for("enterprise-demo", Quota::per_minute(6000)?);
    /// # Ok::<(), tollgate::QuotaError>(())
    /// ```
    pub fn quota_for(mut self, value: impl AsRef<[u8]>, quota: Quota) -> Self {
        self.identities.push((value.as_ref().into(), quota));
        self.rebuilt()
    }
}

/// # Inspecting
impl Limit {
    /// The limit's name, which is its rule's.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rule, or `None` when the limit has a mistake (see [`mistake`](Self::mistake)).
    pub fn rule(&self) -> Option<&Rule> {
        self.rule.as_ref().ok()
    }

    /// The limit's mistake, if it has one: what [`build`](crate::RateLimitBuilder::build)
    /// will report.
    pub fn mistake(&self) -> Option<&BuildError> {
        self.rule.as_ref().err()
    }
}

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Limit");
        match &self.rule {
            Ok(rule) => s.field("rule", rule),
            Err(mistake) => s.field("name", &self.name).field("mistake", mistake),
        };
        // Client-specific quotas are counted, never shown: their values identify clients.
        s.field("scope", &self.scope)
            .field("key", &self.key)
            .field("tiers", &self.tiers)
            .field("quotas_for_clients", &self.identities.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_make_the_rule_a_builder_would() {
        let limit = Limit::per_second("search", 10)
            .burst(2)
            .algorithm(Algorithm::Gcra)
            .cost(2)
            .shadow(true)
            .honour_replays(true);
        let by_hand = Rule::builder(
            "search",
            Quota::per_second(10).unwrap().with_burst(2).unwrap(),
        )
        .cost(2)
        .shadow(true)
        .honour_replays(true)
        .build()
        .unwrap();
        let rule = limit.rule().unwrap();
        assert_eq!(format!("{rule:?}"), format!("{by_hand:?}"));
        assert_eq!(rule.id(), by_hand.id());
        // A rule built by hand keeps its settings when one more is changed.
        let again = Limit::new(by_hand).cost(1);
        assert_eq!(again.rule().unwrap().quota().burst(), 2);
        assert!(again.rule().unwrap().is_shadow());
    }

    #[test]
    fn mistakes_name_the_limit() {
        let zero = Limit::per_minute("login", 0);
        assert!(zero.rule().is_none());
        assert!(matches!(zero.mistake(), Some(BuildError::Quota(q)) if q.limit() == "login"));
        let burst = Limit::per_minute("login", 10).burst(0);
        assert!(burst.mistake().unwrap().to_string().contains("\"login\""));
        let cost = Limit::per_minute("login", 10).cost(11);
        assert!(matches!(cost.mistake(), Some(BuildError::Rule(_))));
        assert!(cost.mistake().unwrap().to_string().contains("\"login\""));
        let name = Limit::per_minute("log in", 10);
        assert!(name.mistake().unwrap().to_string().contains("\"log in\""));
        // Fixed later in the chain: no mistake left.
        assert!(Limit::per_minute("login", 10)
            .cost(11)
            .cost(1)
            .mistake()
            .is_none());
    }
}
