//! A builder's limits, compiled once: patterns parsed, key parts numbered, every mistake found.

use std::borrow::Cow;

use smallvec::SmallVec;
use tollgate_core::{LogThrottle, Rule};

use super::LOG_INTERVAL;
use crate::error::BuildError;
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
}

/// A limit as the limiter applies it.
pub(crate) struct CompiledLimit {
    pub(crate) rule: Rule,
    pub(crate) scope: ScopeMatcher,
    /// (source number, required) per key part, in order.
    pub(crate) parts: SmallVec<[(usize, bool); 6]>,
    /// The IETF `RateLimit-Policy` item.
    pub(crate) policy: Box<str>,
    /// `X-RateLimit-Limit`, when this limit binds.
    pub(crate) limit_value: LimitValue,
    pub(crate) counters: Counters,
    /// Shadow denials of this limit: at most one line per second.
    pub(crate) shadow_log: LogThrottle,
}

/// The limits, and the sources their numbers refer to.
pub(crate) struct Compiled {
    pub(crate) sources: Box<[CompiledSource]>,
    pub(crate) limits: Box<[CompiledLimit]>,
}

/// Compiles `limits`, adding every mistake to `mistakes` but those a limit carries itself
/// (which the builder recorded when the limit was added). With a mistake, what is returned is
/// incomplete and must not serve.
pub(crate) fn limits(limits: &[Limit], mistakes: &mut Vec<BuildError>) -> Compiled {
    let mut sources = SourceTable::default();
    let mut compiled = Vec::with_capacity(limits.len());
    for (i, limit) in limits.iter().enumerate() {
        let name = limit.name();
        if limits[..i].iter().any(|l| l.name() == name) {
            mistakes.push(BuildError::DuplicateRule(name.to_owned()));
        }
        let scope = compile_scope(&limit.scope, name, &mut sources, mistakes);
        let parts = limit
            .key
            .iter()
            .map(|part| (sources.number(part, mistakes), part.required))
            .collect();
        let Some(rule) = limit.rule() else { continue };
        compiled.push(CompiledLimit {
            policy: policy_item(rule).into_boxed_str(),
            limit_value: LimitValue::new(rule),
            rule: rule.clone(),
            scope,
            parts,
            counters: Counters::default(),
            shadow_log: LogThrottle::new(LOG_INTERVAL),
        });
    }
    Compiled {
        sources: sources.0.into_boxed_slice(),
        limits: compiled.into_boxed_slice(),
    }
}

/// The distinct key parts read by any limit or scope, numbered.
#[derive(Default)]
struct SourceTable(Vec<CompiledSource>);

impl SourceTable {
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
