//! The service: one call is a loop of pace, send, read the signals, and wait or return.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Buf;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower_service::Service;

use crate::idempotency::{add_key, safe_to_repeat};
use crate::layer::Config;
use crate::pacing::Pacer;
use crate::signals::Signals;
use crate::ReplayBody;

/// A response body is read (and discarded) up to this many bytes while waiting to retry, so
/// that its connection can be reused; a longer one is dropped.
const DRAIN_LIMIT: usize = 64 * 1024;

/// The service built by [`PoliteLayer`](crate::PoliteLayer): see there for what it does.
#[derive(Debug, Clone)]
pub struct Polite<S> {
    inner: S,
    config: Arc<Config>,
    pacer: Arc<Pacer>,
}

/// What the layer did for one response, in its extensions.
///
/// ```
/// # use tollgate_client::CallReport;
/// # let response = http::Response::new(());
/// let report = response.extensions().get::<CallReport>().copied().unwrap_or_default();
/// assert!(report.attempts() <= 1);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallReport {
    attempts: u32,
    waited: Duration,
}

impl CallReport {
    /// How many times the request was sent (1: no retry).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How long the layer waited in all, pacing and retries together.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

/// The future a [`Polite`] service returns.
pub type ResponseFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S> Polite<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>, pacer: Arc<Pacer>) -> Self {
        Self {
            inner,
            config,
            pacer,
        }
    }

    /// The wrapped client.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped client, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped client, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, RB> Service<Request<B>> for Polite<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: ReplayBody + Send + 'static,
    RB: Body + Send + 'static,
    RB::Data: Send,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<Response<RB>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The service that was polled ready goes into the future; this one gets a clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (config, pacer) = (self.config.clone(), self.pacer.clone());
        if config.idempotency_keys {
            add_key(&mut request);
        }
        Box::pin(
            Call {
                inner,
                config,
                pacer,
            }
            .run(request),
        )
    }
}

/// One call in flight.
struct Call<S> {
    inner: S,
    config: Arc<Config>,
    pacer: Arc<Pacer>,
}

impl<S> Call<S> {
    async fn run<B, RB>(mut self, request: Request<B>) -> Result<Response<RB>, S::Error>
    where
        S: Service<Request<B>, Response = Response<RB>>,
        B: ReplayBody,
        RB: Body,
    {
        let (endpoint, interval) = self.config.endpoint(request.method(), request.uri());
        let max_wait = self.config.max_wait;
        let repeatable = safe_to_repeat(&request);
        let mut attempt = request.into_parts();
        let mut report = CallReport::default();
        loop {
            let (parts, body) = attempt;
            report.attempts += 1;
            let retries_left = repeatable && report.attempts <= self.config.backoff.max_retries();
            // The copy a retry would send, made before the body is consumed.
            let spare = retries_left
                .then(|| body.replay())
                .flatten()
                .map(|body| (parts.clone(), body));

            let start = Instant::now();
            let send_at = self.pacer.reserve(&endpoint, interval, max_wait, start);
            if send_at > start {
                tokio::time::sleep_until(send_at).await;
                report.waited += start.elapsed();
            }

            poll_fn(|cx| self.inner.poll_ready(cx)).await?;
            let mut response = self.inner.call(Request::from_parts(parts, body)).await?;

            let received = Instant::now();
            let status = response.status();
            let signals = Signals::read(response.headers(), SystemTime::now());
            if self.config.learn {
                self.learn(&endpoint, status, &signals, received);
            }
            let resume = self
                .retry_wait(status, &signals, report.attempts)
                .and_then(|wait| received.checked_add(wait));
            let Some((spare, resume)) = spare.zip(resume) else {
                response.extensions_mut().insert(report);
                return Ok(response);
            };
            // Reading the refused response while waiting keeps its connection reusable.
            let _ = tokio::time::timeout_at(resume, drain(response.into_body())).await;
            tokio::time::sleep_until(resume).await;
            report.waited += received.elapsed();
            attempt = spare;
        }
    }

    /// How long to wait before retrying a response with this status, or `None` to return it:
    /// not a status the policy retries, or a wait beyond the cap.
    fn retry_wait(&self, status: StatusCode, signals: &Signals, retry: u32) -> Option<Duration> {
        let backoff = &self.config.backoff;
        let server = signals.wait();
        if !backoff.retries_on(status, server.is_some()) {
            return None;
        }
        // The wait without jitter is what must be waited; jitter may be trimmed to the cap.
        if backoff.delay(retry, server, 0.0) > self.config.max_wait {
            return None;
        }
        Some(
            backoff
                .delay(retry, server, fastrand::f64())
                .min(self.config.max_wait),
        )
    }

    /// Holds the endpoint when the response says its limit is spent: until the longest
    /// exhausted limit resets, or, for a refusal, for what it asked.
    fn learn(&self, endpoint: &str, status: StatusCode, signals: &Signals, now: Instant) {
        let refused = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        );
        // A refusal's wait follows the same precedence as its retry (Retry-After first).
        let hold = if refused {
            signals.wait()
        } else {
            signals.exhausted
        };
        // A hold beyond the cap would be ignored anyway; it is not stored.
        if let Some(until) = hold
            .filter(|&hold| hold <= self.config.max_wait)
            .and_then(|hold| now.checked_add(hold))
        {
            self.pacer.hold(endpoint, until, now);
        }
    }
}

/// Reads a body to its end or [`DRAIN_LIMIT`], whichever comes first, discarding it.
async fn drain<B: Body>(body: B) {
    let mut body = pin!(body);
    let mut read = 0;
    while let Some(Ok(frame)) = body.frame().await {
        read += frame.data_ref().map_or(0, Buf::remaining);
        if read > DRAIN_LIMIT {
            return;
        }
    }
}
