//! Which requests are safe to send twice, and the `Idempotency-Key` that makes a write so.

use http::{HeaderName, HeaderValue, Method, Request};

/// `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Whether sending this request twice is safe: an idempotent method (RFC 9110 §9.2.2: GET,
/// HEAD, OPTIONS, TRACE, PUT, DELETE), or any method with an `Idempotency-Key`, which tells the
/// server to apply it once.
pub(crate) fn safe_to_repeat<B>(request: &Request<B>) -> bool {
    is_idempotent(request.method()) || request.headers().contains_key(IDEMPOTENCY_KEY)
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Gives a non-idempotent request without an `Idempotency-Key` a fresh one, so that its
/// retries are safe.
pub(crate) fn add_key<B>(request: &mut Request<B>) {
    if !safe_to_repeat(request) {
        request.headers_mut().insert(IDEMPOTENCY_KEY, generate());
    }
}

/// A random (version 4) UUID as a quoted sf-string, the form the draft gives:
/// `"8e03978e-40d5-43e8-bc93-6894a57f9324"`. Unique, not secret: a server keys it per client.
fn generate() -> HeaderValue {
    let bits = (u128::from(fastrand::u64(..)) << 64 | u128::from(fastrand::u64(..)))
        & !(0xf000 << 64 | 0xc000 << 48)
        | (0x4000 << 64 | 0x8000 << 48);
    let hex = format!("{bits:032x}");
    let uuid = format!(
        "\"{}-{}-{}-{}-{}\"",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    HeaderValue::try_from(uuid).unwrap_or(HeaderValue::from_static("\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method) -> Request<()> {
        Request::builder().method(method).body(()).unwrap()
    }

    #[test]
    fn idempotent_methods_or_a_key() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(safe_to_repeat(&request(m)));
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!safe_to_repeat(&request(m.clone())), "{m}");
            let mut keyed = request(m);
            keyed
                .headers_mut()
                .insert(IDEMPOTENCY_KEY, HeaderValue::from_static("k1"));
            assert!(safe_to_repeat(&keyed));
        }
    }

    #[test]
    fn generated_keys_are_v4_uuids_and_differ() {
        let mut post = request(Method::POST);
        add_key(&mut post);
        let key = post.headers()[IDEMPOTENCY_KEY].to_str().unwrap().to_owned();
        assert_eq!(key.len(), 38, "{key}");
        let uuid = key.trim_matches('"');
        let groups: Vec<_> = uuid.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert_eq!(&uuid[14..15], "4", "version 4: {uuid}");
        assert!("89ab".contains(&uuid[19..20]), "variant 10: {uuid}");
        // A key already there is kept; idempotent methods get none.
        add_key(&mut post);
        assert_eq!(post.headers()[IDEMPOTENCY_KEY], key.as_str());
        let mut get = request(Method::GET);
        add_key(&mut get);
        assert!(!get.headers().contains_key(IDEMPOTENCY_KEY));
        let keys: std::collections::HashSet<_> = (0..1000).map(|_| generate()).collect();
        assert_eq!(keys.len(), 1000);
    }
}
