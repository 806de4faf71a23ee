//! Planning: which limits a request meets, and under which keys.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use smallvec::{smallvec, SmallVec};
use tollgate_core::{Check, Key, Outcome, Replay, Rule, Store};
use tracing::Span;

use super::compile::CompiledLimit;
use super::Limiter;
use crate::client_ip::MissingPeerAddr;
use crate::head::RequestHead;
use crate::key::{bearer_tokens, header_values, push_values, query_values, Source};
use crate::limit::Tier;
use crate::metrics::{bump, StoreOp};
use crate::response::MISSING_PEER_ADDR;
use crate::route::RoutePattern;

/// The limits that apply to one request, each with its key. Made empty by the caller and
/// filled in place by [`Limiter::plan`]: returned, it would be copied (a few hundred bytes).
#[derive(Clone, Default)]
pub(crate) struct Plan {
    /// The limits charged up front, then the `deferred` ones charged by the response.
    checks: SmallVec<[(LimitId, Key); 4]>,
    replay: Option<Replay>,
    deferred: usize,
    /// The checks (by index) whose rule is the request's own: at the cost it declared, or at
    /// the client's quota read at runtime (with that quota's policy item).
    own: SmallVec<[OwnRule; 1]>,
}

/// Check `at`'s rule for this request alone, and its policy item when not the limit's.
#[derive(Clone)]
struct OwnRule {
    at: usize,
    rule: Rule,
    policy: Option<Arc<str>>,
}

/// Why a request is answered before any store is asked.
pub(crate) enum Refusal {
    /// The server gives no peer address (a 500: the layer is misconfigured).
    MissingPeer,
    /// A limit reads the request's cost and cannot (a 400 naming where it read).
    UnreadableCost { what: Arc<str> },
    /// The request's cost is more than a limit can ever admit (a 429 that says so).
    CostNeverPasses {
        rule: Box<str>,
        cost: u64,
        capacity: u64,
    },
}

impl From<MissingPeerAddr> for Refusal {
    fn from(_: MissingPeerAddr) -> Self {
        Refusal::MissingPeer
    }
}

/// A limit of the limiter that made the plan, and the variant of its rule (the quota) that
/// applies to the request. Only [`Limiter::plan`] makes one, from the limiter's own list, and a
/// plan is only ever used with the limiter that made it (the layer keeps them together), so
/// [`Limiter::limit`] always finds it.
#[derive(Clone, Copy)]
pub(super) struct LimitId {
    index: usize,
    variant: u16,
}

impl Plan {
    /// Whether some limits are charged by the response ([`Limit::charge_on`]): the request is
    /// then decided by [`Limiter::decide_deferred`](super::deferred).
    ///
    /// [`Limit::charge_on`]: crate::Limit::charge_on
    pub(crate) fn has_deferred(&self) -> bool {
        self.deferred > 0
    }

    /// Every applicable limit (as indices): those charged up front, then those charged by the
    /// response.
    pub(super) fn all(&self) -> std::ops::Range<usize> {
        0..self.checks.len()
    }

    /// The limits charged up front.
    pub(super) fn upfront(&self) -> std::ops::Range<usize> {
        0..self.checks.len() - self.deferred
    }

    /// The limits charged by the response.
    pub(super) fn deferred(&self) -> std::ops::Range<usize> {
        self.checks.len() - self.deferred..self.checks.len()
    }

    /// How many limits apply.
    pub(super) fn len(&self) -> usize {
        self.checks.len()
    }

    /// The applicable limits with their keys, in order.
    pub(super) fn checks(&self) -> impl Iterator<Item = (LimitId, Key)> + '_ {
        self.checks.iter().copied()
    }

    /// The limit of check `i`, for an `i` below [`len`](Self::len) (a store's `binding`, once
    /// `verdict` has checked it is one).
    pub(super) fn limit_of(&self, i: usize) -> LimitId {
        self.checks[i].0
    }
}

/// Which of `limit`'s quotas applies to the request (its parts already read into `parts`): the
/// client's own, else its tier's, else the limit's (0).
fn variant_for(limit: &CompiledLimit, req: &RequestHead<'_>, parts: &[Part]) -> u16 {
    if let ([(part, _)], false) = (&limit.parts[..], limit.identities.is_empty()) {
        if let Part::Present(key) = parts[*part] {
            let digest = key.as_u128();
            if let Ok(i) = limit.identities.binary_search_by_key(&digest, |&(d, _)| d) {
                return limit.identities[i].1;
            }
        }
    }
    if !limit.tiers.is_empty() {
        if let Some(tier) = req.extensions().get::<Tier>() {
            if let Some(&(_, v)) = limit.tiers.iter().find(|(name, _)| **name == *tier.name()) {
                return v;
            }
        }
    }
    0
}

/// A key part of the request being planned, read at most once.
#[derive(Clone, Copy)]
enum Part {
    Unread,
    Absent,
    Present(Key),
}

impl<S> Limiter<S> {
    /// The limit a plan refers to.
    pub(super) fn limit(&self, id: LimitId) -> &CompiledLimit {
        &self.limits[id.index]
    }

    /// The rule, and its policy item, that the plan applies for `id`: the limit's own, or the
    /// quota of the client's tier or of the client itself.
    pub(super) fn rule(&self, id: LimitId) -> (&Rule, &str) {
        self.limit(id).variant(id.variant)
    }

    /// The limits a plan applies, in order.
    pub(super) fn applied<'a>(
        &'a self,
        plan: &'a Plan,
    ) -> impl Iterator<Item = &'a CompiledLimit> + 'a {
        plan.checks().map(|(id, _)| self.limit(id))
    }
}

impl<S: Store> Limiter<S> {
    /// The limits that apply to the request and their keys, written into `plan` (an empty
    /// one); `false` when none applies. An error when a limit needs the client address and the
    /// server provides none, or the request's cost cannot be read or can never pass.
    pub(crate) fn plan(&self, req: &RequestHead<'_>, plan: &mut Plan) -> Result<bool, Refusal> {
        let mut parts: SmallVec<[Part; 8]> = smallvec![Part::Unread; self.sources.len()];
        let path = if self.path_scopes {
            scope_path(req)
        } else {
            ""
        };
        if self.is_exempt(req, &mut parts)? {
            self.counters.exempted();
            return Ok(false);
        }
        let checks = &mut plan.checks;
        let mut deferred: SmallVec<[(LimitId, Key); 2]> = SmallVec::new();
        // (deferred?, index among its kind, the request's own rule, its policy if not the limit's)
        let mut own: SmallVec<[(bool, OwnRule); 1]> = SmallVec::new();
        'limits: for (index, limit) in self.limits.iter().enumerate() {
            let applies = {
                let mut present = |i| self.part(i, req, &mut parts).map(|p| p.is_some());
                limit.scope.matches(req.method(), path, &mut present)?
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
            let variant = variant_for(limit, req, &parts);
            let id = LimitId { index, variant };
            let is_deferred = !limit.charge_on.is_empty();
            // A client quota read at runtime wins over those given in code.
            let shared = self.shared_rule(limit, index, &parts);
            let base = shared.as_ref().map_or(self.rule(id).0, |(rule, _)| rule);
            let costed = self.costed_rule(limit, base, req)?;
            let at = if is_deferred {
                deferred.len()
            } else {
                checks.len()
            };
            let rule = match (costed, shared) {
                (Some(rule), shared) => Some((rule, shared.map(|s| s.1))),
                (None, Some((rule, policy))) => Some((rule, Some(policy))),
                (None, None) => None,
            };
            if let Some((rule, policy)) = rule {
                own.push((is_deferred, OwnRule { at, rule, policy }));
            }
            let check = (id, key.finish());
            if is_deferred {
                deferred.push(check);
            } else {
                checks.push(check);
            }
        }
        if checks.is_empty() && deferred.is_empty() {
            return Ok(false);
        }
        let replay = self
            .idempotency
            .as_ref()
            .filter(|idempotency| idempotency.applies_to(req.method()))
            .filter(|_| {
                checks
                    .iter()
                    .any(|&(id, _)| self.limit(id).rule.honours_replays())
            })
            .and_then(|idempotency| {
                // The same request: its template, or its path when it has none.
                let route = self.find_route(req).unwrap_or(req.uri().path());
                idempotency.replay(&self.secret, req, route, checks.iter().map(|&(_, key)| key))
            });
        let upfront = checks.len();
        let deferred_len = deferred.len();
        // Most requests have neither: extending or collecting from nothing still costs.
        if !deferred.is_empty() {
            checks.extend(deferred);
        }
        let own = if own.is_empty() {
            SmallVec::new()
        } else {
            own.into_iter()
                .map(|(is_deferred, own)| OwnRule {
                    at: if is_deferred {
                        upfront + own.at
                    } else {
                        own.at
                    },
                    ..own
                })
                .collect()
        };
        plan.replay = replay;
        plan.deferred = deferred_len;
        plan.own = own;
        Ok(true)
    }

    /// Whether the request passes uncounted: a predicate says so, the client address is in an
    /// exempt range, or an exempt key part has an exempt value.
    fn is_exempt(
        &self,
        req: &RequestHead<'_>,
        parts: &mut [Part],
    ) -> Result<bool, MissingPeerAddr> {
        let Some(exempt) = &self.exempt else {
            return Ok(false);
        };
        if exempt.predicates.iter().any(|p| p(req)) {
            return Ok(true);
        }
        if !exempt.ranges.is_empty() {
            let client = self
                .client_ip
                .client_addr(req.headers(), req.extensions())
                .inspect_err(|_| self.report_missing_peer())?;
            if exempt.ranges.iter().any(|range| range.contains(client)) {
                return Ok(true);
            }
        }
        for (i, digests) in exempt.identities.iter() {
            if let Some(key) = self.part(*i, req, parts)? {
                if digests.binary_search(&key.as_u128()).is_ok() {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The client's rule in limit `index`, when a quota of its own was read at runtime.
    fn shared_rule(
        &self,
        limit: &CompiledLimit,
        index: usize,
        parts: &[Part],
    ) -> Option<(Rule, Arc<str>)> {
        let shared = self.shared.as_ref()?;
        let [(part, _)] = limit.parts[..] else {
            return None;
        };
        match parts[part] {
            Part::Present(key) => shared.get(index, key.as_u128()),
            _ => None,
        }
    }

    /// `rule` (the limit's, at the quota that applies) at the cost the request declares, when
    /// it declares one other than the rule's.
    fn costed_rule(
        &self,
        limit: &CompiledLimit,
        rule: &Rule,
        req: &RequestHead<'_>,
    ) -> Result<Option<Rule>, Refusal> {
        let Some(source) = &limit.cost_from else {
            return Ok(None);
        };
        let cost = match (source.read)(req) {
            Ok(Some(cost)) => cost.max(1),
            Ok(None) => return Ok(None),
            Err(()) => {
                return Err(Refusal::UnreadableCost {
                    what: Arc::clone(&source.what),
                })
            }
        };
        if cost == rule.cost() {
            return Ok(None);
        }
        rule.with_cost(cost)
            .map(Some)
            .map_err(|_| Refusal::CostNeverPasses {
                rule: rule.name().into(),
                cost,
                capacity: rule.algorithm().capacity(rule.quota()),
            })
    }

    /// The rule check `i` of `plan` is decided by, and its policy item: its limit's, or the
    /// request's own (at its cost, or at the client's quota read at runtime).
    pub(super) fn rule_at<'a>(&'a self, plan: &'a Plan, i: usize) -> (&'a Rule, &'a str) {
        let (rule, policy) = self.rule(plan.checks[i].0);
        match plan.own.iter().find(|own| own.at == i) {
            Some(own) => (&own.rule, own.policy.as_deref().unwrap_or(policy)),
            None => (rule, policy),
        }
    }

    /// The store's checks for the planned limits `range`.
    #[inline]
    pub(super) fn store_checks<'a>(
        &'a self,
        plan: &'a Plan,
        range: std::ops::Range<usize>,
    ) -> SmallVec<[Check<'a>; 4]> {
        // Pushed one by one: `collect` through `Extend` costs more than the checks (about 120
        // instructions for one).
        let mut checks = SmallVec::new();
        for i in range {
            checks.push(Check {
                rule: self.rule_at(plan, i).0,
                key: plan.checks[i].1,
            });
        }
        checks
    }

    /// The store's answer, if it gives it without waiting (`Store::check_immediately`) and the
    /// plan has no limit charged by the response.
    pub(crate) fn check_immediately(
        &self,
        plan: &Plan,
        span: &Span,
    ) -> Option<Result<Outcome, S::Error>> {
        if plan.has_deferred() {
            return None;
        }
        let watch = self.counters.stopwatch(span);
        let checks = self.store_checks(plan, plan.upfront());
        if !watch.is_running() {
            // Returned as it comes: moving the answer (a 256-byte `Outcome`) costs more than
            // most of deciding it.
            return self.store.check_immediately(&checks, plan.replay.as_ref());
        }
        let answer = self.store.check_immediately(&checks, plan.replay.as_ref());
        // Timed only when it answered: a store that sends the caller to `check` is timed there.
        if answer.is_some() {
            self.counters.store_time(StoreOp::Check, watch, span);
        }
        answer
    }

    /// Asks the store about the limits charged up front, charging them; the time goes to
    /// `span` (the request's decision span).
    pub(crate) async fn check(&self, plan: &Plan, span: &Span) -> Result<Outcome, S::Error> {
        let checks = self.store_checks(plan, plan.upfront());
        let watch = self.counters.stopwatch(span);
        let answer = self.store.check(&checks, plan.replay.as_ref()).await;
        self.counters.store_time(StoreOp::Check, watch, span);
        answer
    }

    /// The digest of key part `i` (a number the compiled limits and scopes hold, so an index
    /// of `self.sources`, as long as `cache`), reading and hashing it on first use.
    fn part(
        &self,
        i: usize,
        req: &RequestHead<'_>,
        cache: &mut [Part],
    ) -> Result<Option<Key>, MissingPeerAddr> {
        match cache[i] {
            Part::Present(key) => return Ok(Some(key)),
            Part::Absent => return Ok(None),
            Part::Unread => {}
        }
        let source = &self.sources[i];
        let mut key = source.digest.clone();
        let found = match &source.source {
            Source::ClientIp => {
                let group = self
                    .client_ip
                    .client_group(req.headers(), req.extensions())
                    .inspect_err(|_| self.report_missing_peer())?;
                key.push(group.as_bytes());
                true
            }
            // Every occurrence counts: see `crate::key` for the one reading of repeats.
            Source::BearerToken => push_values(&mut key, bearer_tokens(req.headers())),
            Source::Header(name) => push_values(&mut key, header_values(req.headers(), name)),
            Source::Query(name) => req
                .uri()
                .query()
                .is_some_and(|q| push_values(&mut key, query_values(q, name))),
            Source::Extension(ext) => (ext.write)(req.extensions(), &mut key),
            Source::Route => self.route(req).map(|r| key.push(r.as_bytes())).is_some(),
            Source::Method => {
                key.push(req.method().as_str().as_bytes());
                true
            }
            Source::Custom(custom) => (custom.write)(req, &mut key),
        };
        let digest = found.then(|| key.finish());
        cache[i] = digest.map_or(Part::Absent, Part::Present);
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

    /// The request's route template: axum's `MatchedPath` (whole, from the outermost router),
    /// else the first configured pattern that matches the path.
    fn find_route<'r>(&'r self, req: &RequestHead<'r>) -> Option<&'r str> {
        #[cfg(feature = "axum")]
        if let Some(matched) = req.extensions().get::<axum::extract::MatchedPath>() {
            return Some(matched.as_str());
        }
        let path = req.uri().path();
        self.routes
            .iter()
            .find(|p| p.matches(path))
            .map(RoutePattern::as_str)
    }

    fn report_missing_peer(&self) {
        bump(&self.counters.misconfigured);
        if !self.warned_no_peer.swap(true, Ordering::Relaxed) {
            tracing::error!("{MISSING_PEER_ADDR} (logged once)");
        } else {
            tracing::debug!("{MISSING_PEER_ADDR}");
        }
    }
}

/// What scope patterns are matched against: the route template the router matched, as the
/// router the layer sits on wrote it, when one is known; else the raw path.
///
/// axum gives a layer the template of the whole app (`MatchedPath`: `/api/items/{id}`), also
/// inside a router that was nested (`Router::nest("/api", items)`), where the layer sees the
/// path with the prefix stripped (`/items/7`) and the prefix in `NestedPath` (`/api`). Cutting
/// that prefix gives the template the inner router wrote (`/items/{id}`), so a limiter's scopes
/// mean the same before and after its router is nested.
fn scope_path<'r>(req: &RequestHead<'r>) -> &'r str {
    #[cfg(feature = "axum")]
    if let Some(template) = relative_template(req.extensions()) {
        return template;
    }
    req.uri().path()
}

/// axum's `MatchedPath`, less the prefix the layer's router is nested at, if any.
#[cfg(feature = "axum")]
fn relative_template(extensions: &http::Extensions) -> Option<&str> {
    let matched = extensions.get::<axum::extract::MatchedPath>()?.as_str();
    let Some(nested) = extensions.get::<axum::extract::NestedPath>() else {
        return Some(matched);
    };
    match matched.strip_prefix(nested.as_str().trim_end_matches('/'))? {
        // The router's own `/`, nested at the prefix itself.
        "" => Some("/"),
        rest if rest.starts_with('/') => Some(rest),
        // Not the nesting the prefix claims: the raw path, which axum has stripped.
        _ => None,
    }
}

#[cfg(all(test, feature = "axum"))]
mod tests {
    use super::*;

    /// `MatchedPath` and `NestedPath` cannot be built outside axum: route a request through a
    /// router nested at `prefix` and read what a layer inside it sees.
    async fn seen(prefix: &str, route: &str, path: &str) -> Option<String> {
        use axum::routing::get;
        use tower::ServiceExt;
        let (tx, rx) = std::sync::mpsc::channel();
        let probe = axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(relative_template(req.extensions()).map(str::to_owned));
                    next.run(req).await
                }
            },
        );
        let inner = axum::Router::new()
            .route(route, get(|| async { "" }))
            .layer(probe);
        let app = axum::Router::new().nest(prefix, inner);
        let request = http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let _ = app.oneshot(request).await;
        rx.try_recv().ok().flatten()
    }

    #[tokio::test]
    async fn the_template_is_the_inner_routers() {
        assert_eq!(
            seen("/api", "/items/{id}", "/api/items/7").await.as_deref(),
            Some("/items/{id}")
        );
        assert_eq!(seen("/api", "/", "/api").await.as_deref(), Some("/"));
        assert_eq!(
            seen("/api/", "/items", "/api/items").await.as_deref(),
            Some("/items")
        );
        assert_eq!(
            seen("/orgs/{org}", "/vms/{id}", "/orgs/acme/vms/7")
                .await
                .as_deref(),
            Some("/vms/{id}")
        );
    }
}
