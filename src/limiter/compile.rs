//! A builder's limits, compiled once: patterns parsed, key parts numbered, every mistake found.

use std::borrow::Cow;
use std::sync::Arc;

use smallvec::SmallVec;
use tollgate_core::{KeyBuilder, KeySecret, LogThrottle, Rule};

use super::LOG_INTERVAL;
use crate::client_ip::Cidr;
use crate::error::BuildError;
use crate::exempt::{value_digest, Exemptions, Predicate};
use crate::key::{KeyPart, Source};
use crate::limit::Limit;
use crate::metrics::Counters;
use crate::response::{policy_item, LimitValue};
use crate::route::RoutePattern;
use crate::scope::{Scope, ScopeMatcher};

/// A key part as the limiter reads it.
pub(crate) struct CompiledSource {
    pub(crate) source: Source,
    /// Bytes that separate this source's digests from every other source's.
    pub(crate) tag: Cow<'static, [u8]>,
    /// The digest of this source's values as far as the secret and the tag: a request's value
    /// continues a copy of it (the same digest as hashing all three, without rehashing the
    /// tag on every request).
    pub(crate) digest: KeyBuilder,
}

/// A limit as the limiter applies it.
pub(crate) struct CompiledLimit {
    pub(crate) rule: Rule,
    pub(crate) scope: ScopeMatcher,
    /// (source number, required) per key part, in order.
    pub(crate) parts: SmallVec<[(usize, bool); 6]>,
    /// The IETF `RateLimit-Policy` item.
    pub(crate) policy: Box<str>,
    /// The rule under the other quotas some clients get: variant `v` is `variants[v - 1]`
    /// (variant 0 is `rule` itself).
    pub(crate) variants: Box<[Variant]>,
    /// Tier name and variant, in the order given (the first of a name wins).
    pub(crate) tiers: Box<[(Arc<str>, u16)]>,
    /// Digest of the one key part's value and variant, sorted by digest.
    pub(crate) identities: Box<[(u128, u16)]>,
    /// The statuses that charge the limit after the response; empty: charged up front.
    pub(crate) charge_on: Box<[http::StatusCode]>,
    /// Where a request's own cost is read from, if anywhere.
    pub(crate) cost_from: Option<crate::limit::CostSource>,
    /// `X-RateLimit-Limit`, when this limit binds.
    pub(crate) limit_value: LimitValue,
    pub(crate) counters: Counters,
    /// Shadow denials of this limit: at most one line per second.
    pub(crate) shadow_log: LogThrottle,
}

/// A limit's rule under another quota, and its policy item.
pub(crate) struct Variant {
    pub(crate) rule: Rule,
    pub(crate) policy: Box<str>,
}

impl CompiledLimit {
    /// The rule and policy item of variant `v`.
    pub(crate) fn variant(&self, v: u16) -> (&Rule, &str) {
        match v.checked_sub(1) {
            None => (&self.rule, &self.policy),
            Some(i) => {
                let variant = &self.variants[usize::from(i)];
                (&variant.rule, &variant.policy)
            }
        }
    }
}

/// Exemptions as the limiter applies them: identity values digested, sorted for search.
pub(crate) struct CompiledExemptions {
    pub(crate) ranges: Box<[Cidr]>,
    /// (source number, sorted digests of the exempt values) per exempt key part.
    pub(crate) identities: Box<[(usize, Box<[u128]>)]>,
    pub(crate) predicates: Box<[Predicate]>,
}

/// The limits and exemptions, and the sources their numbers refer to.
pub(crate) struct Compiled {
    pub(crate) sources: Box<[CompiledSource]>,
    pub(crate) limits: Box<[CompiledLimit]>,
    /// `None` when nothing is exempt, so a request pays nothing for the feature.
    pub(crate) exempt: Option<CompiledExemptions>,
}

/// Compiles `limits` and `exempt`, adding every mistake to `mistakes` but those a limit carries
/// itself (which the builder recorded when the limit was added). With a mistake, what is
/// returned is incomplete and must not serve.
pub(crate) fn limits(
    limits: &[Limit],
    exempt: &Exemptions,
    secret: &KeySecret,
    mistakes: &mut Vec<BuildError>,
) -> Compiled {
    let mut sources = SourceTable::new(*secret);
    let mut compiled = Vec::with_capacity(limits.len());
    for (i, limit) in limits.iter().enumerate() {
        let name = limit.name();
        if limits[..i].iter().any(|l| l.name() == name) {
            mistakes.push(BuildError::DuplicateRule(name.to_owned()));
        }
        let scope = compile_scope(&limit.scope, name, &mut sources, mistakes);
        let parts: SmallVec<[(usize, bool); 6]> = limit
            .key
            .iter()
            .map(|part| (sources.number(part, mistakes), part.required))
            .collect();
        let Some(rule) = limit.rule() else { continue };
        let per_client = per_client_quotas(limit, &parts, &sources, secret);
        compiled.push(CompiledLimit {
            policy: policy_item(rule).into_boxed_str(),
            limit_value: LimitValue::new(rule),
            rule: rule.clone(),
            scope,
            parts,
            variants: per_client.variants.into_boxed_slice(),
            tiers: per_client.tiers.into_boxed_slice(),
            identities: per_client.identities.into_boxed_slice(),
            charge_on: limit.charge_on.iter().copied().collect(),
            cost_from: limit.cost_from.clone(),
            counters: Counters::new(rule.name()),
            shadow_log: LogThrottle::new(LOG_INTERVAL),
        });
    }
    let exempt = (!exempt.is_empty()).then(|| CompiledExemptions {
        ranges: exempt.ranges.iter().copied().collect(),
        identities: exempt
            .identities
            .iter()
            .map(|(part, values)| {
                let i = sources.number(part, mistakes);
                let tag = &sources.0[i].tag;
                let mut digests: Vec<u128> = values
                    .iter()
                    .filter_map(|v| value_digest(secret, tag, v))
                    .map(|key| key.as_u128())
                    .collect();
                digests.sort_unstable();
                digests.dedup();
                (i, digests.into_boxed_slice())
            })
            .collect(),
        predicates: exempt.predicates.iter().cloned().collect(),
    });
    Compiled {
        sources: sources.0.into_boxed_slice(),
        limits: compiled.into_boxed_slice(),
        exempt,
    }
}

#[derive(Default)]
struct PerClient {
    variants: Vec<Variant>,
    tiers: Vec<(Arc<str>, u16)>,
    identities: Vec<(u128, u16)>,
}

/// A limit's tier and client quotas as variants of its rule, client values digested. The
/// limit has no mistake (it would not be compiled), so every quota makes a rule and client
/// quotas come with exactly one key part.
fn per_client_quotas(
    limit: &Limit,
    parts: &[(usize, bool)],
    sources: &SourceTable,
    secret: &KeySecret,
) -> PerClient {
    let mut variants = Vec::new();
    let mut variant = |quota| {
        let rule = limit.rule()?.with_quota(quota).ok()?;
        let policy = policy_item(&rule).into_boxed_str();
        variants.push(Variant { rule, policy });
        // Bounded by the number of quotas a builder was given; u16 is plenty.
        u16::try_from(variants.len()).ok()
    };
    let tiers = limit
        .tiers
        .iter()
        .filter_map(|(tier, quota)| Some((Arc::clone(tier), variant(*quota)?)))
        .collect();
    let mut identities: Vec<(u128, u16)> = match parts {
        [(part, _)] => limit
            .identities
            .iter()
            .filter_map(|(value, quota)| {
                let digest = value_digest(secret, &sources.0[*part].tag, value)?;
                Some((digest.as_u128(), variant(*quota)?))
            })
            .collect(),
        _ => Vec::new(),
    };
    // The first quota given for a client wins, as the first tier of a name does.
    identities.sort_by_key(|&(digest, _)| digest);
    identities.dedup_by_key(|&mut (digest, _)| digest);
    PerClient {
        variants,
        tiers,
        identities,
    }
}

/// The distinct key parts read by any limit or scope, numbered.
struct SourceTable(Vec<CompiledSource>, KeySecret);

impl SourceTable {
    fn new(secret: KeySecret) -> Self {
        Self(Vec::new(), secret)
    }

    /// The part's number, numbering it if it is new.
    fn number(&mut self, part: &KeyPart, mistakes: &mut Vec<BuildError>) -> usize {
        if let Some(i) = self.0.iter().position(|s| s.source == part.source) {
            return i;
        }
        let tag = part.source.tag();
        if let Source::Custom(custom) = &part.source {
            if self.0.iter().any(|s| s.tag == tag) {
                mistakes.push(BuildError::DuplicateKeyPart(custom.name.to_string()));
            }
        }
        self.0.push(CompiledSource {
            digest: self.1.key().part(&tag),
            tag,
            source: part.source.clone(),
        });
        self.0.len() - 1
    }
}

fn compile_scope(
    scope: &Scope,
    limit: &str,
    sources: &mut SourceTable,
    mistakes: &mut Vec<BuildError>,
) -> ScopeMatcher {
    ScopeMatcher {
        paths: scope
            .paths
            .iter()
            .filter_map(|p| {
                RoutePattern::parse(p)
                    .map_err(|e| mistakes.push(e.in_limit(limit).into()))
                    .ok()
            })
            .collect(),
        methods: scope.methods.iter().cloned().collect(),
        without: scope
            .without
            .iter()
            .map(|p| sources.number(p, mistakes))
            .collect(),
        except: scope
            .except
            .iter()
            .map(|s| compile_scope(s, limit, sources, mistakes))
            .collect(),
    }
}
