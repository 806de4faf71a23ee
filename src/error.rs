//! Why a layer could not be built.

use std::fmt;

use tollgate_core::{QuotaError, RuleError};

use crate::client_ip::CidrError;
use crate::route::RouteError;

/// A configuration mistake found by [`RateLimitBuilder::build`](crate::RateLimitBuilder::build).
///
/// Every mistake is found when the layer is built, never while serving a request, and every
/// one is reported (those made by the builder's calls first, in order, then those found
/// compiling the limits: route patterns, duplicate names). A configuration with one mistake
/// fails with that mistake, one with several with [`Several`](Self::Several), which lists each,
/// one per line. A mistake in a limit names the limit.
///
/// ```
/// use tollgate::{BuildError, Limit, RateLimitLayer};
///
/// let err = RateLimitLayer::builder()
///     .limit(Limit::per_minute("login", 0))
///     .limit(Limit::per_second("search", 10).cost(11))
///     .trusted_proxies(["10.0.0.0/33"])
///     .build()
///     .unwrap_err();
/// let mistakes = err.mistakes();
/// assert!(matches!(mistakes[0], BuildError::Quota(_))); // names "login"
/// assert!(matches!(mistakes[1], BuildError::Rule(_))); // names "search"
/// assert!(matches!(mistakes[2], BuildError::Cidr(_)));
/// println!("{err}"); // one mistake per line
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A limit's quota was invalid (for instance a limit of zero).
    #[error(transparent)]
    Quota(InvalidQuota),
    /// A limit's rule was invalid: a bad name, a zero cost, a cost above what the quota can
    /// ever admit. The error names the rule.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// A route pattern, in a limit's scope or in the layer's routes, could not be parsed.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// A trusted-proxy range could not be parsed.
    #[error(transparent)]
    Cidr(#[from] CidrError),
    /// Two limits share a rule name.
    #[error("two limits use the rule name {0:?}: rule names must be unique within a layer, since they separate the limits' state in the store and name them in metrics and logs")]
    DuplicateRule(String),
    /// Two different [`KeyPart::from_fn`](crate::KeyPart::from_fn) closures share a name.
    #[error("two different KeyPart::from_fn closures are named {0:?}: the name separates their digests, so give each its own (clones of one part may share it)")]
    DuplicateKeyPart(String),
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
    /// A limit's per-identity quotas ([`Limit::quota_for`](crate::Limit::quota_for)) cannot
    /// apply.
    #[error("limit {limit:?}: {reason}")]
    QuotaFor {
        /// The limit's name.
        limit: String,
        /// What is wrong, and what to do instead.
        reason: String,
    },
    /// Client quotas read at runtime cannot be set up.
    #[error("client quotas: {0}")]
    ClientQuotas(String),
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
    /// More than one mistake, in the order they were made; never empty, never nested.
    #[error("{}", Listed(.0))]
    Several(Vec<BuildError>),
}

impl BuildError {
    /// Every mistake: the list of [`Several`](Self::Several), or this one alone.
    pub fn mistakes(&self) -> &[BuildError] {
        match self {
            BuildError::Several(all) => all,
            one => std::slice::from_ref(one),
        }
    }

    /// `Ok` when there is no mistake; the one, or [`Several`](Self::Several), otherwise.
    pub(crate) fn check(mut mistakes: Vec<BuildError>) -> Result<(), BuildError> {
        match mistakes.len() {
            0 => Ok(()),
            1 => Err(mistakes.swap_remove(0)),
            _ => Err(BuildError::Several(mistakes)),
        }
    }
}

/// Several mistakes, one per line.
struct Listed<'a>(&'a [BuildError]);

impl fmt::Display for Listed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} mistakes in the rate-limit configuration:",
            self.0.len()
        )?;
        for mistake in self.0 {
            write!(f, "\n- {mistake}")?;
        }
        Ok(())
    }
}

/// A limit's quota that could not be built, and the limit it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limit {limit:?}: {error}")]
pub struct InvalidQuota {
    limit: String,
    #[source]
    error: QuotaError,
}

impl InvalidQuota {
    pub(crate) fn new(limit: &str, error: QuotaError) -> Self {
        Self {
            limit: limit.to_owned(),
            error,
        }
    }

    /// The limit's name.
    pub fn limit(&self) -> &str {
        &self.limit
    }

    /// What is wrong with the quota.
    pub fn error(&self) -> &QuotaError {
        &self.error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mistake_is_itself_several_are_listed() {
        assert_eq!(BuildError::check(Vec::new()), Ok(()));
        let one = BuildError::DuplicateRule("a".into());
        assert_eq!(BuildError::check(vec![one.clone()]), Err(one.clone()));
        assert_eq!(one.mistakes(), std::slice::from_ref(&one));
        let two = BuildError::check(vec![one.clone(), BuildError::Idempotency("x".into())]);
        let two = two.unwrap_err();
        assert_eq!(two.mistakes().len(), 2);
        let text = two.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].starts_with("- two limits use the rule name \"a\""));
        assert_eq!(lines[2], "- idempotency: x");
    }

    #[test]
    fn a_quota_mistake_names_its_limit() {
        let e = BuildError::Quota(InvalidQuota::new("login", QuotaError::ZeroLimit));
        assert_eq!(
            e.to_string(),
            "limit \"login\": a quota's limit must be at least 1 request"
        );
    }
}
