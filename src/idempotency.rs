//! Idempotent replays: a retry that repeats an `Idempotency-Key` already charged for the same
//! request passes the limits that opt in without burning their quota again.
//!
//! A replay is free only as *the same request*: the replay key is a digest of the method, the
//! route template (the path when no template is known), every applicable limit's key (the same
//! client as far as every limit is concerned) and the idempotency key. So a key charged on
//! `POST /api/public/v1/vms` buys nothing on another route, another method or for another
//! client. Only writes carry one by default (`POST`, `PUT`, `PATCH`, `DELETE`): a `GET` is
//! idempotent already and is charged like any request.
//!
//! And a replay is free only in the limits whose rule [honours
//! replays](tollgate_core::RuleBuilder::honour_replays): every other limit of the request charges
//! it as usual. An abuse ceiling (the VMArea per-IP bucket on `/auth/login`) does not opt in, so
//! fresh or replayed Idempotency-Keys never get a client past it: whatever keys a sequence of
//! requests carries, a limit outside the replay scope admits at most its quota.
//!
//! The store does the rest ([`Store::check`](tollgate_core::Store::check)): a passing request
//! with a new key is charged and recorded for the TTL; a repeat within the TTL passes the
//! opted-in limits free, at most `max_replays` times, after which it is charged like any request.
//! A record lives at most [`Idempotency::MAX_TTL`] and allows at most
//! [`Idempotency::MAX_REPLAYS`] free replays, so what one charged request can buy is bounded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderName, Method};
use smallvec::SmallVec;
use tollgate_core::{Key, KeySecret, Replay};

use crate::error::BuildError;
use crate::head::RequestHead;
use crate::replay_body::BodyDigest;

/// `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header).
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Set once a request without a body digest has been logged.
static WARNED_NO_BODY: AtomicBool = AtomicBool::new(false);

/// How idempotent replays are recognised; see [`RateLimitBuilder::idempotency`](crate::RateLimitBuilder::idempotency).
///
/// ```
/// use std::time::Duration;
/// use tollgate::{Idempotency, RateLimitLayer};
///
/// let layer = RateLimitLayer::builder()
///     .idempotency(Idempotency::new().ttl(Duration::from_secs(3600)).max_replays(3))
///     .build()?;
/// # Ok::<(), tollgate::BuildError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Idempotency {
    pub(crate) header: HeaderName,
    ttl: Duration,
    max_replays: u32,
    pub(crate) methods: SmallVec<[Method; 4]>,
    /// With a bound, a replay must repeat the body too: see [`body`](Self::body).
    pub(crate) body: Option<usize>,
}

impl Default for Idempotency {
    fn default() -> Self {
        Self::new()
    }
}

impl Idempotency {
    /// The longest a record may live: a charged request can be replayed free for at most a day.
    pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
    /// The most free replays a record may allow.
    pub const MAX_REPLAYS: u32 = 100;

    /// Reads `Idempotency-Key` on `POST`, `PUT`, `PATCH` and `DELETE`; a charged request may be
    /// replayed free 5 times within 24 hours.
    pub fn new() -> Self {
        Self {
            header: IDEMPOTENCY_KEY,
            ttl: Self::MAX_TTL,
            max_replays: 5,
            methods: [Method::POST, Method::PUT, Method::PATCH, Method::DELETE]
                .into_iter()
                .collect(),
            body: None,
        }
    }

    /// The header carrying the idempotency key (default `Idempotency-Key`).
    pub fn header(mut self, name: HeaderName) -> Self {
        self.header = name;
        self
    }

    /// How long a charged request may be replayed for free (default and most: 24 hours,
    /// [`MAX_TTL`](Self::MAX_TTL); a longer one is a build error).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How many free replays a charged request gets (default 5, at most
    /// [`MAX_REPLAYS`](Self::MAX_REPLAYS); more is a build error).
    pub fn max_replays(mut self, max_replays: u32) -> Self {
        self.max_replays = max_replays;
        self
    }

    /// The methods whose requests may be replayed free (default `POST`, `PUT`, `PATCH`,
    /// `DELETE`); a request of another method is charged whatever key it carries.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Makes a replay repeat the original's body as well: a request is a free replay only if
    /// its body, of a known length of at most `max_len` bytes, is the same. The body is read
    /// by the [`body_layer`](Self::body_layer), which must be mounted in front of the rate
    /// limiter; a body of unknown or greater length is charged like any request, and so is
    /// every request when the body layer is missing (default: bodies are not compared).
    pub fn body(mut self, max_len: usize) -> Self {
        self.body = Some(max_len);
        self
    }

    /// Whether requests of `method` may be replayed.
    pub(crate) fn applies_to(&self, method: &Method) -> bool {
        self.methods.contains(method)
    }

    /// The configuration mistake, if any.
    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        let reason = if self.ttl.is_zero() || self.ttl > Self::MAX_TTL {
            format!(
                "the record TTL must be between 1 ns and {} hours (got {:?})",
                Self::MAX_TTL.as_secs() / 3600,
                self.ttl
            )
        } else if self.max_replays == 0 || self.max_replays > Self::MAX_REPLAYS {
            format!(
                "max_replays must be between 1 and {} (got {}); to turn replays off, configure no idempotency",
                Self::MAX_REPLAYS,
                self.max_replays
            )
        } else {
            return Ok(());
        };
        Err(BuildError::Idempotency(reason))
    }

    /// The replay to offer the store, when the request carries a non-empty idempotency key:
    /// a digest of the method, `route` (the template, or the path) and the limits' `keys`.
    pub(crate) fn replay(
        &self,
        secret: &KeySecret,
        req: &RequestHead<'_>,
        route: &str,
        keys: impl Iterator<Item = Key>,
    ) -> Option<Replay> {
        let value = crate::key::header_value(req.headers(), &self.header)?;
        let mut digest = secret
            .key()
            .part(b"idempotency")
            .part(req.method().as_str().as_bytes())
            .part(route.as_bytes());
        if self.body.is_some() {
            // No digest (no body layer, or a body it would not read): no free replay.
            let Some(body) = req.extensions().get::<BodyDigest>() else {
                if !WARNED_NO_BODY.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        "tollgate: a request with an idempotency key had no body digest, so it \
                         is charged like any request: either its body's length was unknown or \
                         above the Idempotency::body bound, or Idempotency::body_layer() is not \
                         mounted in front of the rate limiter (logged once)"
                    );
                }
                return None;
            };
            digest.push(&body.0.to_le_bytes());
        }
        for key in keys {
            digest.push(&key.as_u128().to_le_bytes());
        }
        digest.push(value);
        Some(Replay {
            key: digest.finish(),
            ttl: self.ttl,
            max_replays: self.max_replays,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bounds are inclusive: a TTL from 1 ns to a day, from 1 to 100 free replays.
    #[test]
    fn validate_accepts_exactly_the_documented_bounds() {
        let ok = |i: Idempotency| i.validate().is_ok();
        let nanos = Duration::from_nanos;
        assert!(ok(Idempotency::new()));
        assert!(ok(Idempotency::new().ttl(nanos(1))));
        assert!(ok(Idempotency::new().ttl(Idempotency::MAX_TTL)));
        assert!(!ok(Idempotency::new().ttl(Duration::ZERO)));
        assert!(!ok(Idempotency::new().ttl(Idempotency::MAX_TTL + nanos(1))));
        assert!(ok(Idempotency::new().max_replays(1)));
        assert!(ok(Idempotency::new().max_replays(Idempotency::MAX_REPLAYS)));
        assert!(!ok(Idempotency::new().max_replays(0)));
        assert!(!ok(
            Idempotency::new().max_replays(Idempotency::MAX_REPLAYS + 1)
        ));
    }

    /// Writes are replayable by default, reads are not; `methods` replaces the list.
    #[test]
    fn only_the_configured_methods_are_replayable() {
        let default = Idempotency::new();
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(default.applies_to(&method), "{method}");
        }
        assert!(!default.applies_to(&Method::GET));
        let gets = Idempotency::new().methods([Method::GET]);
        assert!(gets.applies_to(&Method::GET));
        assert!(!gets.applies_to(&Method::POST));
    }

    /// A record may live for a day, and a day and a second is too long.
    #[test]
    fn a_record_may_live_for_a_day_and_no_longer() {
        let ok = |secs| {
            Idempotency::new()
                .ttl(Duration::from_secs(secs))
                .validate()
                .is_ok()
        };
        assert!(ok(24 * 3600));
        assert!(!ok(24 * 3600 + 1));
    }

    /// Whether `idempotency` offers a replay for a `POST /vms` carrying `header: k-1`.
    fn offered(idempotency: &Idempotency, header: &str) -> bool {
        let request = http::Request::post("/vms")
            .header(header, "k-1")
            .body(())
            .unwrap();
        let head = RequestHead::of(&request);
        (idempotency.replay(&KeySecret::DEFAULT, &head, "/vms", std::iter::empty())).is_some()
    }

    /// The key is read from the configured header, and only from it.
    #[test]
    fn the_idempotency_key_is_read_from_the_configured_header() {
        let custom = Idempotency::new().header(HeaderName::from_static("x-request-id"));
        assert!(offered(&custom, "x-request-id"));
        assert!(!offered(&custom, "idempotency-key"));
        assert!(offered(&Idempotency::new(), "idempotency-key"));
    }

    /// Without a body digest no replay is offered, and the notice saying why is logged once
    /// per process, not once per request.
    #[test]
    fn a_missing_body_digest_is_logged_at_most_once() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Log(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Log {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .finish();
        let with_body = Idempotency::new().body(1024);
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..3 {
                assert!(!offered(&with_body, "idempotency-key"));
            }
        });
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        // Once if no other test got there first, else not at all.
        assert!(text.matches("no body digest").count() <= 1, "{text}");
    }
}
