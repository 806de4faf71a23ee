//! The tower [`Layer`] and [`Service`]: [`RateLimitLayer`] wraps any
//! `Service<http::Request<B>>` (an axum `Router`, a hyper service built with tower) in a
//! [`RateLimit`] service.
//!
//! Per request: the applicable limits and their keys are worked out from the request head
//! (no allocation beyond small inline vectors), the store decides them all at once, and then
//! either the inner service is called and the rate-limit headers are added to its response, or
//! the layer answers by itself and the inner service is never called. A store that answers at
//! once (`Store::check_immediately`: the memory store) is decided inside `call`, with no allocation; a
//! store that must wait (Redis) gets one boxed future, since a store's future borrows the
//! checks. A request no limit applies to goes straight to the inner service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tollgate_core::{MemoryStore, Store};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::body::ResponseBody;
use crate::builder::RateLimitBuilder;
use crate::error::BuildError;
use crate::head::RequestHead;
use crate::limiter::{Held, Limiter, Plan, Refusal, Verdict};
use crate::metrics::Metrics;
use crate::response::{self, RateLimitHeaders};

/// The rate-limiting layer. Cloning it is cheap (two `Arc`s), and every clone, and every service
/// it makes, shares the same limits, store and counters; [`reload`](Self::reload) changes the
/// limits of them all at once.
///
/// ```no_run
/// use std::net::SocketAddr;
/// use axum::{routing::get, Router};
/// use tollgate::presets::vmarea::VmArea;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let limiter = VmArea::new().builder().build()?;
/// let app = Router::new()
///     .route("/auth/login", get(|| async { "ok" }))
///     .layer(limiter.clone());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// // The per-IP bucket needs the peer address: serve with connect info.
/// axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
/// # Ok(()) }
/// ```
#[must_use]
pub struct RateLimitLayer<S = MemoryStore> {
    store: Arc<S>,
    limiter: Current<S>,
}

/// The configuration in force, shared by a layer, its clones and its services, and replaced
/// whole by a reload: a request loads it once and is decided by it alone.
type Current<S> = Arc<ArcSwap<Limiter<S>>>;

impl RateLimitLayer<MemoryStore> {
    /// Starts configuring a layer, with a [`MemoryStore`] until told otherwise.
    pub fn builder() -> RateLimitBuilder<MemoryStore> {
        RateLimitBuilder::new()
    }
}

impl<S: Store> RateLimitLayer<S> {
    pub(crate) fn from_limiter(store: Arc<S>, limiter: Limiter<S>) -> Self {
        Self {
            store,
            limiter: Arc::new(ArcSwap::from_pointee(limiter)),
        }
    }

    /// Puts the limits and settings of `builder` in force in this layer, its clones and every
    /// service made from them, at once: each request is decided wholly by the old
    /// configuration or wholly by the new one, and requests already being decided finish under
    /// the old. When `builder` has mistakes, they are returned and the running configuration
    /// stays in place.
    ///
    /// The layer keeps its store (the builder's own store is not used), so state is kept per
    /// limit name and key: a limit whose name and key parts are unchanged keeps its buckets.
    /// A changed quota applies from the next request to the state as it stands: what was used
    /// stays used (a fixed window that counted 80 under an old 100/minute admits 20 more under
    /// the same quota, none under a new 50/minute until its window ends). A renamed limit, or
    /// new key parts, start empty, and so does a changed algorithm: a store reads state kept
    /// by another algorithm as absent. The counters of [`metrics`](Self::metrics) start again
    /// from zero.
    ///
    /// ```
    /// use tollgate::{KeyPart, Limit, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .limit(Limit::per_minute("per_ip", 100).key(KeyPart::client_ip()))
    ///     .build()?;
    /// // Later, from a configuration change: every clone of `layer` sees 200/min at once.
    /// layer.reload(RateLimitLayer::builder().limit(Limit::per_minute("per_ip", 200).key(KeyPart::client_ip())))?;
    /// assert_eq!(layer.metrics().limits.len(), 1);
    /// # Ok::<(), tollgate::BuildError>(())
    /// ```
    pub fn reload<T: Store>(&self, builder: RateLimitBuilder<T>) -> Result<(), BuildError> {
        let limiter = builder.compile_on(&self.store)?;
        self.limiter.store(Arc::new(limiter));
        Ok(())
    }

    /// What every limit decided so far: allowed, denied, shadow-denied and store errors.
    ///
    /// ```
    /// # let layer = tollgate::RateLimitLayer::builder().build()?;
    /// for limit in &layer.metrics().limits {
    ///     println!("{}: {} allowed, {} denied", limit.name, limit.allowed, limit.denied);
    /// }
    /// # Ok::<(), tollgate::BuildError>(())
    /// ```
    pub fn metrics(&self) -> Metrics {
        self.limiter.load().metrics()
    }

    /// The digest that names a client in limit `limit`: that of `value` (the header, query or
    /// token text) as the limit's one key part, keyed by the layer's secret. A
    /// [`ClientQuota`](tollgate_core::ClientQuota) for this client names it so; `None` when
    /// no limit of that name is keyed by exactly one part.
    ///
    /// ```
    /// use http::HeaderName;
    /// use tollgate::{KeyPart, Limit, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .limit(Limit::per_minute("per_key", 600).key(KeyPart::header(HeaderName::from_static("x-api-key"))))
    ///     .build()?;
    /// let client = layer.client_digest("per_key", "enterprise-demo").unwrap();
    /// assert_eq!(client.to_hex().len(), 32);
    /// # Ok::<(), tollgate::BuildError>(())
    /// ```
    pub fn client_digest(
        &self,
        limit: &str,
        value: impl AsRef<[u8]>,
    ) -> Option<tollgate_core::Key> {
        self.limiter.load().client_digest(limit, value.as_ref())
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }
}

impl<S> Clone for RateLimitLayer<S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            limiter: Arc::clone(&self.limiter),
        }
    }
}

impl<S> fmt::Debug for RateLimitLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limits", &self.limiter.load().rules().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<Svc, S: Store> Layer<Svc> for RateLimitLayer<S> {
    type Service = RateLimit<Svc, S>;

    fn layer(&self, inner: Svc) -> Self::Service {
        RateLimit {
            inner,
            limiter: Arc::clone(&self.limiter),
        }
    }
}

/// The rate-limiting service made by [`RateLimitLayer`].
pub struct RateLimit<Svc, S = MemoryStore> {
    inner: Svc,
    limiter: Current<S>,
}

impl<Svc, S> RateLimit<Svc, S> {
    /// The inner service.
    pub fn get_ref(&self) -> &Svc {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut Svc {
        &mut self.inner
    }

    /// The inner service, unwrapped from the rate limiter.
    pub fn into_inner(self) -> Svc {
        self.inner
    }
}

impl<Svc: Clone, S> Clone for RateLimit<Svc, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: Arc::clone(&self.limiter),
        }
    }
}

impl<Svc: fmt::Debug, S> fmt::Debug for RateLimit<Svc, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The store's check of one request, with the request handed back for the inner service and,
/// when limits are charged by the response, what charges them.
type PendingCheck<ReqB> =
    Pin<Box<dyn Future<Output = (Verdict, Option<Charge>, Request<ReqB>)> + Send>>;

/// Charges the limits a response's status counts for ([`Limit::charge_on`]), then gives back
/// the request's places in flight.
///
/// [`Limit::charge_on`]: crate::Limit::charge_on
type Charge = Box<dyn FnOnce(StatusCode) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

fn charge<S: Store>(limiter: Arc<Limiter<S>>, plan: Plan, held: Held) -> Charge {
    Box::new(move |status| {
        Box::pin(async move {
            limiter.charge_deferred(&plan, status).await;
            drop(held);
        })
    })
}

impl<Svc, S, ReqB, ResB> Service<Request<ReqB>> for RateLimit<Svc, S>
where
    Svc: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    S: Store,
    ReqB: Send + 'static,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = Svc::Error;
    type Future = ResponseFuture<Svc, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        // One configuration for the whole request, even if a reload lands meanwhile.
        let current = self.limiter.load();
        let limiter: &Limiter<S> = &current;
        let head = RequestHead::of(&request);
        let mut plan = Plan::default();
        match limiter.plan(&head, &mut plan) {
            Ok(true) => {}
            Ok(false) => {
                let headers = RateLimitHeaders::default();
                return ResponseFuture::inner(self.inner.call(request), headers, None);
            }
            Err(refusal) => return ResponseFuture::ready(refused(refusal)),
        };
        // A store that answers at once (the memory store) is decided here, and the inner
        // service called straight away: no future to allocate, no state to move through.
        // Bound in place (`ref`): moving the answer (a 256-byte `Outcome`) costs more than
        // reading it.
        let span = decision_span(S::NAME);
        let immediate = {
            // Entered only when something listens: entering a disabled span still costs.
            let _entered = (!span.is_disabled()).then(|| span.enter());
            limiter
                .check_immediately(&plan, &span)
                .as_ref()
                .map(|answer| limiter.verdict(&plan, answer, &head, &span))
        };
        if let Some(verdict) = immediate {
            return match verdict {
                Verdict::Admit(headers) => {
                    ResponseFuture::inner(self.inner.call(request), headers, None)
                }
                Verdict::Respond(response) => ResponseFuture::ready(response),
            };
        }
        let limiter = arc_swap::Guard::into_inner(current);
        // The future runs in `span`, and records into it (not into whatever span is current
        // when nothing listens to this one).
        let traced = span.clone();
        let check: PendingCheck<ReqB> = if plan.has_deferred() {
            let decide = async move {
                let (answer, held) = limiter.decide_deferred(&plan, &traced).await;
                let verdict = limiter.verdict(&plan, &answer, &RequestHead::of(&request), &traced);
                let charge = match (&verdict, held) {
                    (Verdict::Admit(_), Some(held)) => Some(charge(limiter, plan, held)),
                    _ => None,
                };
                (verdict, charge, request)
            };
            Box::pin(decide.instrument(span))
        } else {
            let decide = async move {
                let answer = limiter.check(&plan, &traced).await;
                // The request moved into this future: its head is borrowed anew, here.
                let verdict = limiter.verdict(&plan, &answer, &RequestHead::of(&request), &traced);
                (verdict, None, request)
            };
            Box::pin(decide.instrument(span))
        };
        // The service made ready by `poll_ready` goes with this request; a clone takes its place.
        let ready = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, ready);
        ResponseFuture {
            state: State::Checking {
                check,
                service: Some(service),
            },
        }
    }
}

pin_project! {
    /// The response future of [`RateLimit`].
    pub struct ResponseFuture<Svc, ReqB>
    where
        Svc: Service<Request<ReqB>>,
    {
        #[pin]
        state: State<Svc, ReqB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Svc, ReqB>
    where
        Svc: Service<Request<ReqB>>,
    {
        // The store is deciding.
        Checking {
            check: PendingCheck<ReqB>,
            service: Option<Svc>,
        },
        // Admitted: the inner service is answering.
        Inner {
            #[pin]
            future: Svc::Future,
            headers: RateLimitHeaders,
            charge: Option<Charge>,
        },
        // Answered: the limits its status counts for are being charged.
        Charging {
            charge: Pin<Box<dyn Future<Output = ()> + Send>>,
            response: Option<Svc::Response>,
        },
        // The layer answers by itself.
        Ready {
            response: Option<Response<Full<Bytes>>>,
        },
    }
}

impl<Svc, ReqB> ResponseFuture<Svc, ReqB>
where
    Svc: Service<Request<ReqB>>,
{
    fn inner(future: Svc::Future, headers: RateLimitHeaders, charge: Option<Charge>) -> Self {
        Self {
            state: State::Inner {
                future,
                headers,
                charge,
            },
        }
    }

    fn ready(response: Response<Full<Bytes>>) -> Self {
        Self {
            state: State::Ready {
                response: Some(response),
            },
        }
    }
}

impl<Svc, ReqB> fmt::Debug for ResponseFuture<Svc, ReqB>
where
    Svc: Service<Request<ReqB>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Checking { .. } => "checking",
            State::Inner { .. } => "inner",
            State::Charging { .. } => "charging",
            State::Ready { .. } => "ready",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<Svc, ReqB, ResB> Future for ResponseFuture<Svc, ReqB>
where
    Svc: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Output = Result<Response<ResponseBody<ResB>>, Svc::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Checking { check, service } => {
                    let (verdict, charge, request) = ready!(check.as_mut().poll(cx));
                    match (verdict, service.take()) {
                        (Verdict::Admit(headers), Some(mut service)) => State::Inner {
                            future: service.call(request),
                            headers,
                            charge,
                        },
                        (Verdict::Respond(response), _) => State::Ready {
                            response: Some(response),
                        },
                        (Verdict::Admit(_), None) => State::Ready {
                            response: Some(polled_after_completion()),
                        },
                    }
                }
                StateProj::Inner {
                    future,
                    headers,
                    charge,
                } => {
                    let mut response = ready!(future.poll(cx))?;
                    std::mem::take(headers).apply(response.headers_mut());
                    match charge.take() {
                        Some(charge) => State::Charging {
                            charge: charge(response.status()),
                            response: Some(response),
                        },
                        None => return Poll::Ready(Ok(response.map(ResponseBody::inner))),
                    }
                }
                StateProj::Charging { charge, response } => {
                    ready!(charge.as_mut().poll(cx));
                    return Poll::Ready(Ok(match response.take() {
                        Some(response) => response.map(ResponseBody::inner),
                        None => polled_after_completion().map(ResponseBody::limiter),
                    }));
                }
                StateProj::Ready { response } => {
                    let response = response.take().unwrap_or_else(polled_after_completion);
                    return Poll::Ready(Ok(response.map(ResponseBody::limiter)));
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

/// The debug span of one limited request's decision: `rule` (the binding one), `outcome`
/// (`allowed`, `denied` or `error`), `remaining` and `store_us` are recorded as they are known.
/// Its fields hold rule names and figures only, never what identifies a client.
///
/// No span at all ([`Span::none`](tracing::Span::none)) when no subscriber takes debug spans:
/// a disabled span of the macro still costs a few hundred instructions per request to make,
/// enter, record and drop (with `tracing`'s `log` feature, which axum's default features turn
/// on, each of those asks the `log` crate whether to write a line). So with no `tracing`
/// subscriber, a `log` logger does not see this span (it still sees the events).
fn decision_span(store: &'static str) -> tracing::Span {
    use tracing::field::Empty;
    if !tracing::level_enabled!(tracing::Level::DEBUG) {
        return tracing::Span::none();
    }
    tracing::debug_span!(
        "rate_limit",
        store,
        rule = Empty,
        outcome = Empty,
        remaining = Empty,
        store_us = Empty
    )
}

/// The answer to a request refused before any store is asked.
fn refused(refusal: Refusal) -> Response<Full<Bytes>> {
    match refusal {
        Refusal::MissingPeer => response::missing_peer_addr(),
        Refusal::UnreadableCost { what } => response::unreadable_cost(&what),
        Refusal::CostNeverPasses {
            rule,
            cost,
            capacity,
        } => response::cost_never_passes(&rule, cost, capacity),
    }
}

/// What a future polled again after it completed answers, rather than panicking.
fn polled_after_completion() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}
