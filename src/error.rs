//! Why a layer could not be built.

use tollgate_core::{QuotaError, RuleError};

use crate::client_ip::CidrError;
use crate::route::RouteError;

/// A configuration mistake found by [`RateLimitBuilder::build`](crate::RateLimitBuilder::build).
///
/// Every mistake is found when the layer is built, never while serving a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A quota made by a preset was invalid (for instance a limit of zero).
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// A rule made by a preset was invalid.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// A route pattern, in a scope or in the layer's routes, could not be parsed.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// A trusted-proxy range could not be parsed.
    #[error(transparent)]
    Cidr(#[from] CidrError),
    /// Two limits share a rule name.
    #[error("two limits use the rule name {0:?}: rule names must be unique within a layer, since they separate the limits' state in the store and name them in metrics and logs")]
    DuplicateRule(String),
    /// An address-grouping prefix was longer than the address.
    #[error("the {family} grouping prefix is at most {max} bits (got /{prefix})")]
    Prefix {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// The prefix asked for.
        prefix: u8,
        /// The longest prefix of the family.
        max: u8,
    },
    /// The idempotency settings were out of bounds.
    #[error("idempotency: {0}")]
    Idempotency(String),
    /// A preset was configured inconsistently.
    #[error("{preset} preset: {reason}")]
    Preset {
        /// The preset's name.
        preset: &'static str,
        /// What is wrong, and what to do instead.
        reason: String,
    },
}
