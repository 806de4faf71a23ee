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

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tollgate_core::{MemoryStore, Store};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::builder::RateLimitBuilder;
use crate::head::RequestHead;
use crate::limiter::{Limiter, Verdict};
use crate::metrics::Metrics;
use crate::response::{self, RateLimitHeaders};

/// The rate-limiting layer. Cloning it is cheap (one `Arc`), and every clone, and every service
/// it makes, shares the same limits, store and counters.
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
    limiter: Arc<Limiter<S>>,
}

impl RateLimitLayer<MemoryStore> {
    /// Starts configuring a layer, with a [`MemoryStore`] until told otherwise.
    pub fn builder() -> RateLimitBuilder<MemoryStore> {
        RateLimitBuilder::new()
    }
}

impl<S: Store> RateLimitLayer<S> {
    pub(crate) fn from_limiter(limiter: Arc<Limiter<S>>) -> Self {
        Self { limiter }
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
        self.limiter.metrics()
    }

    /// The store.
    pub fn store(&self) -> &S {
        self.limiter.store()
    }
}

impl<S> Clone for RateLimitLayer<S> {
    fn clone(&self) -> Self {
        Self {
            limiter: Arc::clone(&self.limiter),
        }
    }
}

impl<S> fmt::Debug for RateLimitLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limits", &self.limiter.rules().collect::<Vec<_>>())
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
    limiter: Arc<Limiter<S>>,
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

/// The store's check of one request, with the request handed back for the inner service.
type PendingCheck<ReqB> = Pin<Box<dyn Future<Output = (Verdict, Request<ReqB>)> + Send>>;

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
        let limiter = &*self.limiter;
        let head = RequestHead::of(&request);
        let plan = match limiter.plan(&head) {
            Ok(Some(plan)) => plan,
            Ok(None) => {
                return ResponseFuture::inner(self.inner.call(request), RateLimitHeaders::default())
            }
            Err(_missing_peer) => return ResponseFuture::ready(response::missing_peer_addr()),
        };
        // A store that answers at once (the memory store) is decided here, and the inner
        // service called straight away: no future to allocate, no state to move through.
        // Bound in place (`ref`): moving the answer (a 256-byte `Outcome`) costs more than
        // reading it.
        if let Some(ref answer) = limiter.check_immediately(&plan) {
            return match limiter.verdict(&plan, answer, &head) {
                Verdict::Admit(headers) => ResponseFuture::inner(self.inner.call(request), headers),
                Verdict::Respond(response) => ResponseFuture::ready(response),
            };
        }
        let limiter = Arc::clone(&self.limiter);
        let check: PendingCheck<ReqB> = Box::pin(async move {
            let answer = limiter.check(&plan).await;
            // The request moved into this future: its head is borrowed anew, here.
            let verdict = limiter.verdict(&plan, &answer, &RequestHead::of(&request));
            (verdict, request)
        });
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
    fn inner(future: Svc::Future, headers: RateLimitHeaders) -> Self {
        Self {
            state: State::Inner { future, headers },
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
                    let (verdict, request) = ready!(check.as_mut().poll(cx));
                    match (verdict, service.take()) {
                        (Verdict::Admit(headers), Some(mut service)) => State::Inner {
                            future: service.call(request),
                            headers,
                        },
                        (Verdict::Respond(response), _) => State::Ready {
                            response: Some(response),
                        },
                        (Verdict::Admit(_), None) => State::Ready {
                            response: Some(polled_after_completion()),
                        },
                    }
                }
                StateProj::Inner { future, headers } => {
                    let mut response = ready!(future.poll(cx))?;
                    std::mem::take(headers).apply(response.headers_mut());
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
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

/// What a future polled again after it completed answers, rather than panicking.
fn polled_after_completion() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}
