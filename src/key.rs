//! What identifies a request to a rule: the [`KeyPart`]s a limit's key is made of.
//!
//! Each part is read from the request once, hashed at once with the layer's
//! [`KeySecret`](tollgate_core::KeySecret) into a 128-bit digest, and forgotten: a raw token, API
//! key or address never reaches a store key or a log line, and a 100 KB header costs no more
//! state than a short one. A limit's key is the digest of its parts' digests, in order.
//!
//! Besides the built-in parts (client IP, bearer token, header, query parameter, typed
//! extension, route template, method), [`KeyPart::from_fn`] takes any closure over the
//! [`RequestHead`]: a custom identity without a middleware of its own.
//!
//! A part is *required* by default: a limit whose key needs a part the request lacks does not
//! apply to that request (the per-token bucket skips unauthenticated requests). An
//! [`optional`](KeyPart::optional) part that is absent still yields a key, distinct from every
//! present value (Vast's identity: "a request lacking a part simply has that part empty").
//!
//! A part that occurs several times (a repeated query parameter, repeated header lines,
//! several `Authorization` lines) has one reading, documented on [`KeyPart`] ("Repeated
//! parts"): empty copies are skipped, agreeing copies are that value hashed as a lone copy, and
//! distinct values are the set of them, one identity that is neither value's.

use std::any::TypeId;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{Extensions, HeaderMap, HeaderName};
use smallvec::SmallVec;
use tollgate_core::KeyBuilder;

use crate::head::RequestHead;

/// One part of a limit's key, taken from the request.
///
/// ```
/// use http::HeaderName;
/// use tollgate::{KeyPart, TokenId};
///
/// let parts = [
///     KeyPart::client_ip(),
///     KeyPart::bearer_token().optional(),
///     KeyPart::header(HeaderName::from_static("x-api-key")),
///     KeyPart::query("api_key").optional(),
///     KeyPart::extension::<TokenId>(),
///     KeyPart::route(),
///     KeyPart::method(),
///     KeyPart::from_fn("tenant", |head| head.headers().get("x-tenant").cloned()),
/// ];
/// assert!(parts[0].is_required() && !parts[1].is_required());
/// ```
///
/// # Repeated parts
///
/// A request may carry a part several times: a repeated query parameter (`?api_key=A&api_key=B`,
/// also spelled `api%5Fkey`, since names and values are percent-decoded before they are
/// compared or hashed), repeated header lines, several `Authorization` lines. An app may read
/// the first copy, the last, or join them; tollgate cannot know which, so it reads them all, the
/// same way for every part that can repeat ([`bearer_token`](KeyPart::bearer_token),
/// [`header`](KeyPart::header), [`query`](KeyPart::query)):
///
/// - A value is *empty* when nothing is left once trimmed: an empty header line,
///   `Authorization: Bearer ` with no token, `?api_key=` or a bare `?api_key`. An empty copy
///   names nobody and is skipped.
/// - A part is *absent* only when no copy has a non-empty value. An empty first copy never
///   hides a later one (`?api_key=&api_key=X` is `X`, not absent, so a required part cannot be
///   dodged that way).
/// - When the non-empty copies all agree, the part is that value, hashed exactly as a lone
///   copy: `?api_key=X&api_key=X` and `?api_key=&api_key=X` share the bucket of `?api_key=X`,
///   and buckets keyed before this reading existed keep their keys.
/// - Several distinct non-empty values are one identity: the *set* of them, each hashed on its
///   own (so length-prefixed), sorted and marked so that it equals no single value. Order and
///   repeats do not change it. It is a bucket of its own, neither value's.
///
/// A value is one header line or one parameter: a comma inside a line (`x-api-key: a, b`, as
/// a proxy that merges lines would write it) is part of the value, not a separator, because
/// splitting would change the keys of values that contain commas.
///
/// What this does not do: a client that varies raw values (`?api_key=<random>`, or
/// `?api_key=<random>&api_key=<valid>`, which an app reading the last copy authenticates as
/// `<valid>`) gets a bucket per spelling, as it would with any raw-value key. Put a limit that
/// raw values cannot escape behind it (a per-client-IP ceiling, as the
/// [Vast preset](crate::presets::vast) does by default), and key limits meant to bound an
/// authenticated credential by what the auth layer verified ([`KeyPart::extension`] with a
/// [`TokenId`]), not by the raw header.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPart {
    pub(crate) source: Source,
    pub(crate) required: bool,
}

/// Where a part's value comes from.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Source {
    ClientIp,
    BearerToken,
    Header(HeaderName),
    Query(Box<str>),
    Extension(ExtensionSource),
    Route,
    Method,
    Custom(CustomSource),
}

/// Writes a closure's value into the key; `false` when it has none.
pub(crate) type WriteFn = dyn Fn(&RequestHead<'_>, &mut KeyBuilder) -> bool + Send + Sync;

/// A closure over the request head, named.
#[derive(Clone)]
pub(crate) struct CustomSource {
    pub(crate) name: Arc<str>,
    pub(crate) write: Arc<WriteFn>,
}

/// One closure is one source: clones of a part share it, two closures never do.
impl PartialEq for CustomSource {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.write, &other.write)
    }
}

impl Eq for CustomSource {}

/// A typed request extension, erased to a function that hashes it.
#[derive(Clone, Copy)]
pub(crate) struct ExtensionSource {
    type_id: TypeId,
    type_name: &'static str,
    /// Writes the extension into the key; `false` when the request has none.
    pub(crate) write: fn(&Extensions, &mut KeyBuilder) -> bool,
}

impl PartialEq for ExtensionSource {
    fn eq(&self, other: &Self) -> bool {
        self.type_id == other.type_id
    }
}

impl Eq for ExtensionSource {}

impl KeyPart {
    const fn required(source: Source) -> Self {
        Self {
            source,
            required: true,
        }
    }

    /// The client's address (grouped: an IPv6 /64 by default), from the connection's peer
    /// address, or from a forwarding header when the peer is a trusted proxy; see
    /// [`client_ip`](crate::client_ip). A request without a peer address is a server
    /// misconfiguration, answered with a 500 that says what to set up.
    pub fn client_ip() -> Self {
        Self::required(Source::ClientIp)
    }

    /// The token of `Authorization: Bearer <token>` (scheme case-insensitive, token trimmed).
    /// Any bytes, not only UTF-8.
    ///
    /// Every `Authorization` line counts (lines of another scheme are skipped), read as the
    /// [reading of repeated parts](Self#repeated-parts) says: absent only when no bearer line has a token;
    /// several distinct tokens are one identity of their own, neither token's.
    pub fn bearer_token() -> Self {
        Self::required(Source::BearerToken)
    }

    /// A header, such as `x-api-key`, trimmed.
    ///
    /// Every line of the header counts, read as the [reading of repeated parts](Self#repeated-parts) says:
    /// absent only when no line has a non-empty value; several distinct values are one identity
    /// of their own, neither value's. A comma inside a line is part of its value.
    pub fn header(name: HeaderName) -> Self {
        Self::required(Source::Header(name))
    }

    /// A query parameter, such as `api_key`, percent-decoded (`+` is a space); broken escapes
    /// are kept as they are. The name is compared decoded too: `api%5Fkey` is `api_key`.
    ///
    /// Every occurrence counts, read as the [reading of repeated parts](Self#repeated-parts) says: absent
    /// only when no occurrence has a non-empty value (`?api_key=&api_key=X` is `X`); several
    /// distinct values are one identity of their own, neither value's.
    pub fn query(name: impl Into<String>) -> Self {
        Self::required(Source::Query(name.into().into_boxed_str()))
    }

    /// A typed request extension set by an earlier layer, such as the token id an auth layer
    /// inserts once `x-api-key` checks out ([`TokenId`]) or the session's user
    /// ([`SessionUser`]).
    pub fn extension<T: Identifier>() -> Self {
        fn write<T: Identifier>(extensions: &Extensions, key: &mut KeyBuilder) -> bool {
            extensions
                .get::<T>()
                .map(|value| value.write_identity(key))
                .is_some()
        }
        Self::required(Source::Extension(ExtensionSource {
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
            write: write::<T>,
        }))
    }

    /// The route template (`/api/v0/instances/{id}/`), never the raw path, so ids in the path
    /// share their endpoint's bucket. Read from axum's `MatchedPath`, or matched against the
    /// patterns given to [`RateLimitBuilder::routes`](crate::RateLimitBuilder::routes). A
    /// request that matches no route has no route part.
    pub fn route() -> Self {
        Self::required(Source::Route)
    }

    /// The request method, so that `GET` and `POST` are counted apart.
    pub fn method() -> Self {
        Self::required(Source::Method)
    }

    /// A part computed by `f` from the request's head (method, URI, headers, extensions): a
    /// custom identity, with no middleware of its own. `None`, or an empty value, is an absent
    /// part, as for every other part.
    ///
    /// The digest is tagged with `name`, so two closures never share buckets, and `Debug`
    /// shows the name only. Give each closure its own name: two different closures with one
    /// name are a build error (clones of one part are one part).
    ///
    /// `f` runs on every request a limit keyed by it applies to (once, however many limits use
    /// the part). It returns owned bytes, or a `HeaderValue` (whose clone copies no bytes):
    ///
    /// ```
    /// use tollgate::{KeyPart, Limit};
    ///
    /// // One bucket per tenant, named by a header...
    /// let tenant = KeyPart::from_fn("tenant", |head| head.headers().get("x-tenant").cloned());
    /// // ...or by the first label of the host.
    /// let subdomain = KeyPart::from_fn("subdomain", |head| {
    ///     let host = head.uri().host()?;
    ///     host.split_once('.').map(|(label, _)| label.to_owned())
    /// });
    /// let per_tenant = Limit::per_minute("per_tenant", 1000).key(tenant);
    /// ```
    pub fn from_fn<F, V>(name: impl Into<String>, f: F) -> Self
    where
        F: Fn(&RequestHead<'_>) -> Option<V> + Send + Sync + 'static,
        V: AsRef<[u8]>,
    {
        let write = move |head: &RequestHead<'_>, key: &mut KeyBuilder| push_values(key, f(head));
        Self::required(Source::Custom(CustomSource {
            name: name.into().into(),
            write: Arc::new(write),
        }))
    }

    /// Makes the part optional: a request without it still gets a key, in which the part is
    /// "absent" (distinct from any value).
    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }

    /// Whether a limit keyed by this part skips requests that lack it.
    pub fn is_required(&self) -> bool {
        self.required
    }
}

impl fmt::Debug for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyPart(")?;
        match &self.source {
            Source::ClientIp => f.write_str("client_ip")?,
            Source::BearerToken => f.write_str("bearer_token")?,
            Source::Header(name) => write!(f, "header {name}")?,
            Source::Query(name) => write!(f, "query {name}")?,
            Source::Extension(ext) => write!(f, "extension {}", ext.type_name)?,
            Source::Route => f.write_str("route")?,
            Source::Method => f.write_str("method")?,
            Source::Custom(custom) => write!(f, "fn {}", custom.name)?,
        }
        if !self.required {
            f.write_str(", optional")?;
        }
        f.write_str(")")
    }
}

impl Source {
    /// Bytes that separate this source's digests from every other source's.
    pub(crate) fn tag(&self) -> Cow<'static, [u8]> {
        match self {
            Source::ClientIp => Cow::Borrowed(b"ip"),
            Source::BearerToken => Cow::Borrowed(b"bearer"),
            Source::Header(name) => Cow::Owned([b"header:", name.as_str().as_bytes()].concat()),
            Source::Query(name) => Cow::Owned([b"query:", name.as_bytes()].concat()),
            Source::Extension(_) => Cow::Borrowed(b"extension"),
            Source::Route => Cow::Borrowed(b"route"),
            Source::Method => Cow::Borrowed(b"method"),
            Source::Custom(custom) => Cow::Owned([b"fn:", custom.name.as_bytes()].concat()),
        }
    }
}

/// A value that identifies a client in a key: what a typed request extension must implement to
/// be a [`KeyPart::extension`].
///
/// Write the value as bytes that are the same in every process and every build (so that
/// instances sharing limits through Redis agree): for example an integer's big-endian bytes, a
/// string's UTF-8. Each [`KeyBuilder::push`] is length-prefixed, so several pushes are
/// unambiguous.
///
/// ```
/// use tollgate::Identifier;
/// use tollgate::KeyBuilder;
///
/// #[derive(Clone)]
/// struct AccountId(u64);
///
/// impl Identifier for AccountId {
///     fn write_identity(&self, key: &mut KeyBuilder) {
///         key.push(&self.0.to_be_bytes());
///     }
/// }
/// ```
pub trait Identifier: Send + Sync + 'static {
    /// Feeds the value's bytes into the key.
    fn write_identity(&self, key: &mut KeyBuilder);
}

macro_rules! identifier_as_bytes {
    ($($t:ty),*) => {$(
        impl Identifier for $t {
            fn write_identity(&self, key: &mut KeyBuilder) {
                let bytes: &[u8] = (**self).as_ref();
                key.push(bytes);
            }
        }
    )*};
}

identifier_as_bytes!(
    String,
    Box<str>,
    std::sync::Arc<str>,
    Vec<u8>,
    Box<[u8]>,
    std::sync::Arc<[u8]>,
    bytes::Bytes
);

macro_rules! identifier_as_int {
    ($($t:ty),*) => {$(
        impl Identifier for $t {
            fn write_identity(&self, key: &mut KeyBuilder) {
                key.push(&self.to_be_bytes());
            }
        }
    )*};
}

identifier_as_int!(u32, u64, u128, i32, i64, i128);

/// The id of the API token a request authenticated with, for an auth layer to insert as a
/// request extension once the token checks out (the `vmarea` preset keys its per-token bucket by
/// it by default).
///
/// ```
/// use tollgate::TokenId;
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(TokenId::from("tok_42"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenId(pub String);

/// The user of an authenticated session, for a session layer to insert as a request extension
/// (the `vast` preset includes it in the identity by default).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionUser(pub String);

impl Identifier for TokenId {
    fn write_identity(&self, key: &mut KeyBuilder) {
        key.push(self.0.as_bytes());
    }
}

impl Identifier for SessionUser {
    fn write_identity(&self, key: &mut KeyBuilder) {
        key.push(self.0.as_bytes());
    }
}

impl From<&str> for TokenId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

impl From<String> for TokenId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

impl From<&str> for SessionUser {
    fn from(user: &str) -> Self {
        Self(user.to_owned())
    }
}

impl From<String> for SessionUser {
    fn from(user: String) -> Self {
        Self(user)
    }
}

/// Hashes a part's values into `key`, as the module documentation says: nothing (`false`) when
/// no value is non-empty; one distinct non-empty value exactly as a lone occurrence of it
/// (allocation-free when there is one); several, as the set of their digests.
pub(crate) fn push_values<V: AsRef<[u8]>>(
    key: &mut KeyBuilder,
    values: impl IntoIterator<Item = V>,
) -> bool {
    let mut values = values.into_iter().filter(|v| !v.as_ref().is_empty());
    let Some(first) = values.next() else {
        return false;
    };
    let Some(second) = values.next() else {
        key.push(first.as_ref());
        return true;
    };
    // Each value's digest as if it came alone, sorted and deduplicated: neither order nor
    // repeats make another bucket, and a request whose copies agree keeps their bucket.
    let digest = |value: &[u8]| {
        let mut alone = key.clone();
        alone.push(value);
        alone.finish().as_u128()
    };
    let mut digests: SmallVec<[u128; 4]> = SmallVec::new();
    digests.push(digest(first.as_ref()));
    digests.push(digest(second.as_ref()));
    digests.extend(values.map(|v| digest(v.as_ref())));
    digests.sort_unstable();
    digests.dedup();
    if digests.len() == 1 {
        key.push(first.as_ref());
        return true;
    }
    // An empty push first: no single value is empty, so no set hashes like a single value.
    key.push(&[]);
    for digest in &digests {
        key.push(&digest.to_le_bytes());
    }
    true
}

/// The tokens of every `Authorization: Bearer <token>` line, in order (scheme
/// case-insensitive, the token trimmed, possibly empty); lines of another scheme are skipped.
pub(crate) fn bearer_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(AUTHORIZATION)
        .iter()
        .filter_map(|value| bearer(value.as_bytes()))
}

/// The token of one `Authorization` value, if its scheme is `Bearer`.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
}

/// The first value of a header, trimmed; `None` when absent or empty.
pub(crate) fn header_value<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h [u8]> {
    let value = headers.get(name)?.as_bytes().trim_ascii();
    (!value.is_empty()).then_some(value)
}

/// Every line of a header, in order, trimmed (possibly empty).
pub(crate) fn header_values<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = &'h [u8]> {
    headers
        .get_all(name)
        .iter()
        .map(|value| value.as_bytes().trim_ascii())
}

/// The percent-decoded values of every `name` parameter of a query string, in order (possibly
/// empty; `?api_key` without `=` is an empty value). Names are compared after decoding too
/// (`api%5Fkey` is `api_key`).
pub(crate) fn query_values<'a>(
    query: &'a str,
    name: &'a str,
) -> impl Iterator<Item = Cow<'a, [u8]>> + 'a {
    query
        .as_bytes()
        .split(|&b| b == b'&')
        .filter_map(move |pair| {
            let (raw_name, raw_value) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => {
                    let (n, v) = pair.split_at(eq);
                    (n, v.get(1..).unwrap_or_default())
                }
                None => (pair, &b""[..]),
            };
            Decoded::new(raw_name)
                .eq(name.bytes())
                .then(|| decode(raw_value))
        })
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XY` a byte. A `%` not
/// followed by two hex digits is kept literally. Borrows when there is nothing to decode.
fn decode(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(raw);
    }
    Cow::Owned(Decoded::new(raw).collect())
}

/// The decoded bytes of a form-encoded string, one at a time (names are compared without
/// allocating).
struct Decoded<'a> {
    raw: &'a [u8],
}

impl<'a> Decoded<'a> {
    fn new(raw: &'a [u8]) -> Self {
        Self { raw }
    }
}

impl Iterator for Decoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.raw.split_first()?;
        self.raw = rest;
        match b {
            b'+' => Some(b' '),
            b'%' => {
                if let [high, low, rest @ ..] = self.raw {
                    if let (Some(high), Some(low)) = (hex_digit(*high), hex_digit(*low)) {
                        self.raw = rest;
                        return Some((high << 4) | low);
                    }
                }
                Some(b'%')
            }
            _ => Some(b),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.raw.len().div_ceil(3), Some(self.raw.len()))
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use tollgate_core::KeySecret;

    /// The first bearer token, as `bearer_tokens` yields it.
    fn first_bearer(h: &HeaderMap) -> Option<&[u8]> {
        bearer_tokens(h).next()
    }

    #[test]
    fn bearer_tokens_are_read() {
        let mut h = HeaderMap::new();
        assert_eq!(first_bearer(&h), None);
        for (raw, want) in [
            (&b"Bearer abc"[..], Some(&b"abc"[..])),
            (b"bearer   abc ", Some(b"abc")),
            (b"BEARER \xff\xfe", Some(b"\xff\xfe")),
            (b"Bearer ", Some(b"")),
            (b"Bearer", None),
            (b"Basic dXNlcjpwdw==", None),
            (b"", None),
        ] {
            h.insert(AUTHORIZATION, HeaderValue::from_bytes(raw).unwrap());
            assert_eq!(first_bearer(&h), want, "{raw:?}");
        }
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer second"));
        h.append(AUTHORIZATION, HeaderValue::from_static("Digest x"));
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer third"));
        assert_eq!(
            bearer_tokens(&h).collect::<Vec<_>>(),
            [&b"second"[..], b"third"]
        );
    }

    #[test]
    fn query_values_are_decoded() {
        let v = |q, n| {
            query_values(q, n)
                .map(Cow::into_owned)
                .collect::<Vec<Vec<u8>>>()
        };
        assert_eq!(v("api_key=abc", "api_key"), [b"abc"]);
        assert_eq!(v("a=1&api_key=a%20b+c", "api_key"), [b"a b c"]);
        assert_eq!(v("api%5Fkey=x", "api_key"), [b"x"]);
        assert_eq!(v("api%5fkey=x", "api_key"), [b"x"]);
        assert_eq!(v("api_key=%zz%4", "api_key"), [b"%zz%4"]);
        assert_eq!(v("api_key=%", "api_key"), [b"%"]);
        assert_eq!(v("api_key=%ff%FE", "api_key"), [[0xff, 0xfe]]);
        assert_eq!(
            v("api_key=first&api_key=second", "api_key"),
            [&b"first"[..], b"second"]
        );
        assert_eq!(
            v("api_key=&api_key=second", "api_key"),
            [&b""[..], b"second"]
        );
        assert_eq!(v("api_key", "api_key"), [b""]);
        assert!(v("other=1", "api_key").is_empty());
        assert!(v("", "api_key").is_empty());
        assert!(v("&&&==&", "api_key").is_empty());
        assert_eq!(v("api_key==x", "api_key"), [b"=x"]);
        assert!(v("api_key2=x&xapi_key=y&api_ke=z", "api_key").is_empty());
    }

    /// The digest `push_values` gives, as `Limiter::part` computes it.
    fn digest<V: AsRef<[u8]>>(values: &[V]) -> Option<tollgate_core::Key> {
        let mut key = KeySecret::DEFAULT.key().part(b"query:api_key");
        push_values(&mut key, values.iter().map(AsRef::as_ref)).then(|| key.finish())
    }

    /// A lone value's digest as it was before repeats had a reading: existing buckets keep
    /// their keys.
    fn lone(value: &[u8]) -> Option<tollgate_core::Key> {
        let mut key = KeySecret::DEFAULT.key().part(b"query:api_key");
        key.push(value);
        Some(key.finish())
    }

    #[test]
    fn repeats_are_one_identity() {
        let none: [&[u8]; 0] = [];
        assert_eq!(digest(&none), None);
        assert_eq!(digest(&[b""]), None);
        assert_eq!(digest(&[&b""[..], b""]), None);
        assert_eq!(digest(&[b"X"]), lone(b"X"));
        // `?api_key=&api_key=X` is X, not absent: an empty copy names nobody.
        assert_eq!(digest(&[&b""[..], b"X"]), lone(b"X"));
        assert_eq!(digest(&[&b"X"[..], b"", b"X"]), lone(b"X"));
        // Several distinct values: one identity, whatever their order and repeats...
        let set = digest(&[&b"R"[..], b"V"]);
        assert_eq!(digest(&[&b"V"[..], b"R", b"V", b""]), set);
        // ...that is neither value's, and not the joined bytes of any.
        for other in [&b"R"[..], b"V", b"RV", b"R,V", b"R&V", b""] {
            assert_ne!(set, lone(other), "{other:?}");
        }
        assert_ne!(set, digest(&[&b"R"[..], b"W"]));
        assert_ne!(set, digest(&[&b"R"[..], b"V", b"W"]));
    }

    /// What `Limiter::part` reads from a request's query, through the same helpers.
    fn query_digest(query: &str) -> Option<tollgate_core::Key> {
        let mut key = KeySecret::DEFAULT.key().part(b"query:api_key");
        push_values(&mut key, query_values(query, "api_key")).then(|| key.finish())
    }

    #[test]
    fn duplicated_query_parameters_are_never_absent() {
        // Finding 3: the empty first copy used to make the part absent (the limit skipped).
        assert_eq!(query_digest("api_key=&api_key=X"), lone(b"X"));
        assert_eq!(query_digest("api%5Fkey=&api_key=X"), lone(b"X"));
        assert_eq!(query_digest("api_key&api_key=%58"), lone(b"X"));
        // The value an app reading the last copy authenticates is part of the identity.
        assert_ne!(query_digest("api_key=R&api_key=V"), lone(b"R"));
        assert_ne!(
            query_digest("api_key=R&api_key=V"),
            query_digest("api_key=R&api_key=W")
        );
        assert_eq!(query_digest("api_key=&api_key="), None);
        assert_eq!(query_digest("api_key=X"), lone(b"X"));
    }

    #[test]
    fn duplicated_header_lines_are_never_absent() {
        let name = HeaderName::from_static("x-api-key");
        let read = |lines: &[&str]| {
            let mut h = HeaderMap::new();
            for line in lines {
                h.append(&name, HeaderValue::from_str(line).unwrap());
            }
            let mut key = KeySecret::DEFAULT.key().part(b"query:api_key");
            push_values(&mut key, header_values(&h, &name)).then(|| key.finish())
        };
        assert_eq!(read(&["", "X"]), lone(b"X"));
        assert_eq!(read(&[" X ", "X"]), lone(b"X"));
        assert_eq!(read(&[" "]), None);
        assert_ne!(read(&["R", "X"]), lone(b"R"));
        let bearer = |lines: &[&str]| {
            let mut h = HeaderMap::new();
            for line in lines {
                h.append(AUTHORIZATION, HeaderValue::from_str(line).unwrap());
            }
            let mut key = KeySecret::DEFAULT.key().part(b"query:api_key");
            push_values(&mut key, bearer_tokens(&h)).then(|| key.finish())
        };
        assert_eq!(bearer(&["Bearer ", "Bearer X"]), lone(b"X"));
        assert_eq!(bearer(&["Basic dXNlcjpwdw==", "Bearer X"]), lone(b"X"));
        assert_eq!(bearer(&["Basic dXNlcjpwdw=="]), None);
    }

    #[test]
    fn decode_borrows_when_it_can() {
        assert!(matches!(decode(b"plain"), Cow::Borrowed(_)));
        assert!(matches!(decode(b"%"), Cow::Owned(ref v) if v == b"%"));
        assert!(matches!(decode(b"a+%4"), Cow::Owned(ref v) if v == b"a %4"));
        assert!(matches!(decode(b"a%41"), Cow::Owned(ref v) if v == b"aA"));
    }

    #[test]
    fn part_equality_follows_the_source() {
        assert_eq!(
            KeyPart::extension::<TokenId>(),
            KeyPart::extension::<TokenId>()
        );
        assert_ne!(
            KeyPart::extension::<TokenId>(),
            KeyPart::extension::<SessionUser>()
        );
        assert_ne!(KeyPart::route(), KeyPart::route().optional());
        assert_eq!(
            format!("{:?}", KeyPart::query("api_key").optional()),
            "KeyPart(query api_key, optional)"
        );
        let tenant = KeyPart::from_fn("tenant", |_| Some("secret"));
        assert_eq!(tenant, tenant.clone());
        assert_ne!(tenant, KeyPart::from_fn("tenant", |_| Some("secret")));
        assert_eq!(format!("{tenant:?}"), "KeyPart(fn tenant)");
    }
}

/// Properties of everything here that reads request bytes. `fuzz_` in every name, so that
/// `PROPTEST_CASES=200000 cargo test -p tollgate --lib fuzz_` runs them all for long.
#[cfg(test)]
mod fuzz {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;
    use tollgate_core::KeySecret;

    /// Form-encodes `bytes`, choosing per byte (from `how`) among the spellings that decode to
    /// it: itself when it is safe, `%XX` in either case, `+` for a space.
    fn encode(bytes: &[u8], how: &[u8]) -> String {
        let mut out = String::new();
        for (i, &b) in bytes.iter().enumerate() {
            let pick = how.get(i % how.len().max(1)).copied().unwrap_or(0);
            let safe = b.is_ascii_alphanumeric() || b"-._~".contains(&b);
            match (pick % 3, b) {
                (0, b' ') => out.push('+'),
                (0, _) if safe => out.push(char::from(b)),
                (1, _) => out.push_str(&format!("%{b:02x}")),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }

    /// Bytes a header value may hold.
    fn header_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                3 => 0x20u8..=0x7e,
                1 => 0x80u8..=0xff,
                1 => prop::sample::select(b" \t,;=\"Bb".to_vec()),
            ],
            0..max,
        )
    }

    fn digest<V: AsRef<[u8]>>(values: impl IntoIterator<Item = V>) -> Option<tollgate_core::Key> {
        let mut key = KeySecret::DEFAULT.key().part(b"tag");
        push_values(&mut key, values).then(|| key.finish())
    }

    proptest! {
        #[test]
        fn fuzz_decode_round_trips(value in prop::collection::vec(any::<u8>(), 0..64), how in prop::collection::vec(any::<u8>(), 1..8)) {
            let encoded = encode(&value, &how);
            let decoded = decode(encoded.as_bytes());
            prop_assert_eq!(decoded.as_ref(), &value[..]);
        }

        #[test]
        fn fuzz_decode_never_panics(raw in prop::collection::vec(any::<u8>(), 0..64)) {
            let decoded = decode(&raw);
            // Decoding never grows a value, and what has no escape is left alone.
            prop_assert!(decoded.len() <= raw.len());
            if !raw.iter().any(|&b| b == b'%' || b == b'+') {
                prop_assert_eq!(decoded.as_ref(), &raw[..]);
            }
        }

        /// Whatever surrounds it and however it is encoded, a parameter is found, decoded.
        #[test]
        fn fuzz_query_values_find_every_copy(
            name in "[a-z_]{1,8}",
            values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 1..4),
            others in prop::collection::vec(("[a-z]{1,8}", "[ -~]{0,8}"), 0..4),
            how in prop::collection::vec(any::<u8>(), 1..8),
        ) {
            let mut pairs: Vec<String> = others
                .iter()
                .filter(|(n, _)| *n != name)
                .map(|(n, v)| format!("{n}={}", encode(v.as_bytes(), &how)))
                .collect();
            for value in &values {
                pairs.push(format!("{}={}", encode(name.as_bytes(), &how), encode(value, &how)));
            }
            let query = pairs.join("&");
            let found: Vec<Vec<u8>> = query_values(&query, &name).map(Cow::into_owned).collect();
            prop_assert_eq!(&found, &values);
            let non_empty: Vec<&Vec<u8>> = values.iter().filter(|v| !v.is_empty()).collect();
            prop_assert_eq!(digest(query_values(&query, &name)).is_some(), !non_empty.is_empty());
        }

        #[test]
        fn fuzz_query_values_never_panic(query in "\\PC{0,64}|[a-z_=&%+0-9A-F]{0,64}", name in "\\PC{0,8}") {
            let _ = digest(query_values(&query, &name));
        }

        /// Any `Authorization` and `x-api-key` lines: no panic, and the part is present exactly
        /// when some line has a non-empty value.
        #[test]
        fn fuzz_header_parts_never_panic(lines in prop::collection::vec(header_bytes(48), 0..5)) {
            let name = HeaderName::from_static("x-api-key");
            let mut h = HeaderMap::new();
            for line in &lines {
                let value = HeaderValue::from_bytes(line).unwrap();
                h.append(AUTHORIZATION, value.clone());
                h.append(&name, value);
            }
            let any_value = lines.iter().any(|l| !l.trim_ascii().is_empty());
            prop_assert_eq!(digest(header_values(&h, &name)).is_some(), any_value);
            prop_assert_eq!(header_value(&h, &name).is_some(), lines.first().is_some_and(|l| !l.trim_ascii().is_empty()));
            let tokens: Vec<&[u8]> = bearer_tokens(&h).collect();
            for token in &tokens {
                prop_assert_eq!(token.trim_ascii(), *token);
            }
            prop_assert_eq!(digest(tokens.iter()).is_some(), tokens.iter().any(|t| !t.is_empty()));
        }

        /// Order, repeats and empty copies never change a part's identity; one distinct value
        /// is that value's own.
        #[test]
        fn fuzz_repeats_are_a_set(
            values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6), 0..6),
            seed in any::<prop::sample::Index>(),
        ) {
            let mut shuffled = values.clone();
            shuffled.rotate_left(seed.index(values.len().max(1)).min(values.len()));
            shuffled.extend(values.iter().take(2).cloned());
            shuffled.push(Vec::new());
            prop_assert_eq!(digest(&values), digest(&shuffled));
            let mut distinct: Vec<&Vec<u8>> = values.iter().filter(|v| !v.is_empty()).collect();
            distinct.sort();
            distinct.dedup();
            match distinct.as_slice() {
                [] => prop_assert_eq!(digest(&values), None),
                [one] => prop_assert_eq!(digest(&values), digest([one])),
                [first, ..] => prop_assert_ne!(digest(&values), digest([first])),
            }
        }
    }

    /// A 100 KB header, bearer token or query value is one value like any other. Eight cases,
    /// whatever `PROPTEST_CASES` says (a runner of its own): each moves 100 KB several times, and
    /// more cases would show nothing new.
    #[test]
    fn fuzz_a_100_kb_value_is_a_key_part() {
        let config = ProptestConfig {
            cases: 8,
            ..ProptestConfig::default()
        };
        let strategy = (0x21u8..=0x7e, prop::collection::vec(any::<u8>(), 1..8));
        let mut runner = proptest::test_runner::TestRunner::new(config);
        let result = runner.run(&strategy, |(byte, how)| {
            let big = vec![byte; 100 * 1024];
            let mut h = HeaderMap::new();
            let name = HeaderName::from_static("x-api-key");
            h.append(&name, HeaderValue::from_bytes(&big).unwrap());
            prop_assert_eq!(header_values(&h, &name).collect::<Vec<_>>(), [&big[..]]);
            prop_assert_eq!(digest(header_values(&h, &name)), digest([&big]));
            let mut bearer = b"Bearer ".to_vec();
            bearer.extend_from_slice(&big);
            h.append(AUTHORIZATION, HeaderValue::from_bytes(&bearer).unwrap());
            prop_assert_eq!(bearer_tokens(&h).collect::<Vec<_>>(), [&big[..]]);
            let query = format!("api_key=&api_key={}", encode(&big, &how));
            prop_assert_eq!(digest(query_values(&query, "api_key")), digest([&big]));
            Ok(())
        });
        if let Err(failure) = result {
            panic!("{failure}");
        }
    }

    /// `Decoded`'s size hint holds at every step: at least a third of the bytes left (each
    /// `%XX` is one byte), at most all of them.
    #[test]
    fn a_decoded_names_size_hint_bounds_what_is_left() {
        for raw in ["", "a", "%41", "a+b%2", "%zz%41%", "name=%E2%82%AC"] {
            let mut decoded = Decoded::new(raw.as_bytes());
            loop {
                let left = Decoded::new(decoded.raw).count();
                let (lower, upper) = decoded.size_hint();
                assert!(lower <= left && upper.is_some_and(|u| left <= u), "{raw:?}");
                if decoded.next().is_none() {
                    break;
                }
            }
        }
    }
}
