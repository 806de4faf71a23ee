//! A [`Rule`]: a named quota, the algorithm that enforces it, a cost per request, and whether it
//! is enforced or only observed (shadow mode).
//!
//! Which requests a rule applies to and how their keys are made is the HTTP layer's business;
//! here a rule is only "how much, measured how".

use std::fmt;
use std::hash::Hasher;
use std::sync::Arc;

use siphasher::sip::SipHasher13;

use crate::algorithm::Algorithm;
use crate::quota::Quota;

/// Longest rule name accepted.
pub const MAX_RULE_NAME_LEN: usize = 64;

/// A named quota and how it is enforced.
///
/// ```
/// use tollgate_core::{Algorithm, Quota, Rule};
///
/// let per_token = Rule::builder("per_token", Quota::per_minute(600)?)
///     .algorithm(Algorithm::FixedWindow)
///     .build()?;
/// assert_eq!(per_token.name(), "per_token");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Rule {
    inner: Arc<RuleInner>,
}

struct RuleInner {
    name: Box<str>,
    id: u64,
    quota: Quota,
    algorithm: Algorithm,
    cost: u64,
    shadow: bool,
    replays: bool,
}

/// Why a [`Rule`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The name was empty, too long, or had characters other than ASCII letters, digits, `_`,
    /// `-` and `.` (names become part of store keys and log lines).
    #[error("rule name {0:?} is invalid: use 1 to 64 ASCII letters, digits, '_', '-' or '.'")]
    InvalidName(String),
    /// The cost per request was zero.
    #[error("rule {rule:?}: the cost per request must be at least 1")]
    ZeroCost {
        /// The rule.
        rule: String,
    },
    /// A request would cost more than the rule can ever admit, so it could never pass.
    #[error("rule {rule:?}: a cost of {cost} exceeds what {algorithm} can ever admit at once ({capacity}); raise the limit or burst, or lower the cost")]
    CostAboveCapacity {
        /// The rule.
        rule: String,
        /// The cost asked for.
        cost: u64,
        /// What the algorithm admits at most.
        capacity: u64,
        /// The algorithm.
        algorithm: &'static str,
    },
}

impl Rule {
    /// A rule with the default algorithm (GCRA) and a cost of 1 per request.
    pub fn builder(name: impl Into<String>, quota: Quota) -> RuleBuilder {
        RuleBuilder {
            name: name.into(),
            quota,
            algorithm: Algorithm::default(),
            cost: 1,
            shadow: false,
            replays: false,
        }
    }

    /// The rule's name, unique within a limiter.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// A stable 64-bit identifier derived from the name.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The quota.
    pub fn quota(&self) -> &Quota {
        &self.inner.quota
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.inner.algorithm
    }

    /// What one request costs.
    pub fn cost(&self) -> u64 {
        self.inner.cost
    }

    /// Shadow rules are evaluated, charged and reported, but never deny a request.
    pub fn is_shadow(&self) -> bool {
        self.inner.shadow
    }

    /// Whether an idempotent replay (a request repeating an idempotency key this rule already
    /// charged, see [`Replay`](crate::Replay)) passes this rule without being charged again.
    /// Off by default: a rule charges every request, whatever idempotency key it carries.
    pub fn honours_replays(&self) -> bool {
        self.inner.replays
    }

    /// This rule at another cost per request, the same in every other respect (its id too, so
    /// it decides on the same state): for a request whose cost only it knows (a batch size).
    /// The cost must be at least 1 and at most what the algorithm admits at once.
    ///
    /// ```
    /// use tollgate_core::{Quota, Rule};
    ///
    /// let rule = Rule::builder("batch", Quota::per_minute(100)?).build()?;
    /// let heavy = rule.with_cost(40)?;
    /// assert_eq!((heavy.cost(), heavy.id()), (40, rule.id()));
    /// assert!(rule.with_cost(101).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_cost(&self, cost: u64) -> Result<Rule, RuleError> {
        self.variant(*self.quota(), cost)
    }

    /// This rule under another quota, the same in every other respect (its id too, so it
    /// decides on the same state): a quota one client gets. Its cost must still fit what the
    /// algorithm admits at once under `quota`.
    ///
    /// ```
    /// use tollgate_core::{Quota, Rule};
    ///
    /// let rule = Rule::builder("per_key", Quota::per_minute(600)?).build()?;
    /// let enterprise = rule.with_quota(Quota::per_minute(6000)?)?;
    /// assert_eq!((enterprise.quota().limit(), enterprise.id()), (6000, rule.id()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_quota(&self, quota: Quota) -> Result<Rule, RuleError> {
        self.variant(quota, self.cost())
    }

    fn variant(&self, quota: Quota, cost: u64) -> Result<Rule, RuleError> {
        let capacity = self.algorithm().capacity(&quota);
        if cost == 0 {
            return Err(RuleError::ZeroCost {
                rule: self.name().to_owned(),
            });
        }
        if cost > capacity {
            return Err(RuleError::CostAboveCapacity {
                rule: self.name().to_owned(),
                cost,
                capacity,
                algorithm: self.algorithm().name(),
            });
        }
        Ok(Rule {
            inner: Arc::new(RuleInner {
                name: self.inner.name.clone(),
                quota,
                cost,
                ..*self.inner
            }),
        })
    }
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("name", &self.name())
            .field("quota", self.quota())
            .field("algorithm", &self.algorithm())
            .field("cost", &self.cost())
            .field("shadow", &self.is_shadow())
            .field("honours_replays", &self.honours_replays())
            .finish()
    }
}

/// Builds a [`Rule`]; see [`Rule::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RuleBuilder {
    name: String,
    quota: Quota,
    algorithm: Algorithm,
    cost: u64,
    shadow: bool,
    replays: bool,
}

impl RuleBuilder {
    /// The algorithm (default: GCRA).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// What one request costs (default: 1).
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = cost;
        self
    }

    /// Shadow mode: evaluate and report, never deny (default: off).
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// Lets idempotent replays pass this rule free (default: off); see
    /// [`Rule::honours_replays`]. Turn it on only for the buckets whose clients retry writes
    /// with an idempotency key (a per-token API bucket), never for an abuse ceiling such as a
    /// per-IP login limit: a replay would then be a way around it.
    pub fn honour_replays(mut self, honour: bool) -> Self {
        self.replays = honour;
        self
    }

    /// Checks the rule and builds it.
    pub fn build(self) -> Result<Rule, RuleError> {
        let valid_name = !self.name.is_empty()
            && self.name.len() <= MAX_RULE_NAME_LEN
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !valid_name {
            return Err(RuleError::InvalidName(self.name));
        }
        if self.cost == 0 {
            return Err(RuleError::ZeroCost { rule: self.name });
        }
        let capacity = self.algorithm.capacity(&self.quota);
        if self.cost > capacity {
            return Err(RuleError::CostAboveCapacity {
                rule: self.name,
                cost: self.cost,
                capacity,
                algorithm: self.algorithm.name(),
            });
        }
        let mut hasher = SipHasher13::new_with_keys(0x746f_6c6c_6761_7465, 0x7275_6c65_5f69_6421);
        hasher.write(self.name.as_bytes());
        Ok(Rule {
            inner: Arc::new(RuleInner {
                id: hasher.finish(),
                name: self.name.into_boxed_str(),
                quota: self.quota,
                algorithm: self.algorithm,
                cost: self.cost,
                shadow: self.shadow,
                replays: self.replays,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_rules_are_typed_errors() {
        let q = Quota::per_second(5).unwrap();
        assert!(matches!(
            Rule::builder("", q).build(),
            Err(RuleError::InvalidName(_))
        ));
        assert!(matches!(
            Rule::builder("a:b", q).build(),
            Err(RuleError::InvalidName(_))
        ));
        assert!(matches!(
            Rule::builder("x".repeat(65), q).build(),
            Err(RuleError::InvalidName(_))
        ));
        assert!(matches!(
            Rule::builder("r", q).cost(0).build(),
            Err(RuleError::ZeroCost { .. })
        ));
        assert!(matches!(
            Rule::builder("r", q).cost(6).build(),
            Err(RuleError::CostAboveCapacity { capacity: 5, .. })
        ));
        // GCRA's capacity is the burst, the windows' the limit.
        let bursty = q.with_burst(10).unwrap();
        assert!(Rule::builder("r", bursty).cost(8).build().is_ok());
        assert!(Rule::builder("r", bursty)
            .algorithm(Algorithm::FixedWindow)
            .cost(8)
            .build()
            .is_err());
    }

    /// `with_cost` and `with_quota` change only what they name, keep the rule's id, and refuse a
    /// cost of 0 or above the capacity exactly at its edge.
    #[test]
    fn a_variant_changes_only_its_cost_or_quota_and_checks_the_capacity_at_its_edge() {
        let rule = Rule::builder("batch", Quota::per_minute(100).unwrap())
            .algorithm(Algorithm::FixedWindow)
            .cost(3)
            .shadow(true)
            .honour_replays(true)
            .build()
            .unwrap();
        let heavy = rule.with_cost(100).unwrap();
        assert_eq!(heavy.cost(), 100, "the capacity itself is a valid cost");
        assert_eq!(*heavy.quota(), *rule.quota());
        assert_eq!(
            (heavy.id(), heavy.name(), heavy.algorithm()),
            (rule.id(), "batch", Algorithm::FixedWindow)
        );
        assert!(heavy.is_shadow() && heavy.honours_replays());
        assert!(matches!(
            rule.with_cost(0),
            Err(RuleError::ZeroCost { rule }) if rule == "batch"
        ));
        assert!(matches!(
            rule.with_cost(101),
            Err(RuleError::CostAboveCapacity {
                cost: 101,
                capacity: 100,
                ..
            })
        ));

        let big = Quota::per_minute(6000).unwrap();
        let enterprise = rule.with_quota(big).unwrap();
        assert_eq!(*enterprise.quota(), big);
        assert_eq!((enterprise.cost(), enterprise.id()), (3, rule.id()));
        // The cost is checked against the new quota's capacity.
        let small = Quota::per_minute(2).unwrap();
        assert!(matches!(
            rule.with_quota(small),
            Err(RuleError::CostAboveCapacity {
                cost: 3,
                capacity: 2,
                ..
            })
        ));
        assert_eq!(
            *rule
                .with_quota(Quota::per_minute(3).unwrap())
                .unwrap()
                .quota(),
            Quota::per_minute(3).unwrap()
        );
    }

    #[test]
    fn id_depends_on_name_only() {
        let a = Rule::builder("a", Quota::per_second(1).unwrap())
            .build()
            .unwrap();
        let a2 = Rule::builder("a", Quota::per_day(9).unwrap())
            .build()
            .unwrap();
        let b = Rule::builder("b", Quota::per_second(1).unwrap())
            .build()
            .unwrap();
        assert_eq!(a.id(), a2.id());
        assert_ne!(a.id(), b.id());
    }

    /// A rule reports the name it was built with, and its `Debug` shows its configuration.
    #[test]
    fn a_rule_reports_its_name_and_shows_its_configuration() {
        let rule = Rule::builder("login", Quota::per_second(2).unwrap())
            .shadow(true)
            .build()
            .unwrap();
        assert_eq!(rule.name(), "login");
        assert_eq!(
            format!("{rule:?}"),
            "Rule { name: \"login\", quota: Quota { limit: 2, period: 1s, burst: 2 }, \
             algorithm: Gcra, cost: 1, shadow: true, honours_replays: false }"
        );
    }
}
