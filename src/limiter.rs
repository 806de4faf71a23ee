//! The built limiter: for one request, which limits apply and under which keys (a [`Plan`]),
//! then what the store's answer means for the client (a [`Verdict`]).
//!
//! Everything here is fixed when the layer is built; a request only reads it. Each key part the
//! request needs is read and hashed once, however many limits use it.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Extensions, HeaderMap, Method, Request, Response, Uri};
use http_body_util::Full;
use smallvec::{smallvec, SmallVec};
use tollgate_core::{Check, Key, KeySecret, LogThrottle, Outcome, Replay, Rule, Store};

use crate::client_ip::{ClientIpConfig, MissingPeerAddr};
use crate::idempotency::Idempotency;
use crate::key::{bearer_tokens, header_values, push_values, query_values, Source};
use crate::metrics::{Counters, LayerCounters};
use crate::response::{self, Denial, HeaderWriter, RateLimitHeaders, Reported, Responder};
use crate::route::RoutePattern;
use crate::scope::ScopeMatcher;

/// Everything the layer knows, shared by every clone of the layer and its services.
pub(crate) struct Limiter<S> {
    pub(crate) store: S,
    pub(crate) secret: KeySecret,
    /// Every distinct key part any limit or scope reads, numbered.
    pub(crate) sources: Box<[CompiledSource]>,
    pub(crate) limits: Box<[CompiledLimit]>,
    pub(crate) client_ip: ClientIpConfig,
    /// Route templates for services without a router (axum's `MatchedPath` wins).
    pub(crate) routes: Box<[RoutePattern]>,
    pub(crate) idempotency: Option<Idempotency>,
    pub(crate) headers: HeaderWriter,
    pub(crate) responder: Responder,
    pub(crate) counters: LayerCounters,
    pub(crate) warned_no_peer: AtomicBool,
    pub(crate) warned_no_route: AtomicBool,
    /// Store failures and answers that make no sense: at most one line per second.
    pub(crate) store_log: LogThrottle,
}

pub(crate) struct CompiledSource {
    pub(crate) source: Source,
    pub(crate) tag: Cow<'static, [u8]>,
}

pub(crate) struct CompiledLimit {
    pub(crate) rule: Rule,
    pub(crate) scope: ScopeMatcher,
    /// (source index, required) per key part, in order.
    pub(crate) parts: SmallVec<[(usize, bool); 6]>,
    /// The IETF `RateLimit-Policy` item.
    pub(crate) policy: Box<str>,
    pub(crate) counters: Counters,
    /// Shadow denials of this limit: at most one line per second.
    pub(crate) shadow_log: LogThrottle,
}

/// The limits that apply to one request, each with its key.
pub(crate) struct Plan {
    pub(crate) checks: SmallVec<[(usize, Key); 4]>,
    pub(crate) replay: Option<Replay>,
}

/// What to do with a decided request.
pub(crate) enum Verdict {
    /// Call the inner service and add these headers to its response.
    Admit(RateLimitHeaders),
    /// Answer with this response; the inner service is not called.
    Respond(Response<Full<Bytes>>),
}

/// The parts of a request the limiter reads.
#[derive(Clone, Copy)]
pub(crate) struct RequestHead<'a> {
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    pub(crate) fn of<B>(request: &'a Request<B>) -> Self {
        Self {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        }
    }
}

/// A key part of the request being planned, read at most once.
#[derive(Clone, Copy)]
enum Part {
    Unread,
    Absent,
    Present(Key),
}

impl<S: Store> Limiter<S> {
    /// The limits that apply to the request and their keys; `None` when none applies. An error
    /// when a limit needs the client address and the server provides none.
    pub(crate) fn plan(&self, req: &RequestHead<'_>) -> Result<Option<Plan>, MissingPeerAddr> {
        let mut parts: SmallVec<[Part; 8]> = smallvec![Part::Unread; self.sources.len()];
        let path = req.uri.path();
        let mut checks: SmallVec<[(usize, Key); 4]> = SmallVec::new();
        'limits: for (index, limit) in self.limits.iter().enumerate() {
            let applies = {
                let mut present = |i| self.part(i, req, &mut parts).map(|p| p.is_some());
                limit.scope.matches(req.method, path, &mut present)?
            };
            if !applies {
                continue;
            }
            let mut key = self.secret.key();
            for &(i, required) in &limit.parts {
                match self.part(i, req, &mut parts)? {
                    Some(part) => key.push(&part.as_u128().to_le_bytes()),
                    None if required => continue 'limits,
                    None => key.push(&[]),
                }
            }
            checks.push((index, key.finish()));
        }
        if checks.is_empty() {
            return Ok(None);
        }
        let replay = self
            .idempotency
            .as_ref()
            .filter(|idempotency| idempotency.applies_to(req.method))
            .filter(|_| {
                checks
                    .iter()
                    .any(|&(i, _)| self.limits[i].rule.honours_replays())
            })
            .and_then(|idempotency| {
                // The same request: its template, or its path when it has none.
                let route = self.find_route(req).unwrap_or(path);
                idempotency.replay(&self.secret, req, route, checks.iter().map(|&(_, key)| key))
            });
        Ok(Some(Plan { checks, replay }))
    }

    /// The digest of key part `i`, reading and hashing it on first use.
    fn part(
        &self,
        i: usize,
        req: &RequestHead<'_>,
        cache: &mut [Part],
    ) -> Result<Option<Key>, MissingPeerAddr> {
        let (Some(slot), Some(source)) = (cache.get_mut(i), self.sources.get(i)) else {
            return Ok(None);
        };
        match *slot {
            Part::Present(key) => return Ok(Some(key)),
            Part::Absent => return Ok(None),
            Part::Unread => {}
        }
        let mut key = self.secret.key().part(&source.tag);
        let found = match &source.source {
            Source::ClientIp => {
                let group = self
                    .client_ip
                    .client_group(req.headers, req.extensions)
                    .inspect_err(|_| self.report_missing_peer())?;
                key.push(group.as_bytes());
                true
            }
            // Every occurrence counts: see `crate::key` for the one reading of repeats.
            Source::BearerToken => push_values(&mut key, bearer_tokens(req.headers)),
            Source::Header(name) => push_values(&mut key, header_values(req.headers, name)),
            Source::Query(name) => req
                .uri
                .query()
                .is_some_and(|q| push_values(&mut key, query_values(q, name))),
            Source::Extension(ext) => (ext.write)(req.extensions, &mut key),
            Source::Route => self.route(req).map(|r| key.push(r.as_bytes())).is_some(),
            Source::Method => {
                key.push(req.method.as_str().as_bytes());
                true
            }
        };
        let digest = found.then(|| key.finish());
        *slot = digest.map_or(Part::Absent, Part::Present);
        Ok(digest)
    }

    /// The request's route template, for a limit keyed by route: [`find_route`](Self::find_route),
    /// telling once when a request has none.
    fn route<'r>(&'r self, req: &RequestHead<'r>) -> Option<&'r str> {
        let found = self.find_route(req);
        if found.is_none() && !self.warned_no_route.swap(true, Ordering::Relaxed) {
            tracing::info!(
                "tollgate: a request matched no route (no axum MatchedPath, no pattern given to \
                 RateLimitBuilder::routes), so limits keyed by route do not apply to it; this is \
                 expected for 404s, otherwise mount the layer with Router::layer/route_layer or \
                 give the route patterns to the layer (logged once)"
            );
        }
        found
    }

    /// The request's route template: axum's `MatchedPath`, else the first configured pattern
    /// that matches the path.
    fn find_route<'r>(&'r self, req: &RequestHead<'r>) -> Option<&'r str> {
        #[cfg(feature = "axum")]
        if let Some(matched) = req.extensions.get::<axum::extract::MatchedPath>() {
            return Some(matched.as_str());
        }
        let path = req.uri.path();
        self.routes
            .iter()
            .find(|p| p.matches(path))
            .map(RoutePattern::as_str)
    }

    fn report_missing_peer(&self) {
        crate::metrics::Counters::bump(&self.counters.misconfigured);
        if !self.warned_no_peer.swap(true, Ordering::Relaxed) {
            tracing::error!("{} (logged once)", response::MISSING_PEER_ADDR);
        } else {
            tracing::debug!("{}", response::MISSING_PEER_ADDR);
        }
    }

    /// The store's checks for a plan.
    fn checks<'a>(&'a self, plan: &Plan) -> SmallVec<[Check<'a>; 4]> {
        plan.checks
            .iter()
            .filter_map(|&(i, key)| {
                let rule = &self.limits.get(i)?.rule;
                Some(Check { rule, key })
            })
            .collect()
    }

    /// The store's answer, if it can give it without waiting (`Store::check_ready`).
    pub(crate) fn check_ready(&self, plan: &Plan) -> Option<Result<Outcome, S::Error>> {
        self.store
            .check_ready(&self.checks(plan), plan.replay.as_ref())
    }

    /// Asks the store about the planned checks.
    pub(crate) async fn check(&self, plan: &Plan) -> Result<Outcome, S::Error> {
        let checks = self.checks(plan);
        self.store.check(&checks, plan.replay.as_ref()).await
    }

    /// What the store's answer means for the client; counts it and logs what deserves it.
    pub(crate) fn verdict(
        &self,
        plan: &Plan,
        answer: Result<Outcome, S::Error>,
        req: &RequestHead<'_>,
    ) -> Verdict {
        let applied = || plan.checks.iter().filter_map(|&(i, _)| self.limits.get(i));
        let outcome = match answer {
            Ok(outcome) if outcome.decisions.len() == plan.checks.len() => outcome,
            Ok(outcome) => {
                if let Some(suppressed) = self.store_log.permit() {
                    tracing::error!(
                        checks = plan.checks.len(),
                        decisions = outcome.decisions.len(),
                        suppressed,
                        "rate limiter store answered with the wrong number of decisions; answering 503"
                    );
                }
                applied().for_each(|l| Counters::bump(&l.counters.errors));
                return Verdict::Respond(response::unavailable());
            }
            Err(error) => {
                if let Some(suppressed) = self.store_log.permit() {
                    tracing::error!(%error, suppressed, "rate limiter store failed; answering 503");
                }
                applied().for_each(|l| Counters::bump(&l.counters.errors));
                return Verdict::Respond(response::unavailable());
            }
        };

        for (limit, decision) in applied().zip(&outcome.decisions) {
            let counters = &limit.counters;
            if limit.rule.is_shadow() && !decision.allowed {
                Counters::bump(&counters.shadow_denied);
                if let Some(suppressed) = limit.shadow_log.permit() {
                    tracing::info!(
                        rule = limit.rule.name(),
                        retry_after_ms = decision.retry_after.map_or(0, |d| d.as_millis()),
                        suppressed,
                        "shadow rule would have denied the request"
                    );
                }
            } else if outcome.allowed {
                Counters::bump(&counters.allowed);
            } else if !decision.allowed {
                Counters::bump(&counters.denied);
            }
        }
        if outcome.replayed {
            Counters::bump(&self.counters.replayed);
        }

        let reported = applied()
            .zip(&outcome.decisions)
            .filter(|(limit, _)| !limit.rule.is_shadow())
            .map(|(limit, decision)| Reported {
                name: limit.rule.name(),
                policy: &limit.policy,
                decision,
            });
        let binding = outcome.binding_decision();
        let headers = self.headers.headers(binding, reported);
        if outcome.allowed {
            return Verdict::Admit(headers);
        }

        // Denied: an enforced rule refused, and the binding decision is the longest wait.
        let binding_limit = outcome
            .binding
            .and_then(|b| plan.checks.get(b))
            .and_then(|&(i, _)| self.limits.get(i));
        let (Some(limit), Some(decision)) = (binding_limit, binding) else {
            if let Some(suppressed) = self.store_log.permit() {
                tracing::error!(
                    suppressed,
                    "rate limiter store denied a request without a binding rule; answering 503"
                );
            }
            return Verdict::Respond(response::unavailable());
        };
        let denial = Denial {
            rule: &limit.rule,
            decision,
            method: req.method,
            uri: req.uri,
            headers: req.headers,
        };
        tracing::debug!(
            rule = limit.rule.name(),
            retry_after = denial.retry_after_secs(),
            "request denied"
        );
        let mut response = (self.responder)(&denial);
        headers.apply(response.headers_mut());
        Verdict::Respond(response)
    }
}
