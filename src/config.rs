//! Limits as data: a [`Config`] read from a TOML or JSON file, applied to a
//! [`RateLimitBuilder`] (feature `config`).
//!
//! Every option of the builder has a field: the limits (name, quota, algorithm, burst, cost,
//! scope, key parts, shadow, replays), the client address (trusted proxies, forwarding header, IP
//! prefixes), route templates, response headers, idempotency and the memory store. The key secret
//! is read from the environment variable the file names, never from the file itself.
//!
//! ```toml
//! key_secret_env = "TOLLGATE_KEY_SECRET"   # 32 hex digits, e.g. from `openssl rand -hex 16`
//!
//! [[limits]]
//! name = "login"
//! quota = "100/minute"
//! key = ["client_ip"]
//! scope = { paths = ["/login"], methods = ["POST"] }
//!
//! [[limits]]
//! name = "api"
//! quota = "600 per minute"
//! algorithm = "sliding_window"
//! key = ["header:x-api-key"]
//! scope = { paths = ["/api/*"] }
//!
//! [client_ip]
//! trusted_proxies = ["10.0.0.0/8"]
//! forwarded_header = "x-forwarded-for"
//!
//! [headers]
//! style = "both"
//! expose = true
//!
//! [store.memory]
//! max_keys = 100000
//! ```
//!
//! Quotas are written `"<limit>/<period>"` or `"<limit> per <period>"` (`"10/s"`, `"1/500ms"`,
//! `"5/10s"`, `"1000/hour"`); durations as `"250ms"`, `"24h"`. Unknown fields are errors, and
//! every error names the file, the line and the field, and says what would be valid.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderName, Method};
use serde::de::{self, Deserializer};
use serde::Deserialize;
use tollgate_core::{parse_duration, Algorithm, KeySecret, MemoryStore, Quota, Store};

use crate::builder::RateLimitBuilder;
use crate::client_ip::{Cidr, ForwardedHeader};
use crate::idempotency::Idempotency;
use crate::key::{KeyPart, SessionUser, TokenId};
use crate::limit::Limit;
use crate::response::{HeaderStyle, ResetFormat};
use crate::route::RoutePattern;
use crate::scope::Scope;
use crate::RateLimitLayer;

/// A rate-limit configuration read from a file: limits, clients, headers, idempotency, store.
///
/// ```
/// use tollgate::config::Config;
///
/// let config = Config::from_toml(
///     r#"
///     [[limits]]
///     name = "per_ip"
///     quota = "100/minute"
///     key = ["client_ip"]
///     "#,
///     "limits.toml",
/// )?;
/// let layer = config.layer()?;
/// # Ok::<(), tollgate::config::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct Config {
    origin: String,
    file: File,
}

/// Why a configuration could not be read or applied. The message names the file, and where it
/// can, the line, the column and the field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the rate-limit configuration {path}: {source}")]
    Read {
        /// The file's path.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file's name does not say its format.
    #[error("cannot tell the format of {path}: name it *.toml or *.json")]
    Format {
        /// The file's path.
        path: String,
    },
    /// A field is missing, unknown or holds a value it cannot hold.
    #[error("{origin}:{line}:{column}: {field}: {message}")]
    Invalid {
        /// The file (or the name given for the text).
        origin: String,
        /// The line of the mistake, from 1 (0 when the parser could not say).
        line: usize,
        /// The column of the mistake, from 1 (0 when the parser could not say).
        column: usize,
        /// Where in the document: `limits[2].quota`, `headers.style`, or `.` for the top.
        field: String,
        /// What is wrong and what would be valid.
        message: String,
    },
    /// The key secret's environment variable is missing or does not hold a secret.
    #[error("{origin}: key_secret_env: {message}")]
    Secret {
        /// The file (or the name given for the text).
        origin: String,
        /// What is wrong with the variable (its value is never quoted).
        message: String,
    },
    /// The store the file describes cannot be set up (feature `redis`): a missing URL, a Redis
    /// that cannot be reached (its address shown without credentials).
    #[error("{origin}: {field}: {message}")]
    Store {
        /// The file (or the name given for the text).
        origin: String,
        /// The section: `store.redis` or `store.cluster`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The configuration reads, but the layer it describes cannot be built.
    #[error("{origin}: {source}")]
    Build {
        /// The file (or the name given for the text).
        origin: String,
        /// The builder's mistakes.
        source: crate::BuildError,
    },
}

impl Config {
    /// Reads a `*.toml` or `*.json` file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Self::from_toml(&text, shown),
            Some("json") => Self::from_json(&text, shown),
            _ => Err(ConfigError::Format { path: shown }),
        }
    }

    /// Reads TOML text; `origin` names it in error messages (a file name).
    pub fn from_toml(text: &str, origin: impl Into<String>) -> Result<Self, ConfigError> {
        let origin = origin.into();
        let deserializer = toml::de::Deserializer::parse(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| line_column(text, s.start));
            invalid(&origin, line, column, ".".into(), e.message())
        })?;
        match serde_path_to_error::deserialize(deserializer) {
            Ok(file) => Ok(Self { origin, file }),
            Err(e) => {
                let field = e.path().to_string();
                let inner = e.into_inner();
                let (line, column) = inner.span().map_or((0, 0), |s| line_column(text, s.start));
                Err(invalid(&origin, line, column, field, inner.message()))
            }
        }
    }

    /// Reads JSON text; `origin` names it in error messages (a file name).
    pub fn from_json(text: &str, origin: impl Into<String>) -> Result<Self, ConfigError> {
        let origin = origin.into();
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let (field, error) = match serde_path_to_error::deserialize(&mut deserializer) {
            Ok(file) => match deserializer.end() {
                Ok(()) => return Ok(Self { origin, file }),
                Err(trailing) => (".".to_owned(), trailing),
            },
            Err(e) => (e.path().to_string(), e.into_inner()),
        };
        let message = json_message(&error);
        Err(invalid(
            &origin,
            error.line(),
            error.column(),
            field,
            &message,
        ))
    }

    /// The layer the file describes, on the memory store its `[store.memory]` section sets up
    /// (for a file naming Redis, see [`redis_store`](Self::redis_store)).
    pub fn layer(&self) -> Result<RateLimitLayer<MemoryStore>, ConfigError> {
        if self.uses_redis() {
            return Err(ConfigError::Store {
                origin: self.origin.clone(),
                field: "store".to_owned(),
                message: "the file names a Redis store: connect it with Config::redis_store \
                          (feature redis) and build the layer on it with Config::build"
                    .to_owned(),
            });
        }
        let store = self
            .file
            .store
            .memory
            .as_ref()
            .map_or_else(MemoryStore::new, |m| {
                let mut builder = MemoryStore::builder();
                if let Some(max_keys) = m.max_keys {
                    builder = builder.max_keys(max_keys);
                }
                if let Some(shards) = m.shards {
                    builder = builder.shards(shards);
                }
                builder.build()
            });
        self.build(RateLimitLayer::builder().store(store))
    }

    /// Whether the file's `[store]` section names Redis (`[store.redis]` or `[store.cluster]`).
    pub fn uses_redis(&self) -> bool {
        self.file.store.redis.is_some() || self.file.store.cluster.is_some()
    }

    /// Connects the Redis store the file's `[store.redis]` or `[store.cluster]` section
    /// describes (feature `redis`); `None` when the file names no Redis. Build the layer on it
    /// with [`build`](Self::build).
    ///
    /// ```toml
    /// [store.redis]
    /// url_env = "REDIS_URL"        # or url = "redis://127.0.0.1:6379"
    /// prefix = "tollgate"
    /// budget = "50ms"
    /// failure_policy = "fallback"  # fail_open (default), fail_closed or fallback
    /// fallback_instances = 4
    /// breaker = { failures = 5, cool_down = "250ms" }
    /// deny_cache = 10000           # entries; 0 turns it off
    /// fixed_window_counters = true # fixed windows as INCRBY counters (see the store's docs)
    /// ```
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub async fn redis_store(&self) -> Result<Option<tollgate_redis::RedisStore>, ConfigError> {
        use tollgate_redis::{BreakerConfig, FailurePolicy, RedisConnection, RedisStore};

        let (section, cluster, field) = match (&self.file.store.redis, &self.file.store.cluster) {
            (Some(section), None) => (section, false, "store.redis"),
            (None, Some(section)) => (section, true, "store.cluster"),
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(self.store_error(
                    "store",
                    "name one of [store.redis] and [store.cluster], not both".into(),
                ))
            }
        };
        let urls = match (&section.url_env, section.url.is_empty()) {
            (Some(variable), true) => std::env::var(variable)
                .map(|v| {
                    v.split(',')
                        .map(|u| u.trim().to_owned())
                        .collect::<Vec<_>>()
                })
                .map_err(|_| {
                    self.store_error(
                        field,
                        format!("the environment variable {variable} (url_env) is not set"),
                    )
                })?,
            (None, false) => section.url.clone(),
            _ => return Err(self.store_error(field, "give exactly one of url and url_env".into())),
        };
        if !cluster && urls.len() != 1 {
            return Err(self.store_error(
                field,
                format!(
                    "one Redis has one URL (got {}); name a Cluster's nodes under [store.cluster]",
                    urls.len()
                ),
            ));
        }
        let connected = if cluster {
            RedisConnection::connect_cluster(urls.iter().map(String::as_str)).await
        } else {
            RedisConnection::connect(urls[0].as_str()).await
        };
        // The error names the address only redacted: a URL may hold a password.
        let connection = connected.map_err(|e| {
            let shown: Vec<_> = urls.iter().map(|u| tollgate_redis::redact_url(u)).collect();
            self.store_error(
                field,
                format!("cannot connect to {}: {e}", shown.join(", ")),
            )
        })?;
        let mut builder = RedisStore::builder(connection);
        if let Some(prefix) = &section.prefix {
            builder = builder.prefix(prefix.clone());
        }
        if let Some(budget) = &section.budget {
            builder = builder.budget(budget.0 .0);
        }
        let instances = section.fallback_instances;
        let policy = match (section.failure_policy.as_ref().map(|p| p.0), instances) {
            (Some(Policy::Fallback), instances) => FailurePolicy::fallback(instances.unwrap_or(1)),
            (_, Some(_)) => {
                return Err(self.store_error(
                    field,
                    "fallback_instances needs failure_policy = \"fallback\"".into(),
                ))
            }
            (Some(Policy::FailClosed), None) => FailurePolicy::FailClosed,
            _ => FailurePolicy::FailOpen,
        };
        builder = builder.failure_policy(policy);
        if let Some(breaker) = &section.breaker {
            builder = builder.breaker(BreakerConfig {
                failures: breaker.failures.max(1),
                cool_down: breaker.cool_down.0 .0,
            });
        }
        if let Some(capacity) = section.deny_cache {
            builder = builder.deny_cache(Some(capacity));
        }
        if let Some(on) = section.fixed_window_counters {
            builder = builder.fixed_window_counters(on);
        }
        Ok(Some(builder.build()))
    }

    #[cfg(feature = "redis")]
    fn store_error(&self, field: &str, message: String) -> ConfigError {
        ConfigError::Store {
            origin: self.origin.clone(),
            field: field.to_owned(),
            message,
        }
    }

    /// Applies everything but the store to `builder` and builds the layer, on the builder's
    /// store: how to run a configuration on a store made in code (the Redis store, a store
    /// with a test clock).
    pub fn build<S: Store>(
        &self,
        builder: RateLimitBuilder<S>,
    ) -> Result<RateLimitLayer<S>, ConfigError> {
        self.apply(builder)?
            .build()
            .map_err(|source| ConfigError::Build {
                origin: self.origin.clone(),
                source,
            })
    }

    /// Puts this configuration in force in a running `layer` (see [`RateLimitLayer::reload`]:
    /// atomic, and limits that keep their names keep their state); the layer keeps its store,
    /// so the file's `[store]` section is not read. On an error the running configuration
    /// stays in place.
    ///
    /// ```
    /// use tollgate::config::Config;
    ///
    /// let first = Config::from_toml("[[limits]]\nname = \"a\"\nquota = \"10/s\"\n", "v1.toml")?;
    /// let layer = first.layer()?;
    /// let second = Config::from_toml("[[limits]]\nname = \"a\"\nquota = \"20/s\"\n", "v2.toml")?;
    /// second.reload(&layer)?;
    /// # Ok::<(), tollgate::config::ConfigError>(())
    /// ```
    pub fn reload<S: Store>(&self, layer: &RateLimitLayer<S>) -> Result<(), ConfigError> {
        layer
            .reload(self.apply(RateLimitLayer::builder())?)
            .map_err(|source| ConfigError::Build {
                origin: self.origin.clone(),
                source,
            })
    }

    /// Applies everything but the store to `builder`, so code can add to it (a custom
    /// responder, a key part from a closure) before building.
    pub fn apply<S: Store>(
        &self,
        builder: RateLimitBuilder<S>,
    ) -> Result<RateLimitBuilder<S>, ConfigError> {
        let file = &self.file;
        let mut builder = builder
            .limits(file.limits.iter().map(|l| l.0.clone()))
            .routes(file.routes.iter().map(|r| r.0 .0.clone()))
            .trusted_proxies(
                file.client_ip
                    .trusted_proxies
                    .iter()
                    .map(|c| c.0.to_string()),
            )
            .forwarded_header(file.client_ip.forwarded_header.0)
            .header_style(file.headers.style.0)
            .reset_format(file.headers.reset.0)
            .expose_headers(file.headers.expose);
        if let Some(prefix) = file.client_ip.ipv4_prefix {
            builder = builder.ipv4_prefix(prefix);
        }
        if let Some(prefix) = file.client_ip.ipv6_prefix {
            builder = builder.ipv6_prefix(prefix);
        }
        if let Some(idempotency) = &file.idempotency {
            builder = builder.idempotency(idempotency.0.clone());
        }
        builder = builder.exempt_ips(file.exempt.ips.iter().map(|c| c.0.to_string()));
        for identity in &file.exempt.identities {
            builder = builder.exempt_identities(identity.part.0 .0.clone(), &identity.values);
        }
        if let Some(variable) = &file.key_secret_env {
            builder = builder.key_secret(self.secret(variable)?);
        }
        Ok(builder)
    }

    fn secret(&self, variable: &str) -> Result<KeySecret, ConfigError> {
        let error = |message: String| ConfigError::Secret {
            origin: self.origin.clone(),
            message,
        };
        let value = std::env::var(variable).map_err(|_| {
            error(format!(
                "the environment variable {variable} is not set (or not UTF-8); set it to 32 hex \
                 digits, e.g. the output of `openssl rand -hex 16`"
            ))
        })?;
        parse_secret(value.trim()).ok_or_else(|| {
            error(format!(
                "the environment variable {variable} must hold 32 hex digits (16 bytes), e.g. the \
                 output of `openssl rand -hex 16`; it holds {} characters",
                value.trim().chars().count()
            ))
        })
    }
}

fn invalid(origin: &str, line: usize, column: usize, field: String, message: &str) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.to_owned(),
        line,
        column,
        field,
        message: message.to_owned(),
    }
}

/// serde_json's messages end with " at line L column C", which the error already says.
fn json_message(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    }
}

/// The 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn parse_secret(hex: &str) -> Option<KeySecret> {
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(KeySecret::from_bytes(bytes))
}

// ---------------------------------------------------------------------------------------------
// The document. Each field is checked as it is read, so a mistake is reported where it is.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// The environment variable holding the key secret.
    key_secret_env: Option<String>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    routes: Vec<Parsed<RouteText>>,
    #[serde(default)]
    client_ip: ClientIp,
    #[serde(default)]
    headers: Headers,
    idempotency: Option<IdempotencySection>,
    #[serde(default)]
    exempt: ExemptSection,
    #[serde(default)]
    store: StoreSection,
}

/// The limits, whose names must differ.
#[derive(Debug, Default)]
struct Limits(Vec<LimitSection>);

impl std::ops::Deref for Limits {
    type Target = [LimitSection];
    fn deref(&self) -> &[LimitSection] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Limits {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let limits = Vec::<LimitSection>::deserialize(deserializer)?;
        for (i, limit) in limits.iter().enumerate() {
            if let Some(first) = limits[..i]
                .iter()
                .position(|l| l.0.name() == limit.0.name())
            {
                return Err(de::Error::custom(format!(
                    "limits[{first}] and limits[{i}] are both named {:?}; every limit needs a name \
                     of its own",
                    limit.0.name()
                )));
            }
        }
        Ok(Limits(limits))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitFields {
    name: String,
    quota: Parsed<Quota>,
    #[serde(default)]
    algorithm: AlgorithmName,
    burst: Option<u64>,
    #[serde(default = "one")]
    cost: u64,
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    honour_replays: bool,
    #[serde(default)]
    scope: ScopeSection,
    #[serde(default)]
    key: Vec<Parsed<KeyPartText>>,
    /// Tier name → quota.
    #[serde(default)]
    tiers: std::collections::BTreeMap<String, Parsed<Quota>>,
    /// The key part's value → quota: one client's own quota.
    #[serde(default)]
    quota_for: std::collections::BTreeMap<String, Parsed<Quota>>,
    /// Response statuses that charge the limit (after the response) instead of every request.
    #[serde(default)]
    charge_on: Vec<StatusNumber>,
    /// The header a request's cost is read from (a batch size).
    cost_header: Option<Parsed<HeaderName>>,
}

/// An HTTP status, written as its number.
struct StatusNumber(http::StatusCode);

impl<'de> Deserialize<'de> for StatusNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = u16::deserialize(deserializer)?;
        http::StatusCode::from_u16(code)
            .map(StatusNumber)
            .map_err(|_| {
                de::Error::custom(format!(
                    "{code} is not an HTTP status; use 100 to 999, e.g. 401"
                ))
            })
    }
}

fn one() -> u64 {
    1
}

/// A limit, built as it is read so that its mistakes point at it.
#[derive(Debug)]
struct LimitSection(Limit);

impl<'de> Deserialize<'de> for LimitSection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let f = LimitFields::deserialize(deserializer)?;
        let mut limit = Limit::with_quota(f.name, f.quota.0)
            .algorithm(f.algorithm.0)
            .cost(f.cost)
            .shadow(f.shadow)
            .honour_replays(f.honour_replays)
            .scope(f.scope.into_scope());
        if let Some(burst) = f.burst {
            limit = limit.burst(burst);
        }
        for part in f.key {
            limit = limit.key(part.0 .0);
        }
        for (tier, quota) in f.tiers {
            limit = limit.tier(tier, quota.0);
        }
        for (value, quota) in f.quota_for {
            limit = limit.quota_for(value, quota.0);
        }
        if let Some(header) = f.cost_header {
            limit = limit.cost_header(header.0);
        }
        if !f.charge_on.is_empty() {
            limit = limit.charge_on(f.charge_on.into_iter().map(|s| s.0));
        }
        match limit.mistake() {
            Some(mistake) => Err(de::Error::custom(mistake)),
            None => Ok(LimitSection(limit)),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeSection {
    #[serde(default)]
    paths: Vec<Parsed<RouteText>>,
    #[serde(default)]
    methods: Vec<Parsed<Method>>,
    #[serde(default)]
    without: Vec<Parsed<KeyPartText>>,
    #[serde(default)]
    except: Vec<ScopeSection>,
}

impl ScopeSection {
    fn into_scope(self) -> Scope {
        let scope = Scope::all().methods(self.methods.into_iter().map(|m| m.0));
        let scope = self.paths.into_iter().fold(scope, |s, p| s.path(p.0 .0));
        let scope = self
            .without
            .into_iter()
            .fold(scope, |s, p| s.without(p.0 .0));
        self.except
            .into_iter()
            .fold(scope, |s, e| s.except(e.into_scope()))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientIp {
    #[serde(default)]
    trusted_proxies: Vec<Parsed<Cidr>>,
    #[serde(default)]
    forwarded_header: ForwardedHeaderName,
    ipv4_prefix: Option<u8>,
    ipv6_prefix: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Headers {
    #[serde(default)]
    style: StyleName,
    #[serde(default)]
    reset: ResetName,
    #[serde(default)]
    expose: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdempotencyFields {
    header: Option<Parsed<HeaderName>>,
    ttl: Option<Parsed<DurationText>>,
    max_replays: Option<u32>,
    methods: Option<Vec<Parsed<Method>>>,
    body_max_len: Option<usize>,
}

#[derive(Debug)]
struct IdempotencySection(Idempotency);

impl<'de> Deserialize<'de> for IdempotencySection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let f = IdempotencyFields::deserialize(deserializer)?;
        let mut idempotency = Idempotency::new();
        if let Some(header) = f.header {
            idempotency = idempotency.header(header.0);
        }
        if let Some(ttl) = f.ttl {
            idempotency = idempotency.ttl(ttl.0 .0);
        }
        if let Some(max) = f.max_replays {
            idempotency = idempotency.max_replays(max);
        }
        if let Some(methods) = f.methods {
            idempotency = idempotency.methods(methods.into_iter().map(|m| m.0));
        }
        if let Some(max_len) = f.body_max_len {
            idempotency = idempotency.body(max_len);
        }
        match idempotency.validate() {
            Err(mistake) => Err(de::Error::custom(mistake)),
            Ok(()) => Ok(IdempotencySection(idempotency)),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExemptSection {
    #[serde(default)]
    ips: Vec<Parsed<Cidr>>,
    #[serde(default)]
    identities: Vec<ExemptIdentity>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExemptIdentity {
    part: Parsed<KeyPartText>,
    values: Vec<String>,
}

/// Never shows the values: they may be credentials.
impl fmt::Debug for ExemptIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExemptIdentity")
            .field("part", &self.part)
            .field("values", &self.values.len())
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreSection {
    memory: Option<MemorySection>,
    redis: Option<RedisSection>,
    cluster: Option<RedisSection>,
}

/// `[store.redis]` (one Redis) or `[store.cluster]` (a Redis Cluster). Read whatever the
/// features, so a file is checked the same everywhere; used with feature `redis`.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisSection {
    /// The URL (one Redis) or node URLs (a Cluster); one of this and `url_env`.
    #[serde(default, deserialize_with = "one_or_many")]
    url: Vec<String>,
    /// The environment variable holding the URL, or the node URLs separated by commas: where
    /// a URL with a password belongs.
    url_env: Option<String>,
    prefix: Option<String>,
    budget: Option<Parsed<DurationText>>,
    failure_policy: Option<FailurePolicyName>,
    /// With `failure_policy = "fallback"`: the instances expected to share the load.
    fallback_instances: Option<u32>,
    breaker: Option<BreakerSection>,
    /// The deny cache's capacity in entries; 0 turns it off.
    deny_cache: Option<usize>,
    /// Fixed windows decided by `INCRBY` counters instead of the script
    /// (`RedisStoreBuilder::fixed_window_counters`).
    fixed_window_counters: Option<bool>,
}

/// Never shows the URLs: they may hold a password.
impl fmt::Debug for RedisSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSection")
            .field("urls", &self.url.len())
            .field("url_env", &self.url_env)
            .field("prefix", &self.prefix)
            .field("budget", &self.budget)
            .field("failure_policy", &self.failure_policy)
            .field("deny_cache", &self.deny_cache)
            .field("fixed_window_counters", &self.fixed_window_counters)
            .finish_non_exhaustive()
    }
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerSection {
    failures: u32,
    cool_down: Parsed<DurationText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemorySection {
    max_keys: Option<usize>,
    shards: Option<usize>,
}

// ---------------------------------------------------------------------------------------------
// Values written as text.

/// A value read from a string with its `FromStr`; the parser's message says what is valid.
#[derive(Debug)]
struct Parsed<T>(T);

impl<'de, T> Deserialize<'de> for Parsed<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map(Parsed).map_err(de::Error::custom)
    }
}

/// A route pattern, checked when read.
#[derive(Debug)]
struct RouteText(String);

impl FromStr for RouteText {
    type Err = crate::route::RouteError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        RoutePattern::parse(text).map(|_| RouteText(text.to_owned()))
    }
}

#[derive(Debug)]
struct DurationText(Duration);

impl FromStr for DurationText {
    type Err = tollgate_core::ParseQuotaError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_duration(text).map(DurationText)
    }
}

/// A key part by name: `client_ip`, `bearer_token`, `route`, `method`, `token_id`,
/// `session_user`, `header:<name>`, `query:<name>`; a trailing `?` makes it optional.
struct KeyPartText(KeyPart);

impl fmt::Debug for KeyPartText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a key part's name did not read.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a key part; use client_ip, bearer_token, route, method, token_id, session_user, header:<name> or query:<name>, with a trailing ? to make it optional")]
struct KeyPartError(String);

impl FromStr for KeyPartText {
    type Err = KeyPartError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || KeyPartError(text.chars().take(64).collect());
        let (name, optional) = match text.strip_suffix('?') {
            Some(name) => (name, true),
            None => (text, false),
        };
        let part = match name.split_once(':') {
            None => match name {
                "client_ip" => KeyPart::client_ip(),
                "bearer_token" => KeyPart::bearer_token(),
                "route" => KeyPart::route(),
                "method" => KeyPart::method(),
                "token_id" => KeyPart::extension::<TokenId>(),
                "session_user" => KeyPart::extension::<SessionUser>(),
                _ => return Err(error()),
            },
            Some(("header", header)) => {
                KeyPart::header(HeaderName::from_str(header).map_err(|_| error())?)
            }
            Some(("query", query)) if !query.is_empty() => KeyPart::query(query),
            Some(_) => return Err(error()),
        };
        Ok(KeyPartText(if optional { part.optional() } else { part }))
    }
}

/// Names written in the file for the builder's enums, so a typo lists the valid words.
macro_rules! named {
    ($(#[$doc:meta])* $name:ident($ty:ty) { $($word:literal => $value:expr),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug)]
        #[cfg_attr(not(feature = "redis"), allow(dead_code))]
        struct $name($ty);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                const WORDS: &[&str] = &[$($word),+];
                let text = String::deserialize(deserializer)?;
                match text.as_str() {
                    $($word => Ok($name($value)),)+
                    other => Err(de::Error::unknown_variant(other, WORDS)),
                }
            }
        }
    };
}

named!(
    #[derive(Default)]
    AlgorithmName(Algorithm) {
    "gcra" => Algorithm::Gcra,
    "fixed_window" => Algorithm::FixedWindow,
    "sliding_window" => Algorithm::SlidingWindow,
    "sliding_log" => Algorithm::SlidingLog,
});

named!(
    #[derive(Default)]
    ForwardedHeaderName(ForwardedHeader) {
    "x-forwarded-for" => ForwardedHeader::XForwardedFor,
    "forwarded" => ForwardedHeader::Forwarded,
});

named!(
    #[derive(Default)]
    StyleName(HeaderStyle) {
    "x-ratelimit" => HeaderStyle::XRateLimit,
    "ietf" => HeaderStyle::Ietf,
    "both" => HeaderStyle::Both,
    "hidden" => HeaderStyle::Hidden,
});

/// What the Redis store does when Redis fails (`tollgate_redis::FailurePolicy`, whose
/// fallback also needs `fallback_instances`).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    FailOpen,
    FailClosed,
    Fallback,
}

named!(FailurePolicyName(Policy) {
    "fail_open" => Policy::FailOpen,
    "fail_closed" => Policy::FailClosed,
    "fallback" => Policy::Fallback,
});

named!(
    #[derive(Default)]
    ResetName(ResetFormat) {
    "delta_seconds" => ResetFormat::DeltaSeconds,
    "unix_time" => ResetFormat::UnixTime,
});

/// A `[store.redis]` URL written in the file: a single string is accepted as well as a list.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(url) => vec![url],
        OneOrMany::Many(urls) => urls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error's (line, field, message), or a panic naming what loaded.
    fn toml_error(text: &str) -> (usize, String, String) {
        match Config::from_toml(text, "limits.toml") {
            Err(ConfigError::Invalid {
                origin,
                line,
                field,
                message,
                ..
            }) => {
                assert_eq!(origin, "limits.toml");
                (line, field, message)
            }
            other => panic!("expected an invalid-field error, got {other:?}"),
        }
    }

    const EXAMPLE: &str = r#"
key_secret_env = "TOLLGATE_TEST_SECRET_UNUSED"

[[limits]]
name = "login"
quota = "100/minute"
key = ["client_ip"]
scope = { paths = ["/login"], methods = ["POST"] }

[[limits]]
name = "api"
quota = "600 per minute"
algorithm = "sliding_window"
key = ["header:x-api-key", "query:api_key?"]
scope = { paths = ["/api/*"], except = [{ paths = ["/api/health"] }] }
"#;

    #[test]
    fn every_field_reads() {
        let text = r#"
routes = ["/vms/{id}"]

[[limits]]
name = "all"
quota = "5/10s"
algorithm = "gcra"
burst = 2
cost = 1
shadow = true
honour_replays = true
key = ["client_ip", "bearer_token", "route", "method", "token_id?", "session_user?"]
scope = { paths = ["/vms/{id}"], methods = ["GET", "POST"], without = ["header:x-admin"] }
tiers = { pro = "10/10s" }

[[limits]]
name = "per_key"
quota = "600/minute"
key = ["header:x-api-key"]
quota_for = { "enterprise-demo" = "6000/minute" }
charge_on = [401, 403]
cost_header = "x-batch-size"

[client_ip]
trusted_proxies = ["10.0.0.0/8", "::1"]
forwarded_header = "forwarded"
ipv4_prefix = 24
ipv6_prefix = 56

[headers]
style = "both"
reset = "unix_time"
expose = true

[idempotency]
header = "x-request-id"
ttl = "1h"
max_replays = 3
methods = ["POST"]
body_max_len = 4096

[exempt]
ips = ["192.0.2.0/24"]
identities = [{ part = "header:x-api-key", values = ["internal-secret-key"] }]

[store.memory]
max_keys = 1000
shards = 4
"#;
        let config = Config::from_toml(text, "all.toml").unwrap();
        // Every field round-trips between the formats: the same document written as JSON
        // reads as the same configuration.
        let value: serde_json::Value = toml::from_str(text).unwrap();
        let json = serde_json::to_string_pretty(&value).unwrap();
        let from_json = Config::from_json(&json, "all.toml").unwrap();
        assert_eq!(format!("{from_json:?}"), format!("{config:?}"));
        let limit = &config.file.limits[0].0;
        let rule = limit.rule().unwrap();
        let quota = Quota::new(5, Duration::from_secs(10)).unwrap();
        assert_eq!(*rule.quota(), quota.with_burst(2).unwrap());
        assert!(rule.is_shadow() && rule.honours_replays());
        assert_eq!(rule.algorithm(), Algorithm::Gcra);
        assert_eq!(limit.key.len(), 6);
        assert_eq!(
            limit.tiers[0].1,
            Quota::new(10, Duration::from_secs(10)).unwrap()
        );
        assert_eq!(config.file.limits[1].0.identities.len(), 1);
        assert_eq!(config.file.limits[1].0.charge_on.len(), 2);
        assert!(config.file.limits[1].0.cost_from.is_some());
        assert_eq!(config.file.client_ip.trusted_proxies.len(), 2);
        assert_eq!(config.file.exempt.identities[0].values.len(), 1);
        let layer = config.layer().unwrap();
        for shown in [format!("{config:?}"), format!("{layer:?}")] {
            assert!(!shown.contains("internal-secret-key"), "{shown}");
            assert!(!shown.contains("enterprise-demo"), "{shown}");
        }
    }

    #[test]
    fn the_module_example_reads_and_builds() {
        let config = Config::from_toml(
            &EXAMPLE.replace("key_secret_env = \"TOLLGATE_TEST_SECRET_UNUSED\"", ""),
            "limits.toml",
        )
        .unwrap();
        assert_eq!(config.file.limits.len(), 2);
        let _ = config.layer().unwrap();
    }

    #[test]
    fn unknown_fields_are_errors_at_their_line() {
        let (line, field, message) = toml_error("[headers]\nstyle = \"both\"\ncolour = \"red\"\n");
        assert_eq!((line, field.as_str()), (3, "headers.colour"));
        assert!(message.contains("unknown field `colour`"), "{message}");
        assert!(message.contains("`style`, `reset`, `expose`"), "{message}");

        let (line, field, message) =
            toml_error("[[limits]]\nname = \"a\"\nquota = \"1/s\"\nkeys = [\"client_ip\"]\n");
        assert_eq!((line, field.as_str()), (4, "limits[0].keys"));
        assert!(message.contains("unknown field `keys`"), "{message}");

        let (line, _, message) = toml_error("redis_url = \"redis://x\"\n");
        assert_eq!(line, 1);
        assert!(message.contains("unknown field `redis_url`"), "{message}");
    }

    #[test]
    fn a_bad_quota_names_its_field_and_the_valid_forms() {
        let (line, field, message) =
            toml_error("[[limits]]\nname = \"a\"\n\nquota = \"100 a minute\"\n");
        assert_eq!((line, field.as_str()), (4, "limits[0].quota"));
        assert!(message.contains("\"100/minute\""), "{message}");

        let (line, field, message) = toml_error("[[limits]]\nname = \"a\"\nquota = \"0/s\"\n");
        assert_eq!((line, field.as_str()), (3, "limits[0].quota"));
        assert!(message.contains("at least 1 request"), "{message}");
    }

    #[test]
    fn names_list_the_valid_words() {
        let (line, field, message) =
            toml_error("[[limits]]\nname = \"a\"\nquota = \"1/s\"\nalgorithm = \"leaky_bucket\"\n");
        assert_eq!((line, field.as_str()), (4, "limits[0].algorithm"));
        assert!(
            message.contains("`gcra`, `fixed_window`, `sliding_window`, `sliding_log`"),
            "{message}"
        );
        let (_, field, message) = toml_error("[headers]\nstyle = \"X-RateLimit\"\n");
        assert_eq!(field, "headers.style");
        assert!(message.contains("`x-ratelimit`"), "{message}");
        let (_, field, message) = toml_error(
            "[[limits]]\nname = \"a\"\nquota = \"1/s\"\nkey = [\"client_ip\", \"cookie:sid\"]\n",
        );
        assert_eq!(field, "limits[0].key[1]");
        assert!(
            message.contains("header:<name> or query:<name>"),
            "{message}"
        );
    }

    #[test]
    fn a_limit_s_own_mistake_points_at_the_limit() {
        // A burst spanning more than the longest burst span.
        let (line, field, message) =
            toml_error("[[limits]]\nname = \"slow\"\nquota = \"1/day\"\nburst = 100\n");
        // The limit's table starts at its `[[limits]]` line.
        assert_eq!((line, field.as_str()), (1, "limits[0]"), "{message}");
        assert!(
            message.contains("slow") && message.contains("burst"),
            "{message}"
        );
    }

    #[test]
    fn two_limits_with_one_name_are_an_error() {
        let (_, field, message) = toml_error(
            "[[limits]]\nname = \"a\"\nquota = \"1/s\"\n[[limits]]\nname = \"a\"\nquota = \"2/s\"\n",
        );
        assert_eq!(field, "limits");
        assert!(
            message.contains("limits[0] and limits[1] are both named \"a\""),
            "{message}"
        );
    }

    #[test]
    fn bad_values_elsewhere_name_their_field() {
        for (text, expected_field, expected) in [
            (
                "[client_ip]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
                "client_ip.trusted_proxies[0]",
                "10.0.0.0/8",
            ),
            (
                "[client_ip]\nipv4_prefix = 300\n",
                "client_ip.ipv4_prefix",
                "u8",
            ),
            (
                "[idempotency]\nttl = \"2 days\"\n",
                "idempotency",
                "24 hours",
            ),
            (
                "[idempotency]\nttl = \"soon\"\n",
                "idempotency.ttl",
                "\"250ms\"",
            ),
            (
                "[idempotency]\nmethods = [\"G ET\"]\n",
                "idempotency.methods[0]",
                "method",
            ),
            ("routes = [\"/a/{\"]\n", "routes[0]", "{"),
            (
                "[store.redis]\nurl = \"redis://127.0.0.1\"\npassword = \"p\"\n",
                "store.redis.password",
                "unknown field `password`",
            ),
            (
                "[[limits]]\nname = \"a\"\n",
                "limits[0]",
                "missing field `quota`",
            ),
            (
                "[[limits]]\nname = \"a\"\nquota = \"1/s\"\ncharge_on = [401, 1000]\n",
                "limits[0].charge_on[1]",
                "not an HTTP status",
            ),
            (
                "[[limits]]\nname = \"a\"\nquota = \"1/s\"\ntiers = { pro = \"lots\" }\n",
                "limits[0].tiers.pro",
                "\"100/minute\"",
            ),
            (
                "[[limits]]\nname = \"a\"\nquota = \"1/s\"\nkey = [\"client_ip\", \"route\"]\nquota_for = { k = \"2/s\" }\n",
                "limits[0]",
                "exactly one part",
            ),
        ] {
            let (line, field, message) = toml_error(text);
            assert_eq!(field, expected_field, "{text}: {message}");
            assert!(line >= 1, "{text}: no line");
            assert!(
                message.to_lowercase().contains(&expected.to_lowercase()),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn toml_syntax_errors_say_where() {
        let (line, field, _) = toml_error("[[limits]]\nname = \"a\nquota = \"1/s\"\n");
        assert_eq!((line, field.as_str()), (2, "."));
    }

    #[test]
    fn json_reads_the_same_document() {
        let json = r#"{
  "limits": [
    {"name": "login", "quota": "100/minute", "key": ["client_ip"],
     "scope": {"paths": ["/login"], "methods": ["POST"]}}
  ],
  "headers": {"style": "ietf"}
}"#;
        let config = Config::from_json(json, "limits.json").unwrap();
        assert_eq!(config.file.limits[0].0.name(), "login");
        let _ = config.layer().unwrap();

        let bad = "{\n  \"limits\": [\n    {\"name\": \"a\", \"quota\": \"1/s\", \"shadw\": true}\n  ]\n}";
        match Config::from_json(bad, "limits.json") {
            Err(ConfigError::Invalid {
                line,
                field,
                message,
                ..
            }) => {
                assert_eq!((line, field.as_str()), (3, "limits[0].shadw"));
                assert!(message.contains("unknown field `shadw`"), "{message}");
                assert!(!message.contains(" at line "), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Config::from_json("{} {}", "x.json"),
            Err(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn the_key_secret_comes_from_the_named_variable_and_is_never_quoted() {
        let text = |var: &str| format!("key_secret_env = \"{var}\"\n");
        let missing = Config::from_toml(&text("TOLLGATE_TEST_SECRET_MISSING"), "s.toml").unwrap();
        let err = missing.layer().unwrap_err().to_string();
        assert!(
            err.contains("TOLLGATE_TEST_SECRET_MISSING is not set"),
            "{err}"
        );

        std::env::set_var("TOLLGATE_TEST_SECRET_SHORT", "hunter2-secret-value");
        let short = Config::from_toml(&text("TOLLGATE_TEST_SECRET_SHORT"), "s.toml").unwrap();
        let err = short.layer().unwrap_err().to_string();
        assert!(err.contains("32 hex digits"), "{err}");
        assert!(!err.contains("hunter2"), "the secret leaked: {err}");

        std::env::set_var(
            "TOLLGATE_TEST_SECRET_GOOD",
            "00112233445566778899aabbccddeeff",
        );
        let good = Config::from_toml(&text("TOLLGATE_TEST_SECRET_GOOD"), "s.toml").unwrap();
        let _ = good.layer().unwrap();
        assert_eq!(
            parse_secret("00112233445566778899aabbccddeeff"),
            Some(KeySecret::from_bytes([
                0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
                0xee, 0xff
            ]))
        );
        assert_eq!(parse_secret("00112233445566778899aabbccddeeé"), None);
        assert_eq!(parse_secret("+0112233445566778899aabbccddeeff"), None);
    }

    #[test]
    fn from_path_tells_the_format_by_the_name() {
        let dir = std::env::temp_dir().join(format!("tollgate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml = dir.join("limits.toml");
        std::fs::write(&toml, "[[limits]]\nname = \"a\"\nquota = \"1/s\"\n").unwrap();
        let _ = Config::from_path(&toml).unwrap().layer().unwrap();
        let yaml = dir.join("limits.yaml");
        std::fs::write(&yaml, "limits: []\n").unwrap();
        assert!(matches!(
            Config::from_path(&yaml),
            Err(ConfigError::Format { .. })
        ));
        let err = Config::from_path(dir.join("absent.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent.toml"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
