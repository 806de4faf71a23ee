//! What identifies a request to a rule: the [`KeyPart`]s a limit's key is made of.
//!
//! Each part is read from the request once, hashed at once with the layer's
//! [`KeySecret`](tollgate_core::KeySecret) into a 128-bit digest, and forgotten: a raw token, API
//! key or address never reaches a store key or a log line, and a 100 KB header costs no more
//! state than a short one. A limit's key is the digest of its parts' digests, in order.
//!
//! A part is *required* by default: a limit whose key needs a part the request lacks does not
//! apply to that request (the per-token bucket skips unauthenticated requests). An
//! [`optional`](KeyPart::optional) part that is absent still yields a key, distinct from every
//! present value (Vast's identity: "a request lacking a part simply has that part empty").
//!
//! Values count as absent when they are empty: an empty header, `Authorization: Bearer ` with
//! no token, `?api_key=`.

use std::any::TypeId;
use std::borrow::Cow;
use std::fmt;

use http::header::AUTHORIZATION;
use http::{Extensions, HeaderMap, HeaderName};
use smallvec::SmallVec;
use tollgate_core::KeyBuilder;

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
/// ];
/// assert!(parts[0].is_required() && !parts[1].is_required());
/// ```
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
}

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

    /// The token of `Authorization: Bearer <token>` (scheme case-insensitive). Any bytes, not
    /// only UTF-8.
    pub fn bearer_token() -> Self {
        Self::required(Source::BearerToken)
    }

    /// The first value of a header, such as `x-api-key`.
    pub fn header(name: HeaderName) -> Self {
        Self::required(Source::Header(name))
    }

    /// A query parameter, such as `api_key`, percent-decoded (`+` is a space). Broken escapes
    /// are kept as they are. The first occurrence counts.
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
/// use tollgate::core::KeyBuilder;
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

/// The token of `Authorization: Bearer <token>`; `None` for another scheme or an empty token.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The first non-empty value of a header.
pub(crate) fn header_value<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h [u8]> {
    let value = headers.get(name)?.as_bytes().trim_ascii();
    (!value.is_empty()).then_some(value)
}

/// The percent-decoded value of the first `name` parameter of a query string; `None` when
/// absent or empty. Names are compared after decoding too (`api%5Fkey` is `api_key`).
pub(crate) fn query_value<'q>(query: &'q str, name: &str) -> Option<Cow<'q, [u8]>> {
    query.as_bytes().split(|&b| b == b'&').find_map(|pair| {
        let (raw_name, raw_value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => {
                let (n, v) = pair.split_at(eq);
                (n, v.get(1..).unwrap_or_default())
            }
            None => (pair, &b""[..]),
        };
        if decode(raw_name).as_ref() != name.as_bytes() {
            return None;
        }
        let value = decode(raw_value);
        // The first occurrence counts, even when it is empty.
        Some((!value.is_empty()).then_some(value))
    })?
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XY` a byte. A `%` not
/// followed by two hex digits is kept literally. Borrows when there is nothing to decode.
fn decode(raw: &[u8]) -> Cow<'_, [u8]> {
    if !raw.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(raw);
    }
    let mut out: SmallVec<[u8; 64]> = SmallVec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = raw
                    .get(i + 1)
                    .and_then(|&h| hex_digit(h))
                    .zip(raw.get(i + 2).and_then(|&l| hex_digit(l)));
                if let Some((high, low)) = hex {
                    out.push((high << 4) | low);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            _ => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out.into_vec())
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

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        for (raw, want) in [
            (&b"Bearer abc"[..], Some(&b"abc"[..])),
            (b"bearer   abc ", Some(b"abc")),
            (b"BEARER \xff\xfe", Some(b"\xff\xfe")),
            (b"Bearer ", None),
            (b"Bearer", None),
            (b"Basic dXNlcjpwdw==", None),
            (b"", None),
        ] {
            h.insert(AUTHORIZATION, HeaderValue::from_bytes(raw).unwrap());
            assert_eq!(bearer_token(&h), want, "{raw:?}");
        }
    }

    #[test]
    fn query_values_are_decoded() {
        let v = |q, n| query_value(q, n).map(|c| c.into_owned());
        assert_eq!(v("api_key=abc", "api_key"), Some(b"abc".to_vec()));
        assert_eq!(v("a=1&api_key=a%20b+c", "api_key"), Some(b"a b c".to_vec()));
        assert_eq!(v("api%5Fkey=x", "api_key"), Some(b"x".to_vec()));
        assert_eq!(v("api_key=%zz%4", "api_key"), Some(b"%zz%4".to_vec()));
        assert_eq!(v("api_key=%", "api_key"), Some(b"%".to_vec()));
        assert_eq!(v("api_key=%ff%FE", "api_key"), Some(vec![0xff, 0xfe]));
        assert_eq!(
            v("api_key=first&api_key=second", "api_key"),
            Some(b"first".to_vec())
        );
        assert_eq!(v("api_key=&api_key=second", "api_key"), None);
        assert_eq!(v("api_key", "api_key"), None);
        assert_eq!(v("other=1", "api_key"), None);
        assert_eq!(v("", "api_key"), None);
        assert_eq!(v("&&&==&", "api_key"), None);
        assert_eq!(v("api_key==x", "api_key"), Some(b"=x".to_vec()));
    }

    #[test]
    fn decode_borrows_when_it_can() {
        assert!(matches!(decode(b"plain"), Cow::Borrowed(_)));
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
    }
}
