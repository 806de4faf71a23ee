//! What a response says about waiting: `Retry-After`, the IETF `RateLimit` field (draft-11, and
//! the older `RateLimit-Remaining`/`RateLimit-Reset`), `X-RateLimit-Remaining`/`Reset`.
//!
//! Every reader is total: a value it cannot read is no signal, a number too large for a
//! [`Duration`] is [`Duration::MAX`] (a wait beyond any cap, never a short one), a date in the
//! past is a zero wait. Nothing here allocates per header byte or panics.

use std::time::{Duration, SystemTime};

use http::header::{DATE, RETRY_AFTER};
use http::{HeaderMap, HeaderName};

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// An `X-RateLimit-Reset` at least this large is a Unix time, not a delta: as a delta it would
/// be over 31 years, as a time it is after 2001-09-09.
const EPOCH_THRESHOLD_SECS: u64 = 1_000_000_000;

/// What one response said about waiting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Signals {
    /// `Retry-After`: how long to wait before retrying this request.
    pub(crate) retry_after: Option<Duration>,
    /// How long until the longest of the limits reported as exhausted (remaining 0) resets.
    pub(crate) exhausted: Option<Duration>,
    /// A reset reported without its remaining count (`X-RateLimit-Reset` alone): on a 429 it
    /// is the only word there is.
    pub(crate) bare_reset: Option<Duration>,
}

impl Signals {
    /// Reads a response's headers. `now` is the local wall clock, used for HTTP-dates and Unix
    /// times only when the response has no readable `Date` (the server's own clock is what its
    /// times are relative to).
    pub(crate) fn read(headers: &HeaderMap, now: SystemTime) -> Self {
        let now = headers
            .get(DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .unwrap_or(now);
        let retry_after = largest(headers, &RETRY_AFTER, |v| retry_after(v, now));

        let mut exhausted = largest(headers, &RATELIMIT, ietf_exhausted);
        let mut bare_reset = None;
        for (remaining, reset, epoch) in [
            (RATELIMIT_REMAINING, RATELIMIT_RESET, false),
            (X_RATELIMIT_REMAINING, X_RATELIMIT_RESET, true),
        ] {
            let reset = largest(headers, &reset, |v| reset_value(v, epoch, now));
            let Some(reset) = reset else { continue };
            match smallest_remaining(headers, &remaining) {
                Some(Duration::ZERO) => exhausted = exhausted.max(Some(reset)),
                Some(_) => {}
                None => bare_reset = bare_reset.max(Some(reset)),
            }
        }
        Self {
            retry_after,
            exhausted,
            bare_reset,
        }
    }

    /// How long the server asked this request to wait before trying again: `Retry-After`
    /// first (it is the answer to this request), else the reset of an exhausted limit, else a
    /// reset given without a remaining count.
    pub(crate) fn wait(&self) -> Option<Duration> {
        self.retry_after.or(self.exhausted).or(self.bare_reset)
    }
}

/// The largest readable value among the field's lines: when a server repeats a field, waiting
/// the longest of its words is the one reading that never waits too little.
fn largest(
    headers: &HeaderMap,
    name: &HeaderName,
    read: impl Fn(&[u8]) -> Option<Duration>,
) -> Option<Duration> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| read(v.as_bytes()))
        .max()
}

/// The smallest readable remaining count among the field's lines (as a number of seconds, the
/// unit [`decimal`] reads in; only whether it is zero matters).
fn smallest_remaining(headers: &HeaderMap, name: &HeaderName) -> Option<Duration> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| decimal(trim(v.as_bytes())))
        .min()
}

/// `Retry-After`: delay-seconds (a fraction is accepted and kept) or an HTTP-date.
fn retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let value = trim(value);
    if let Some(wait) = decimal(value) {
        return Some(wait);
    }
    let date = httpdate::parse_http_date(std::str::from_utf8(value).ok()?).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A reset field: delta-seconds, or (for `X-RateLimit-Reset`, where both are in use) a Unix
/// time when the value is too large to be a delta.
fn reset_value(value: &[u8], epoch_allowed: bool, now: SystemTime) -> Option<Duration> {
    let secs = decimal(trim(value))?;
    if !epoch_allowed || secs < Duration::from_secs(EPOCH_THRESHOLD_SECS) {
        return Some(secs);
    }
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    Some(secs.saturating_sub(since_epoch))
}

/// The IETF draft-11 `RateLimit` field, a Structured Field List such as
/// `"burst";r=0;t=30, "daily";r=900;t=86000`: the longest `t` among the items whose `r` is 0.
fn ietf_exhausted(value: &[u8]) -> Option<Duration> {
    split_outside_quotes(value, b',')
        .filter_map(|item| {
            let mut remaining = None;
            let mut reset = None;
            // The first piece is the item's name (a string or token): skipped.
            for param in split_outside_quotes(item, b';').skip(1) {
                let param = trim(param);
                let Some(eq) = param.iter().position(|&b| b == b'=') else {
                    continue;
                };
                let value = decimal(trim(&param[eq + 1..]));
                match trim(&param[..eq]) {
                    b"r" => remaining = value,
                    b"t" => reset = value,
                    _ => {}
                }
            }
            match remaining {
                Some(Duration::ZERO) => reset,
                _ => None,
            }
        })
        .max()
}

/// Splits on `sep` where it is not inside a double-quoted string (with `\` escapes).
fn split_outside_quotes(value: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let value = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, &b) in value.iter().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                _ if b == sep && !quoted => {
                    rest = Some(&value[i + 1..]);
                    return Some(&value[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(value)
    })
}

fn trim(value: &[u8]) -> &[u8] {
    value.trim_ascii()
}

/// A non-negative decimal number (`5`, `1.5`) as that many seconds, rounded up to the
/// nanosecond; too many digits saturate. Anything else (`-1`, `+5`, `5s`, `1e3`, `.5`, empty)
/// is not one.
fn decimal(value: &[u8]) -> Option<Duration> {
    let (whole, fraction) = match value.iter().position(|&b| b == b'.') {
        Some(dot) => (&value[..dot], Some(&value[dot + 1..])),
        None => (value, None),
    };
    let digits = |part: &[u8]| !part.is_empty() && part.iter().all(u8::is_ascii_digit);
    if !digits(whole) || !fraction.is_none_or(digits) {
        return None;
    }
    // Too many digits for a u64 is still a (very long) wait, not garbage.
    let Some(secs) = whole.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    }) else {
        return Some(Duration::MAX);
    };
    let fraction = fraction.unwrap_or_default();
    let mut nanos = 0u32;
    for (i, &d) in fraction.iter().take(9).enumerate() {
        nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
    }
    let wait = Duration::new(secs, nanos);
    if fraction.iter().skip(9).any(|&d| d != b'0') {
        return Some(wait.saturating_add(Duration::from_nanos(1)));
    }
    Some(wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn read(pairs: &[(&str, &[u8])]) -> Signals {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        let now = SystemTime::UNIX_EPOCH + S(1_700_000_000);
        Signals::read(&headers, now)
    }

    #[test]
    fn retry_after_delta_seconds_and_fractions() {
        assert_eq!(read(&[("retry-after", b"5")]).wait(), Some(S(5)));
        assert_eq!(read(&[("retry-after", b" 0 ")]).wait(), Some(S(0)));
        assert_eq!(
            read(&[("retry-after", b"1.25")]).wait(),
            Some(Duration::from_millis(1250))
        );
        assert_eq!(
            read(&[("retry-after", b"0.0000000001")]).wait(),
            Some(Duration::from_nanos(1)),
            "rounded up, never down"
        );
    }

    #[test]
    fn retry_after_http_date_against_the_servers_date() {
        // Date says 12:00:00, Retry-After says 12:00:42: 42 s whatever the local clock.
        let s = read(&[
            ("date", b"Tue, 14 Nov 2023 22:13:20 GMT"),
            ("retry-after", b"Tue, 14 Nov 2023 22:14:02 GMT"),
        ]);
        assert_eq!(s.wait(), Some(S(42)));
        // Without Date, the local clock (here 2023-11-14T22:13:20Z).
        let s = read(&[("retry-after", b"Tue, 14 Nov 2023 22:13:30 GMT")]);
        assert_eq!(s.wait(), Some(S(10)));
        // In the past: retry now (the policy's delay still applies on top).
        let s = read(&[("retry-after", b"Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert_eq!(s.wait(), Some(S(0)));
        // The obsolete forms RFC 9110 says to accept.
        let s = read(&[("retry-after", b"Tuesday, 14-Nov-23 22:13:25 GMT")]);
        assert_eq!(s.wait(), Some(S(5)));
    }

    #[test]
    fn garbage_is_no_signal_and_huge_is_huge() {
        for bad in [
            &b"-1"[..],
            b"+5",
            b"5s",
            b"1e3",
            b"",
            b"NaN",
            b"inf",
            b".5",
            b"5.",
            b"1.2.3",
            b"soon",
            b"\xff\xfe",
            b"Tue, 31 Feb 2023 25:61:61 GMT",
        ] {
            assert_eq!(read(&[("retry-after", bad)]).wait(), None, "{bad:?}");
        }
        assert_eq!(
            read(&[("retry-after", b"99999999999")]).wait(),
            Some(S(99_999_999_999))
        );
        let digits = vec![b'9'; 100_000];
        assert_eq!(
            read(&[("retry-after", &digits)]).wait(),
            Some(Duration::MAX)
        );
        let mut long_fraction = digits.clone();
        long_fraction.extend_from_slice(b".5");
        assert_eq!(
            read(&[("retry-after", &long_fraction)]).wait(),
            Some(Duration::MAX)
        );
    }

    #[test]
    fn a_repeated_field_means_its_longest_wait() {
        let s = read(&[
            ("retry-after", b"2"),
            ("retry-after", b"7"),
            ("retry-after", b"x"),
        ]);
        assert_eq!(s.wait(), Some(S(7)));
    }

    #[test]
    fn ietf_draft_11_exhausted_items_only() {
        let s = read(&[("ratelimit", br#""burst";r=0;t=30, "daily";r=900;t=86000"#)]);
        assert_eq!(s.exhausted, Some(S(30)));
        assert_eq!(s.wait(), Some(S(30)));
        let s = read(&[("ratelimit", br#""default";r=0;t=5"#)]);
        assert_eq!(s.wait(), Some(S(5)));
        // Several exhausted: the longest.
        let s = read(&[("ratelimit", br#""a";r=0;t=5, b;t=50;r=0"#)]);
        assert_eq!(s.wait(), Some(S(50)));
        // Quoted names with separators in them.
        let s = read(&[("ratelimit", br#""a,b;c\"d";r=0;t=9"#)]);
        assert_eq!(s.wait(), Some(S(9)));
        for bad in [
            &br#""a";r=1;t=5"#[..],
            br#""a";r=0"#,
            br#""a";r=0;t=-5"#,
            br#""a";r=-0;t=5"#,
            b"r=0;t=5",
            b";;;,,,\"",
            b"",
        ] {
            assert_eq!(read(&[("ratelimit", bad)]).wait(), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_takes_precedence() {
        let s = read(&[("retry-after", b"2"), ("ratelimit", br#""a";r=0;t=30"#)]);
        assert_eq!(s.wait(), Some(S(2)));
        assert_eq!(s.exhausted, Some(S(30)));
    }

    #[test]
    fn older_ratelimit_fields_are_deltas() {
        let s = read(&[("ratelimit-remaining", b"0"), ("ratelimit-reset", b"12")]);
        assert_eq!(s.exhausted, Some(S(12)));
        // A reset of RateLimit-Reset is always a delta, even a large one.
        let s = read(&[
            ("ratelimit-remaining", b"0"),
            ("ratelimit-reset", b"1700000100"),
        ]);
        assert_eq!(s.exhausted, Some(S(1_700_000_100)));
    }

    #[test]
    fn x_ratelimit_reset_delta_or_epoch() {
        let delta = read(&[
            ("x-ratelimit-remaining", b"0"),
            ("x-ratelimit-reset", b"42"),
        ]);
        assert_eq!(delta.exhausted, Some(S(42)));
        // Unix time 100 s after "now" (the local clock: no Date).
        let epoch = read(&[
            ("x-ratelimit-remaining", b"0"),
            ("x-ratelimit-reset", b"1700000100"),
        ]);
        assert_eq!(epoch.exhausted, Some(S(100)));
        // Against the server's Date (1_700_000_000 + 50), not the local clock.
        let dated = read(&[
            ("date", b"Tue, 14 Nov 2023 22:14:10 GMT"),
            ("x-ratelimit-remaining", b"0"),
            ("x-ratelimit-reset", b"1700000100"),
        ]);
        assert_eq!(dated.exhausted, Some(S(50)));
        // A Unix time in the past: the window has reset.
        let past = read(&[
            ("x-ratelimit-remaining", b"0"),
            ("x-ratelimit-reset", b"1600000000"),
        ]);
        assert_eq!(past.exhausted, Some(S(0)));
        // Year 5138: a wait beyond any cap.
        let far = read(&[
            ("x-ratelimit-remaining", b"0"),
            ("x-ratelimit-reset", b"99999999999"),
        ]);
        assert_eq!(far.exhausted, Some(S(99_999_999_999 - 1_700_000_000)));
    }

    #[test]
    fn remaining_decides_what_a_reset_means() {
        let left = read(&[
            ("x-ratelimit-remaining", b"3"),
            ("x-ratelimit-reset", b"42"),
        ]);
        assert_eq!(left, Signals::default());
        let bare = read(&[("x-ratelimit-reset", b"42")]);
        assert_eq!(bare.exhausted, None);
        assert_eq!(bare.wait(), Some(S(42)));
        let garbage_reset = read(&[
            ("x-ratelimit-remaining", b"0"),
            ("x-ratelimit-reset", b"-1"),
        ]);
        assert_eq!(garbage_reset.wait(), None);
    }
}
