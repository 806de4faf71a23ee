//! Route patterns: `/api/v0/instances/{id}/`, `/api/public/v1/*`.
//!
//! One syntax serves two purposes: a [`Scope`](crate::Scope) says which paths a limit applies
//! to, and, for a plain hyper service that has no router to name the matched route, the patterns
//! given to [`RateLimitBuilder::routes`](crate::RateLimitBuilder::routes) turn a raw path into its
//! route template (what axum's `MatchedPath` gives for free).
//!
//! Patterns are parsed once, when the layer is built.

use std::fmt;

/// A parsed route pattern.
///
/// A pattern is a path of `/`-separated segments, each one of:
/// - a literal, matched exactly (case-sensitive, no decoding);
/// - `{name}` or `:name`, matching any one non-empty segment;
/// - `*` or `{*name}`, last only, matching the rest of the path, including nothing:
///   `/api/public/v1/*` matches `/api/public/v1`, `/api/public/v1/` and `/api/public/v1/vms/7`.
///
///
/// ```
/// use tollgate::RoutePattern;
///
/// let pattern = RoutePattern::parse("/api/v0/instances/{id}/")?;
/// assert!(pattern.matches("/api/v0/instances/42/"));
/// assert!(!pattern.matches("/api/v0/instances/42"));
/// assert_eq!(pattern.as_str(), "/api/v0/instances/{id}/");
/// # Ok::<(), tollgate::RouteError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RoutePattern {
    template: Box<str>,
    segments: Box<[Segment]>,
    rest: bool,
}

#[derive(Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Param,
}

/// A route pattern that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    pattern: String,
    reason: &'static str,
    /// The limit whose scope holds the pattern, if any.
    limit: Option<Box<str>>,
}

impl RouteError {
    /// The pattern as written.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The limit whose scope holds the pattern; `None` for a pattern given to
    /// [`RateLimitBuilder::routes`](crate::RateLimitBuilder::routes).
    pub fn limit(&self) -> Option<&str> {
        self.limit.as_deref()
    }

    /// The same mistake, found in `limit`'s scope.
    pub(crate) fn in_limit(mut self, limit: &str) -> Self {
        self.limit = Some(limit.into());
        self
    }
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(limit) = &self.limit {
            write!(f, "limit {limit:?}: ")?;
        }
        write!(
            f,
            "invalid route pattern {:?}: {}",
            self.pattern, self.reason
        )
    }
}

impl std::error::Error for RouteError {}

impl RoutePattern {
    /// Parses a pattern; see [`RoutePattern`] for the syntax.
    pub fn parse(pattern: &str) -> Result<Self, RouteError> {
        let error = |reason| RouteError {
            pattern: pattern.to_owned(),
            reason,
            limit: None,
        };
        let Some(body) = pattern.strip_prefix('/') else {
            return Err(error("a pattern starts with '/'"));
        };
        let mut segments = Vec::new();
        let mut rest = false;
        let mut parts = body.split('/').peekable();
        while let Some(part) = parts.next() {
            let last = parts.peek().is_none();
            let is_rest = part == "*" || (part.starts_with("{*") && part.ends_with('}'));
            if is_rest {
                if !last {
                    return Err(error(
                        "a wildcard ('*' or '{*name}') must be the last segment",
                    ));
                }
                rest = true;
            } else if (part.starts_with('{') && part.ends_with('}') && part.len() > 2)
                || (part.starts_with(':') && part.len() > 1)
            {
                segments.push(Segment::Param);
            } else if part.contains(['{', '}', '*']) || part == ":" {
                return Err(error(
                    "use '{name}' or ':name' for a whole segment, and '*' only as the last one",
                ));
            } else {
                segments.push(Segment::Literal(part.into()));
            }
        }
        Ok(Self {
            template: pattern.into(),
            segments: segments.into_boxed_slice(),
            rest,
        })
    }

    /// Whether `path` matches: a request's raw path (without the query), or a route template
    /// (`/api/v0/instances/{id}/`, whose `{id}` is a segment like any other).
    pub fn matches(&self, path: &str) -> bool {
        let Some(body) = path.strip_prefix('/') else {
            return false;
        };
        // What follows the last `/` read; `None` once the path is used up. A literal is
        // compared in place (it holds no `/`), so only a parameter looks for the next `/`.
        let mut rest = Some(body);
        for segment in self.segments.iter() {
            let Some(here) = rest else {
                return false;
            };
            rest = match segment {
                Segment::Literal(lit) => match here.strip_prefix(&**lit) {
                    Some("") => None,
                    Some(after) => match after.strip_prefix('/') {
                        Some(next) => Some(next),
                        None => return false,
                    },
                    None => return false,
                },
                Segment::Param => match here.split_once('/') {
                    Some(("", _)) => return false,
                    Some((_, next)) => Some(next),
                    None if here.is_empty() => return false,
                    None => None,
                },
            };
        }
        self.rest || rest.is_none()
    }

    /// The pattern as written: the route template a matched request is keyed by.
    pub fn as_str(&self) -> &str {
        &self.template
    }
}

impl fmt::Debug for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoutePattern({:?})", self.template)
    }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.template)
    }
}

impl std::str::FromStr for RoutePattern {
    type Err = RouteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        RoutePattern::parse(pattern).unwrap().matches(path)
    }

    #[test]
    fn literals_params_and_wildcards() {
        assert!(m("/", "/"));
        assert!(!m("/", "/x"));
        assert!(m("/auth/login", "/auth/login"));
        assert!(!m("/auth/login", "/auth/login/"));
        assert!(!m("/auth/login", "/auth/logins"));
        assert!(m("/api/v0/instances/{id}/", "/api/v0/instances/7/"));
        assert!(m("/api/v0/instances/:id/", "/api/v0/instances/7/"));
        assert!(!m("/api/v0/instances/{id}/", "/api/v0/instances//"));
        assert!(!m("/api/v0/instances/{id}/", "/api/v0/instances/7/x"));
        for path in ["/api/public/v1", "/api/public/v1/", "/api/public/v1/vms/7"] {
            assert!(m("/api/public/v1/*", path), "{path}");
            assert!(m("/api/public/v1/{*rest}", path), "{path}");
        }
        assert!(!m("/api/public/v1/*", "/api/public/v1x"));
        assert!(!m("/api/public/v1/*", "/api/public"));
        assert!(m("/*", "/anything/at/all"));
        assert!(!m("/x", "x"));
        assert!(!m("/x", ""));
    }

    #[test]
    fn bad_patterns_are_errors() {
        for bad in ["", "api", "/a/*/b", "/a/{id", "/a/b*", "/a/{}", "/a/:"] {
            assert!(RoutePattern::parse(bad).is_err(), "{bad:?}");
        }
        let e = RoutePattern::parse("/a/*/b").unwrap_err();
        assert!(e.to_string().contains("last segment"));
    }
}

/// Properties of route parsing and matching (a request's path is attacker-chosen). `fuzz_` in
/// every name, so that `PROPTEST_CASES=200000 cargo test -p tollgate --lib fuzz_` runs them all.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Path-ish text: segments of anything, slashes, braces, stars, colons, percent signs.
    fn pathish() -> impl Strategy<Value = String> {
        "(/|[a-z0-9]{1,4}|\\{[a-z*]{0,3}\\}?|:[a-z]{0,2}|\\*|%2F|\\PC){0,12}"
    }

    proptest! {
        #[test]
        fn fuzz_route_parse_and_match_never_panic(pattern in pathish(), path in pathish()) {
            if let Ok(parsed) = RoutePattern::parse(&pattern) {
                let _ = parsed.matches(&path);
                prop_assert_eq!(parsed.as_str(), pattern.as_str());
                // A pattern's own text is a path of its shape.
                prop_assert!(parsed.matches(&pattern));
            }
        }

        /// A template matches exactly the paths with its literals in place and a non-empty
        /// segment for each parameter.
        #[test]
        fn fuzz_route_params_match_one_segment(
            literals in prop::collection::vec("[a-z0-9]{1,5}", 1..5),
            params in prop::collection::vec(any::<bool>(), 1..5),
            values in prop::collection::vec("[^/?#]{0,6}", 1..5),
            rest in any::<bool>(),
            tail in "(/[^/]{0,4}){0,3}",
        ) {
            let mut template = String::new();
            let mut path = String::new();
            let mut fits = true;
            for (i, literal) in literals.iter().enumerate() {
                let is_param = params[i % params.len()];
                let value = &values[i % values.len()];
                template.push('/');
                path.push('/');
                if is_param {
                    template.push_str("{id}");
                    path.push_str(value);
                    fits &= !value.is_empty();
                } else {
                    template.push_str(literal);
                    path.push_str(literal);
                }
            }
            if rest {
                template.push_str("/*");
            }
            path.push_str(&tail);
            let pattern = RoutePattern::parse(&template).unwrap();
            let expected = fits && (tail.is_empty() || rest);
            prop_assert_eq!(pattern.matches(&path), expected, "{} vs {}", template, path);
        }
    }
}
