//! Header rendering: the rate-limit fields every response carries, kept as figures until the
//! response is written.
//!
//! Options ([`HeaderStyle`], [`ResetFormat`], `Access-Control-Expose-Headers`) are fixed when the
//! layer is built; header names and static values are precomputed, numbers below 10,000 are
//! slices of one static table, each limit's own `X-RateLimit-Limit` is rendered once, and larger
//! figures that repeat are kept per thread: the common path formats nothing, and a large figure
//! that changes on every request (a fixed window's `X-RateLimit-Remaining` counting down from a
//! large limit) is cut from a per-thread block of digits, not allocated on its own.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::thread::LocalKey;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use http::header::{ACCESS_CONTROL_EXPOSE_HEADERS, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;
use tollgate_core::{Decision, Rule};

/// `X-RateLimit-Limit`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-11).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers-11).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Which rate-limit fields responses carry. `Retry-After` is sent on every 429 whatever the
/// style: it is the standard (RFC 9110) way to say when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderStyle {
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (default): what most
    /// APIs send and most clients read.
    #[default]
    XRateLimit,
    /// The IETF draft-11 fields `RateLimit-Policy` and `RateLimit`, listing every applicable
    /// policy: `RateLimit-Policy: "per_token";q=600;w=60` and
    /// `RateLimit: "per_token";r=599;t=42`.
    Ietf,
    /// Both of the above.
    Both,
    /// Neither: clients learn nothing about the limits but `Retry-After` on a 429.
    Hidden,
}

impl HeaderStyle {
    fn x_ratelimit(self) -> bool {
        matches!(self, HeaderStyle::XRateLimit | HeaderStyle::Both)
    }

    fn ietf(self) -> bool {
        matches!(self, HeaderStyle::Ietf | HeaderStyle::Both)
    }
}

/// How `X-RateLimit-Reset` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResetFormat {
    /// Seconds until the window resets, rounded up (default).
    #[default]
    DeltaSeconds,
    /// The Unix time (seconds, rounded up) at which the window resets, from the system clock.
    UnixTime,
}

/// The rate-limit fields to add to one response, kept as figures until written.
#[derive(Debug, Default)]
pub(crate) struct RateLimitHeaders {
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    figures: Option<Figures>,
    retry_after: Option<u64>,
    /// `RateLimit-Policy` and `RateLimit`.
    ietf: Option<Box<[HeaderValue; 2]>>,
    /// `Access-Control-Expose-Headers`.
    expose: Option<HeaderValue>,
}

impl RateLimitHeaders {
    /// Writes the fields into a response. Rate-limit fields the response already has (from a
    /// custom denial responder, or an inner limiter) are left alone;
    /// `Access-Control-Expose-Headers` is appended to whatever a CORS layer set.
    pub(crate) fn apply(self, target: &mut HeaderMap) {
        let mut set = |name: HeaderName, value: HeaderValue| {
            if let http::header::Entry::Vacant(slot) = target.entry(name) {
                slot.insert(value);
            }
        };
        if let Some(Figures {
            limit,
            remaining,
            reset,
        }) = self.figures
        {
            set(X_RATELIMIT_LIMIT, limit);
            set(X_RATELIMIT_REMAINING, repeating(&REMAINING, remaining));
            set(X_RATELIMIT_RESET, repeating(&SECONDS, reset));
        }
        if let Some(wait) = self.retry_after {
            set(RETRY_AFTER, repeating(&SECONDS, wait));
        }
        if let Some(ietf) = self.ietf {
            let [policy, state] = *ietf;
            set(RATELIMIT_POLICY, policy);
            set(RATELIMIT, state);
        }
        if let Some(expose) = self.expose {
            target.append(ACCESS_CONTROL_EXPOSE_HEADERS, expose);
        }
    }
}

/// The `X-RateLimit-*` figures: the limit already a value (see [`LimitValue`]).
#[derive(Debug)]
struct Figures {
    limit: HeaderValue,
    remaining: u64,
    reset: u64,
}

/// A limit's `X-RateLimit-Limit`, rendered when the layer is built: the figure its decisions
/// report (the quota's limit, or its burst for GCRA) does not change from one request to the
/// next. Cloning it copies no bytes.
pub(crate) struct LimitValue {
    rendered: SmallVec<[(u64, HeaderValue); 2]>,
}

impl LimitValue {
    pub(crate) fn new(rule: &Rule) -> Self {
        let quota = rule.quota();
        let mut rendered = SmallVec::new();
        for n in [quota.limit(), quota.burst()] {
            // Numbers of the static table cost nothing to make.
            if n >= STATIC_NUMBERS && !rendered.iter().any(|&(m, _)| m == n) {
                rendered.push((n, number(n)));
            }
        }
        Self { rendered }
    }

    /// `n` as a header value: the one rendered at build time, if it is `n`.
    fn get(&self, n: u64) -> HeaderValue {
        self.rendered
            .iter()
            .find(|&&(m, _)| m == n)
            .map_or_else(|| number(n), |(_, value)| value.clone())
    }
}

/// The binding decision, and its limit's rendered `X-RateLimit-Limit`.
pub(crate) struct Binding<'a> {
    pub(crate) decision: &'a Decision,
    pub(crate) limit: &'a LimitValue,
}

/// One applicable enforced check, as the header writer sees it.
pub(crate) struct Reported<'a> {
    pub(crate) name: &'a str,
    pub(crate) policy: &'a str,
    pub(crate) decision: &'a Decision,
}

/// How rate-limit headers are written; fixed when the layer is built.
pub(crate) struct HeaderWriter {
    pub(crate) style: HeaderStyle,
    pub(crate) reset: ResetFormat,
    /// `Access-Control-Expose-Headers`, when asked for.
    pub(crate) expose: Option<HeaderValue>,
}

impl HeaderWriter {
    pub(crate) fn new(style: HeaderStyle, reset: ResetFormat, expose: bool) -> Self {
        let expose = expose.then(|| {
            let mut names = SmallVec::<[HeaderName; 6]>::new();
            if style.x_ratelimit() {
                names.extend([X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET]);
            }
            if style.ietf() {
                names.extend([RATELIMIT_POLICY, RATELIMIT]);
            }
            names.push(RETRY_AFTER);
            let list: SmallVec<[&str; 6]> = names.iter().map(HeaderName::as_str).collect();
            HeaderValue::from_str(&list.join(", "))
                .unwrap_or(HeaderValue::from_static("retry-after"))
        });
        Self {
            style,
            reset,
            expose,
        }
    }

    /// The headers for a decided request: figures of `binding`, every applicable policy in the
    /// IETF fields, and `Retry-After` when denied.
    pub(crate) fn headers<'a>(
        &self,
        binding: Option<Binding<'_>>,
        applicable: impl Iterator<Item = Reported<'a>>,
    ) -> RateLimitHeaders {
        let mut out = RateLimitHeaders {
            expose: self.expose.clone(),
            ..RateLimitHeaders::default()
        };
        if let Some(Binding { decision: d, limit }) = binding {
            if self.style.x_ratelimit() {
                let reset = match self.reset {
                    ResetFormat::DeltaSeconds => ceil_secs(d.reset_after),
                    ResetFormat::UnixTime => unix_secs_ceil(d.reset_after),
                };
                out.figures = Some(Figures {
                    limit: limit.get(d.limit),
                    remaining: d.remaining,
                    reset,
                });
            }
            out.retry_after = d.retry_after.map(retry_after_secs);
        }
        if self.style.ietf() {
            let mut policy = String::new();
            let mut state = String::new();
            for (i, r) in applicable.enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                policy.push_str(sep);
                policy.push_str(r.policy);
                let _ = write!(
                    state,
                    "{sep}\"{}\";r={};t={}",
                    r.name,
                    r.decision.remaining,
                    ceil_secs(r.decision.reset_after)
                );
            }
            if let (Ok(p), Ok(s)) = (HeaderValue::try_from(policy), HeaderValue::try_from(state)) {
                if !p.is_empty() {
                    out.ietf = Some(Box::new([p, s]));
                }
            }
        }
        out
    }
}

/// The IETF `RateLimit-Policy` item of a rule: `"name";q=limit;w=seconds` (`w` only when the
/// period is whole seconds).
pub(crate) fn policy_item(rule: &Rule) -> String {
    let quota = rule.quota();
    let mut item = format!("\"{}\";q={}", rule.name(), quota.limit());
    let period = quota.period();
    if period.subsec_nanos() == 0 {
        let _ = write!(item, ";w={}", period.as_secs());
    }
    item
}

/// Seconds, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `Retry-After` seconds: rounded up, at least 1.
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    ceil_secs(d).max(1)
}

fn unix_secs_ceil(after: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    ceil_secs(now.saturating_add(after))
}

/// Numbers below this are slices of [`DIGITS`].
const STATIC_NUMBERS: u64 = 10_000;

/// Every number below [`STATIC_NUMBERS`] written out, shortest first, with nothing between:
/// `0123456789101112…9999`.
static DIGITS: &str = match std::str::from_utf8(&DIGIT_BYTES) {
    Ok(digits) => digits,
    Err(_) => panic!("digits are ASCII"),
};

static DIGIT_BYTES: [u8; DIGITS_LEN] = digits();

/// `10 * 1 + 90 * 2 + 900 * 3 + 9000 * 4`.
const DIGITS_LEN: usize = 38_890;

/// For each width (1 to 4 digits): where its numbers start in [`DIGITS`], and its first number.
const WIDTH_STARTS: [(usize, u64); 4] = [(0, 0), (10, 10), (190, 100), (2_890, 1_000)];

const fn digits() -> [u8; DIGITS_LEN] {
    let mut out = [0u8; DIGITS_LEN];
    let (mut n, mut at) = (0u64, 0usize);
    while n < STATIC_NUMBERS {
        let width = width(n);
        let (mut rest, mut i) = (n, width);
        while i > 0 {
            i -= 1;
            out[at + i] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        at += width;
        n += 1;
    }
    out
}

/// How many decimal digits `n` has.
const fn width(n: u64) -> usize {
    match n.checked_ilog10() {
        Some(log) => log as usize + 1,
        None => 1,
    }
}

/// A figure that tends to repeat from one request to the next as a header value: a count of
/// seconds (a reset, a flood's `Retry-After`, a Unix time: they change once a second), or a
/// `remaining` that stays put (GCRA far from its limit). Each thread keeps the last large one
/// it saw twice in a row, so a repeat copies no bytes; `slot` keeps one kind of figure apart
/// from another.
fn repeating(slot: &'static LocalKey<Repeated<HeaderValue>>, n: u64) -> HeaderValue {
    if n < STATIC_NUMBERS {
        return number(n);
    }
    slot.with(|last| last.get(n, number))
}

thread_local! {
    static SECONDS: Repeated<HeaderValue> = const { Repeated::new() };
    static REMAINING: Repeated<HeaderValue> = const { Repeated::new() };
}

/// The last value a thread made from a number that tends to repeat, for the next request.
pub(crate) struct Repeated<T>(RefCell<Last<T>>);

enum Last<T> {
    Nothing,
    /// Seen once: kept if it comes again (keeping a value that does not repeat costs more than
    /// making it).
    Seen(u64),
    Kept(u64, T),
}

impl<T: Clone> Repeated<T> {
    pub(crate) const fn new() -> Self {
        Self(RefCell::new(Last::Nothing))
    }

    /// The value of `n`: the kept one if it is `n`'s, else `make(n)`, kept if `n` repeats.
    pub(crate) fn get(&self, n: u64, make: impl FnOnce(u64) -> T) -> T {
        let mut last = self.0.borrow_mut();
        match &*last {
            Last::Kept(m, value) if *m == n => value.clone(),
            Last::Seen(m) if *m == n => {
                let value = make(n);
                *last = Last::Kept(n, value.clone());
                value
            }
            _ => {
                *last = Last::Seen(n);
                make(n)
            }
        }
    }
}

/// A number as a header value. Below [`STATIC_NUMBERS`], a slice of a static table: no
/// allocation, and clones share nothing that must be counted. Above, a slice of this thread's
/// current block of digits (a `HeaderValue` holds `Bytes`, which cannot hold bytes inline):
/// one allocation per [`DIGIT_BLOCK`] bytes of figures rather than one per figure.
pub(crate) fn number(n: u64) -> HeaderValue {
    if n < STATIC_NUMBERS {
        let width = width(n);
        let (start, first) = WIDTH_STARTS[width - 1];
        let at = start + (n - first) as usize * width;
        if let Some(text) = DIGITS.get(at..at + width) {
            return HeaderValue::from_static(text);
        }
    }
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n).as_bytes();
    let shared = DIGIT_BLOCKS.try_with(|block| {
        let mut block = block.borrow_mut();
        if block.capacity() - block.len() < digits.len() {
            *block = BytesMut::with_capacity(DIGIT_BLOCK);
        }
        block.extend_from_slice(digits);
        block.split().freeze()
    });
    match shared {
        Ok(bytes) => HeaderValue::from_maybe_shared(bytes),
        // The thread is exiting: its block is gone.
        Err(_) => HeaderValue::from_bytes(digits),
    }
    .unwrap_or_else(|_| HeaderValue::from(n))
}

/// Bytes of the blocks [`number`] writes large figures into: a block lives while any value
/// cut from it does, so it is kept small (at most 20 digits a figure: 25 or more figures).
const DIGIT_BLOCK: usize = 512;

thread_local! {
    static DIGIT_BLOCKS: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(42)), 42);
        assert_eq!(ceil_secs(Duration::from_millis(41_001)), 42);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
    }

    #[test]
    fn numbers() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            599,
            1023,
            1024,
            9_999,
            10_000,
            99_999,
            u64::MAX,
        ] {
            assert_eq!(number(n).to_str().unwrap(), n.to_string());
        }
        for n in 0..STATIC_NUMBERS + 10 {
            assert_eq!(number(n).to_str().unwrap(), n.to_string());
        }
    }

    #[test]
    fn large_numbers_cut_from_shared_blocks_keep_their_digits() {
        // Many blocks' worth, kept alive together: each value keeps its own bytes.
        let values: Vec<(u64, HeaderValue)> = (0..2_000u64)
            .map(|i| 10_000 + i * 7_919_993)
            .chain([u64::MAX, 10_000])
            .map(|n| (n, number(n)))
            .collect();
        for (n, value) in &values {
            assert_eq!(value.to_str().unwrap(), n.to_string());
        }
    }

    #[test]
    fn repeated_figures_keep_their_value() {
        for n in [
            5, 20_000, 20_000, 20_000, 30_000, 20_000, 30_000, 30_000, 9_999, 30_000,
        ] {
            assert_eq!(repeating(&SECONDS, n).to_str().unwrap(), n.to_string());
            assert_eq!(
                repeating(&REMAINING, n + 1).to_str().unwrap(),
                (n + 1).to_string()
            );
        }
    }

    #[test]
    fn exposed_names_follow_the_style() {
        let w = HeaderWriter::new(HeaderStyle::Both, ResetFormat::DeltaSeconds, true);
        assert_eq!(
            w.expose.unwrap(),
            "x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset, ratelimit-policy, ratelimit, retry-after"
        );
        let w = HeaderWriter::new(HeaderStyle::Hidden, ResetFormat::DeltaSeconds, true);
        assert_eq!(w.expose.unwrap(), "retry-after");
        assert!(
            HeaderWriter::new(HeaderStyle::XRateLimit, ResetFormat::UnixTime, false)
                .expose
                .is_none()
        );
    }

    #[test]
    fn policy_items() {
        let rule = |q| Rule::builder("per_token", q).build().unwrap();
        let q = tollgate_core::Quota::per_minute(600).unwrap();
        assert_eq!(policy_item(&rule(q)), "\"per_token\";q=600;w=60");
        let q = tollgate_core::Quota::min_interval(Duration::from_millis(500)).unwrap();
        assert_eq!(policy_item(&rule(q)), "\"per_token\";q=1");
    }
}
