//! [`ReplayBodyLayer`]: makes an idempotent replay repeat the original's body, not only its
//! method, route, identity and key.
//!
//! Mounted in front of the rate-limiting layer (it must run first), it reads the body of each
//! request that may be a replay (it carries the idempotency header, on a replayable method) when
//! the body's length is known and at most [`Idempotency::body`]'s bound, and hands the rate
//! limiter a digest of it, which joins the replay key. A body of unknown length (chunked) or
//! over the bound is passed on untouched and gets no free replay: it is charged like any
//! request. The inner service receives the same bytes either way.
//!
//! Without this layer, a limiter configured with [`Idempotency::body`] offers no free replay at
//! all (and says so once in the log): replays are never free by accident.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderName, Method, Request};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, Limited};
use pin_project_lite::pin_project;
use smallvec::SmallVec;
use tollgate_core::KeySecret;
use tower_layer::Layer;
use tower_service::Service;

use crate::idempotency::Idempotency;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The digest of a request body, for the rate limiter's replay key (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyDigest(pub(crate) u128);

/// Reads the bodies of possible replays, so that an idempotent replay must repeat the
/// original's body. Made by [`Idempotency::body_layer`]; mount it in front of the rate limiter.
///
/// It reads the body of each request that may be a replay (it carries the idempotency header,
/// on a replayable method) when the body's length is known and at most [`Idempotency::body`]'s
/// bound, and hands the rate limiter a digest of it, which joins the replay key. A body of
/// unknown length (chunked) or over the bound is passed on untouched and gets no free replay.
/// The inner service receives the same bytes either way.
///
/// ```
/// use tollgate::{Idempotency, RateLimitLayer};
///
/// let idempotency = Idempotency::new().body(64 * 1024);
/// let limiter = RateLimitLayer::builder().idempotency(idempotency.clone()).build()?;
/// let app: axum::Router = axum::Router::new()
///     .route("/vms", axum::routing::post(|body: String| async move { body }))
///     .layer(limiter)                     // runs second: the digest joins the replay key
///     .layer(idempotency.body_layer());   // runs first: reads the body
/// # Ok::<(), tollgate::BuildError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ReplayBodyLayer {
    header: HeaderName,
    methods: SmallVec<[Method; 4]>,
    max_len: usize,
}

impl ReplayBodyLayer {
    pub(crate) fn new(header: HeaderName, methods: SmallVec<[Method; 4]>, max_len: usize) -> Self {
        Self {
            header,
            methods,
            max_len,
        }
    }

    /// Whether `req` may be a replay whose body can be read: the length is known and in bounds.
    fn reads<B: Body>(&self, req: &Request<B>) -> bool {
        self.methods.contains(req.method())
            && req.headers().contains_key(&self.header)
            && req
                .body()
                .size_hint()
                .exact()
                .is_some_and(|len| len <= self.max_len as u64)
    }
}

impl<S> Layer<S> for ReplayBodyLayer {
    type Service = ReplayBodyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReplayBodyService {
            config: self.clone(),
            inner,
        }
    }
}

/// The service of [`ReplayBodyLayer`].
#[derive(Debug, Clone)]
pub struct ReplayBodyService<S> {
    config: ReplayBodyLayer,
    inner: S,
}

impl<S, B> Service<Request<B>> for ReplayBodyService<S>
where
    S: Service<Request<ReplayBody<B>>> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: 'static,
    S::Error: 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ReplayBodyFuture<S::Future, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if !self.config.reads(&req) {
            let req = req.map(|body| ReplayBody::new(BodyKind::Streaming { body }));
            return ReplayBodyFuture {
                kind: FutureKind::Direct {
                    future: self.inner.call(req),
                },
            };
        }
        // The service that was made ready serves this request; its clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let max_len = self.config.max_len;
        let (mut parts, body) = req.into_parts();
        let future = Box::pin(async move {
            let body = match Limited::new(body, max_len).collect().await {
                Ok(collected) => {
                    let bytes = collected.to_bytes();
                    parts.extensions.insert(digest(&bytes));
                    ReplayBody::new(BodyKind::Buffered {
                        body: Full::new(bytes),
                    })
                }
                // The inner service sees the error when it reads, as it would have.
                Err(error) => ReplayBody::new(BodyKind::Failed { error: Some(error) }),
            };
            inner.call(Request::from_parts(parts, body)).await
        });
        ReplayBodyFuture {
            kind: FutureKind::Reading { future },
        }
    }
}

/// A digest of the body; it never leaves the process (the limiter mixes it into the replay key,
/// which is keyed with the layer's own secret).
fn digest(bytes: &[u8]) -> BodyDigest {
    BodyDigest(KeySecret::DEFAULT.key().part(bytes).finish().as_u128())
}

pin_project! {
    /// The future of [`ReplayBodyService`]: the inner service's, boxed only for a request whose
    /// body is read first.
    pub struct ReplayBodyFuture<F, T, E> {
        #[pin]
        kind: FutureKind<F, T, E>,
    }
}

pin_project! {
    #[project = FutureKindProj]
    enum FutureKind<F, T, E> {
        // No body to read: the inner future as it is.
        Direct { #[pin] future: F },
        // Reading the body, then calling the inner service.
        Reading { future: Pin<Box<dyn Future<Output = Result<T, E>> + Send>> },
    }
}

impl<F, T, E> Future for ReplayBodyFuture<F, T, E>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            FutureKindProj::Direct { future } => future.poll(cx),
            FutureKindProj::Reading { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, T, E> std::fmt::Debug for ReplayBodyFuture<F, T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            FutureKind::Direct { .. } => "ReplayBodyFuture::Direct",
            FutureKind::Reading { .. } => "ReplayBodyFuture::Reading",
        })
    }
}

pin_project! {
    /// A request body after [`ReplayBodyLayer`]: read into memory, passed on as it came, or the
    /// error reading it gave (the client went away, or the body was longer than it said).
    pub struct ReplayBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = BodyKindProj]
    enum BodyKind<B> {
        Buffered { #[pin] body: Full<Bytes> },
        Streaming { #[pin] body: B },
        Failed { error: Option<BoxError> },
    }
}

impl<B> ReplayBody<B> {
    fn new(kind: BodyKind<B>) -> Self {
        Self { kind }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            BodyKindProj::Buffered { body } => body.poll_frame(cx).map_err(|never| match never {}),
            BodyKindProj::Streaming { body } => body.poll_frame(cx).map_err(Into::into),
            BodyKindProj::Failed { error } => Poll::Ready(error.take().map(Err)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Buffered { body } => body.is_end_stream(),
            BodyKind::Streaming { body } => body.is_end_stream(),
            BodyKind::Failed { error } => error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Buffered { body } => body.size_hint(),
            BodyKind::Streaming { body } => body.size_hint(),
            BodyKind::Failed { .. } => SizeHint::default(),
        }
    }
}

impl<B> std::fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            BodyKind::Buffered { .. } => "ReplayBody::Buffered",
            BodyKind::Streaming { .. } => "ReplayBody::Streaming",
            BodyKind::Failed { .. } => "ReplayBody::Failed",
        })
    }
}

impl Idempotency {
    /// The layer that reads the bodies of possible replays, configured like this
    /// `Idempotency` (its header, methods and [`body`](Self::body) bound; without a bound, it
    /// reads nothing). Mount it in front of the rate limiter; see [`ReplayBodyLayer`].
    pub fn body_layer(&self) -> ReplayBodyLayer {
        ReplayBodyLayer::new(
            self.header.clone(),
            if self.body.is_some() {
                self.methods.clone()
            } else {
                SmallVec::new()
            },
            self.body.unwrap_or(0),
        )
    }
}
