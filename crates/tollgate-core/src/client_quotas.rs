//! [`ClientQuotas`]: quotas for single clients kept where an operator changes them at runtime
//! (Redis, for a fleet), which the HTTP layer reads again at a fixed interval.

use std::future::Future;

use crate::key::Key;
use crate::quota::Quota;

/// One client's quota in one rule: the client is the digest of the value of the rule's one key
/// part (the HTTP layer's `RateLimitLayer::client_digest` computes it from the raw value, so
/// raw identities are never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientQuota {
    /// The rule's name.
    pub rule: String,
    /// The digest of the client's key part.
    pub client: Key,
    /// The client's quota in that rule.
    pub quota: Quota,
}

/// Where client quotas are kept and read from: the operator's table of exceptions to the
/// configured limits ("we can raise per-token ceilings on request").
pub trait ClientQuotas: Send + Sync + 'static {
    /// Why the quotas could not be read (the running ones are then kept).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Every client quota there is now.
    fn load(&self) -> impl Future<Output = Result<Vec<ClientQuota>, Self::Error>> + Send;
}
