//! A [`Limit`]: a core [`Rule`] (how much, measured how) placed on HTTP requests: which requests
//! it applies to ([`Scope`]) and who it counts separately ([`KeyPart`]s).

use tollgate_core::Rule;

use crate::key::KeyPart;
use crate::scope::Scope;

/// A rule, the requests it applies to, and the parts of its key.
///
/// A limit without key parts is one bucket shared by every request in its scope (a global cap).
///
/// ```
/// use tollgate::core::{Algorithm, Quota, Rule};
/// use tollgate::{KeyPart, Limit, Scope, TokenId};
///
/// let per_token = Limit::new(
///     Rule::builder("per_token", Quota::per_minute(600)?)
///         .algorithm(Algorithm::FixedWindow)
///         .build()?,
/// )
/// .scope(Scope::all().path("/api/public/v1/*"))
/// .key(KeyPart::extension::<TokenId>());
/// assert_eq!(per_token.rule().name(), "per_token");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Limit {
    pub(crate) rule: Rule,
    pub(crate) scope: Scope,
    pub(crate) key: Vec<KeyPart>,
}

impl Limit {
    /// A limit on every request, with one bucket for all (add [`key`](Self::key) parts to count
    /// clients apart).
    pub fn new(rule: Rule) -> Self {
        Self {
            rule,
            scope: Scope::all(),
            key: Vec::new(),
        }
    }

    /// The requests the limit applies to (default: all).
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Adds a part to the key. Parts are hashed in the order they are added.
    pub fn key(mut self, part: KeyPart) -> Self {
        self.key.push(part);
        self
    }

    /// The rule.
    pub fn rule(&self) -> &Rule {
        &self.rule
    }
}
