//! The built limiter: for one request, which limits apply and under which keys (a [`Plan`]),
//! then what the store's answer means for the client (a [`Verdict`]).
//!
//! - `compile`: a builder's limits and scopes, checked and numbered, once.
//! - `plan`: the limits a request meets, and their keys.
//! - `verdict`: the store's answer turned into counters, headers and, when denied, a response.
//!
//! Everything here is fixed when the layer is built; a request only reads it. Each key part the
//! request needs is read and hashed once, however many limits use it.

mod compile;
mod deferred;
mod plan;
mod shared;
mod verdict;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tollgate_core::{KeySecret, LogThrottle, Rule, Store};

use crate::builder::Settings;
use crate::client_ip::ClientIpConfig;
use crate::error::BuildError;
use crate::idempotency::Idempotency;
use crate::metrics::{LayerCounters, Metrics};
use crate::response::{default_responder, HeaderWriter, Responder};
use crate::route::RoutePattern;

use compile::{CompiledExemptions, CompiledLimit, CompiledSource};
pub(crate) use deferred::Held;
pub(crate) use plan::{Plan, Refusal};
pub(crate) use shared::{erase as erase_client_quotas, LoadQuotas};
pub(crate) use verdict::Verdict;

/// At most one line per this interval for each event that can happen on every request.
const LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Everything the layer knows, shared by every clone of the layer and its services.
pub(crate) struct Limiter<S> {
    /// Shared with the layer, which keeps it when a new configuration replaces this one.
    store: Arc<S>,
    secret: KeySecret,
    /// Every distinct key part any limit or scope reads, numbered: the numbers in
    /// [`CompiledLimit`]s and their scopes index this.
    sources: Box<[CompiledSource]>,
    limits: Box<[CompiledLimit]>,
    exempt: Option<CompiledExemptions>,
    /// Whether any scope names paths: if none does, a request's path is never looked at.
    path_scopes: bool,
    client_ip: ClientIpConfig,
    /// Route templates for services without a router (axum's `MatchedPath` wins).
    routes: Box<[RoutePattern]>,
    idempotency: Option<Idempotency>,
    headers: HeaderWriter,
    responder: Responder,
    counters: LayerCounters,
    warned_no_peer: AtomicBool,
    warned_no_route: AtomicBool,
    /// Store failures and answers that make no sense: at most one line per second.
    store_log: LogThrottle,
    /// Admitted requests leaving less than this percentage of a limit are near the limit.
    near_limit_percent: u8,
    /// Requests in flight for limits charged by the response.
    in_flight: Arc<deferred::InFlight>,
    /// Client quotas read at runtime, if the builder named a source.
    shared: Option<Arc<shared::SharedQuotas>>,
}

impl<S: Store> Limiter<S> {
    /// Compiles the settings: a limiter ready for requests, or every mistake, `mistakes` (those
    /// the builder found as it went) first.
    pub(crate) fn new(
        store: Arc<S>,
        settings: Settings,
        mut mistakes: Vec<BuildError>,
    ) -> Result<Self, BuildError> {
        let compiled = compile::limits(
            &settings.limits,
            &settings.exempt,
            &settings.secret,
            &mut mistakes,
        );
        let routes = settings
            .routes
            .iter()
            .filter_map(|p| {
                RoutePattern::parse(p)
                    .map_err(|e| mistakes.push(e.into()))
                    .ok()
            })
            .collect();
        if let Some(Err(e)) = settings.idempotency.as_ref().map(Idempotency::validate) {
            mistakes.push(e);
        }
        BuildError::check(mistakes)?;
        let shared = match &settings.client_quotas {
            Some((load, refresh)) => Some(shared::SharedQuotas::start(
                Arc::clone(load),
                *refresh,
                &compiled.limits,
            )?),
            None => None,
        };
        Ok(Self {
            store,
            secret: settings.secret,
            path_scopes: compiled.limits.iter().any(|l| l.scope.has_paths()),
            sources: compiled.sources,
            limits: compiled.limits,
            exempt: compiled.exempt,
            client_ip: settings.client_ip,
            routes,
            idempotency: settings.idempotency,
            headers: HeaderWriter::new(settings.style, settings.reset, settings.expose),
            responder: settings.responder.unwrap_or_else(default_responder),
            counters: LayerCounters::new(S::NAME),
            near_limit_percent: settings.near_limit_percent,
            warned_no_peer: AtomicBool::new(false),
            warned_no_route: AtomicBool::new(false),
            store_log: LogThrottle::new(LOG_INTERVAL),
            in_flight: Arc::default(),
            shared,
        })
    }
}

impl<S> Limiter<S> {
    /// The digest [`ClientQuota::client`](tollgate_core::ClientQuota) names a client by: that
    /// of `value` as the one key part of limit `name`.
    pub(crate) fn client_digest(&self, name: &str, value: &[u8]) -> Option<tollgate_core::Key> {
        let limit = self.limits.iter().find(|l| l.rule.name() == name)?;
        let [(part, _)] = limit.parts[..] else {
            return None;
        };
        crate::exempt::value_digest(&self.secret, &self.sources[part].tag, value)
    }

    /// The rules, in the order the limits were added.
    pub(crate) fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.limits.iter().map(|l| &l.rule)
    }

    /// What every limit, and the layer, counted so far.
    pub(crate) fn metrics(&self) -> Metrics {
        Metrics {
            limits: self
                .limits
                .iter()
                .map(|l| l.counters.snapshot(l.rule.name()))
                .collect(),
            replayed: self.counters.replayed(),
            exempt: self.counters.exempt(),
            misconfigured: self.counters.misconfigured(),
        }
    }
}
