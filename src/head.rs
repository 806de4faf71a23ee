//! [`RequestHead`]: the parts of a request the limiter reads, borrowed, never the body.

use std::fmt;

use http::{Extensions, HeaderMap, Method, Request, Uri};

/// A request's method, URI, headers and extensions, borrowed: what a
/// [`KeyPart::from_fn`](crate::KeyPart::from_fn) closure reads a custom identity from, and
/// what a [`Denial`](crate::Denial) shows of the refused request.
///
/// ```
/// use tollgate::RequestHead;
///
/// let request = http::Request::get("/vms?page=2").header("x-tenant", "acme").body(())?;
/// let head = RequestHead::of(&request);
/// assert_eq!(head.uri().path(), "/vms");
/// assert_eq!(head.headers()["x-tenant"], "acme");
/// # Ok::<(), http::Error>(())
/// ```
#[derive(Clone, Copy)]
pub struct RequestHead<'a> {
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// The head of `request`.
    pub fn of<B>(request: &'a Request<B>) -> Self {
        Self {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        }
    }

    /// The head of a request split into its parts.
    pub fn from_parts(parts: &'a http::request::Parts) -> Self {
        Self {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            extensions: &parts.extensions,
        }
    }

    /// The method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The URI. Mind that it may hold secrets (an `api_key` parameter).
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The headers. Mind that they hold secrets (`Authorization`, cookies).
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The extensions set by the server and earlier layers: axum's `MatchedPath`, the peer
    /// address, an auth layer's token id.
    pub fn extensions(&self) -> &'a Extensions {
        self.extensions
    }
}

/// Shows the method and the path, never the request's secrets: not the query (which may hold
/// an `api_key`), and how many headers there are, not their values.
impl fmt::Debug for RequestHead<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestHead")
            .field("method", self.method)
            .field("path", &self.uri.path())
            .field(
                "headers",
                &format_args!("<{} redacted>", self.headers.len()),
            )
            .finish_non_exhaustive()
    }
}
