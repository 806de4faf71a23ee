//! Which requests a limit applies to: a [`Scope`] of route patterns, methods, parts that must be
//! absent, and exceptions.
//!
//! A scope is a filter on the request; the limit's key parts add one more condition (a limit
//! whose key needs a part the request lacks does not apply). Scopes are compiled once, when the
//! layer is built.

use http::Method;
use smallvec::SmallVec;

use crate::key::KeyPart;
use crate::route::RoutePattern;

/// The requests a limit applies to. The default scope is every request.
///
/// Conditions combine with AND; several paths (or methods) combine with OR.
///
/// ```
/// use http::Method;
/// use tollgate::{KeyPart, Scope, TokenId};
///
/// // Writes to the public API...
/// let writes = Scope::all()
///     .path("/api/public/v1/*")
///     .methods([Method::POST, Method::PUT, Method::DELETE]);
/// // ...every request that is not authenticated...
/// let anonymous = Scope::all().without(KeyPart::extension::<TokenId>());
/// // ...and every GET but the health check.
/// let gets = Scope::all()
///     .method(Method::GET)
///     .except(Scope::all().path("/healthz"));
/// ```
///
/// # What a path pattern is matched against
///
/// The route template, when one is known: behind axum, the route the router matched
/// (`/api/v0/instances/{id}/`), as the router the layer is on wrote it. A layer on a router that
/// is later nested (`Router::nest("/api", router)`) sees the inner router's templates
/// (`/instances/{id}/`), so its scopes keep their meaning wherever the router is mounted. A
/// template's `{id}` is a segment like any other: the pattern `/instances/{id}/` matches it,
/// `/instances/42/` does not (scopes follow the router's routing, not the ids in paths).
///
/// Requests with no template (no axum `MatchedPath`: a plain hyper service, a 404 behind axum)
/// are matched by their raw path, without the query.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Scope {
    pub(crate) paths: Vec<String>,
    pub(crate) methods: Vec<Method>,
    pub(crate) without: Vec<KeyPart>,
    pub(crate) except: Vec<Scope>,
}

impl Scope {
    /// Every request.
    pub fn all() -> Self {
        Self::default()
    }

    /// Requests whose route matches `pattern` (see [`RoutePattern`] for the syntax, and the
    /// [`Scope` documentation](Scope#what-a-path-pattern-is-matched-against) for what it is
    /// matched against: the route template when one is known, else the raw path); several
    /// calls add alternatives. Invalid patterns are reported by
    /// [`RateLimitBuilder::build`](crate::RateLimitBuilder::build).
    pub fn path(mut self, pattern: impl Into<String>) -> Self {
        self.paths.push(pattern.into());
        self
    }

    /// Requests with this method; several calls add alternatives.
    pub fn method(mut self, method: Method) -> Self {
        self.methods.push(method);
        self
    }

    /// Requests with any of these methods.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods.extend(methods);
        self
    }

    /// Requests that lack `part` (whether it is marked optional does not matter): for instance
    /// the per-IP bucket that charges only requests without an authenticated token.
    pub fn without(mut self, part: KeyPart) -> Self {
        self.without.push(part);
        self
    }

    /// Leaves out the requests `scope` matches: a method-wide limit can give way to an
    /// endpoint's own.
    pub fn except(mut self, scope: Scope) -> Self {
        self.except.push(scope);
        self
    }
}

/// A scope ready to match requests: patterns parsed, parts numbered.
#[derive(Debug)]
pub(crate) struct ScopeMatcher {
    pub(crate) paths: Box<[RoutePattern]>,
    pub(crate) methods: SmallVec<[Method; 2]>,
    /// Indices of the parts that must be absent.
    pub(crate) without: SmallVec<[usize; 2]>,
    pub(crate) except: Box<[ScopeMatcher]>,
}

impl ScopeMatcher {
    /// Whether matching reads the request's path.
    pub(crate) fn has_paths(&self) -> bool {
        !self.paths.is_empty() || self.except.iter().any(ScopeMatcher::has_paths)
    }

    /// Whether the scope holds the request, whose route template (or raw path) is `path`;
    /// `present(i)` says whether part `i` is in it.
    pub(crate) fn matches<E>(
        &self,
        method: &Method,
        path: &str,
        present: &mut impl FnMut(usize) -> Result<bool, E>,
    ) -> Result<bool, E> {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return Ok(false);
        }
        if !self.paths.is_empty() && !self.paths.iter().any(|p| p.matches(path)) {
            return Ok(false);
        }
        for &part in &self.without {
            if present(part)? {
                return Ok(false);
            }
        }
        for except in self.except.iter() {
            if except.matches(method, path, present)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
