//! Idempotent replays: a retry that repeats an `Idempotency-Key` already charged for the same
//! identity passes without burning quota again.
//!
//! The replay key is a digest of every applicable limit's key (so "the same identity" means the
//! same client as far as every rule is concerned, on the same endpoint when the rules key by
//! route) together with the idempotency key. The store does the rest
//! ([`Store::check`](tollgate_core::Store::check)): a request with a new idempotency key is
//! charged and remembered for the TTL; a repeat within the TTL is admitted free, up to
//! `max_replays` times, after which it is charged like any request.

use std::time::Duration;

use http::{HeaderMap, HeaderName};
use tollgate_core::{Key, KeySecret, Replay};

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
    header: HeaderName,
    ttl: Duration,
    max_replays: u32,
}

impl Default for Idempotency {
    fn default() -> Self {
        Self::new()
    }
}

impl Idempotency {
    /// Reads `Idempotency-Key`; a charged request may be replayed free 5 times within 24 hours.
    pub fn new() -> Self {
        Self {
            header: HeaderName::from_static("idempotency-key"),
            ttl: Duration::from_secs(24 * 3600),
            max_replays: 5,
        }
    }

    /// The header carrying the idempotency key (default `Idempotency-Key`).
    pub fn header(mut self, name: HeaderName) -> Self {
        self.header = name;
        self
    }

    /// How long a charged request may be replayed for free (default 24 hours).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How many free replays a charged request gets (default 5).
    pub fn max_replays(mut self, max_replays: u32) -> Self {
        self.max_replays = max_replays;
        self
    }

    /// The replay to offer the store, when the request carries a non-empty idempotency key.
    pub(crate) fn replay(
        &self,
        secret: &KeySecret,
        headers: &HeaderMap,
        keys: impl Iterator<Item = Key>,
    ) -> Option<Replay> {
        let value = crate::key::header_value(headers, &self.header)?;
        let mut digest = secret.key().part(b"idempotency");
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
