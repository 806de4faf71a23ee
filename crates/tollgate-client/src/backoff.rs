//! Backoff policies: which responses are retried, how many times, and how long to wait before
//! each retry, with or without the server's word.

use std::time::Duration;

use http::StatusCode;

/// A retry policy: which statuses are retried, how many times, and the delay before retry `n`.
///
/// `429 Too Many Requests` is always retried, and so is `503 Service Unavailable` when it says
/// how long to wait; a policy may add statuses of its own ([`retry_statuses`](Self::retry_statuses)).
///
/// **The server's word is a floor.** When the response says how long to wait (`Retry-After`,
/// the IETF `RateLimit` field, `X-RateLimit-Reset`), the delay is never shorter than that; the
/// jitter is added on top of it, and the policy's own delay is a floor under it too, so a
/// server that says `0` (or a date in the past) is not hammered. Without a signal, the policy's
/// formula alone decides. The layer's [`max_wait`](crate::PoliteLayer::max_wait) decides when a
/// wait is too long to be worth it: the response is then returned instead.
///
/// Four presets, each the published formula of a real client (`U` is a uniform draw in
/// `[0, 1)`, `n` the retry number, from 1):
///
/// | preset | retries | delay before retry `n` without a signal | with the server's wait `s` |
/// | --- | --- | --- | --- |
/// | [`vast_sdk`](Self::vast_sdk) | 3 | `0.15 s × 1.5^(n-1)`: 0.15, 0.225, 0.3375 s | `max(s, 0.15 s × 1.5^(n-1))` |
/// | [`vast_serverless`](Self::vast_serverless) (default) | 5 | `min(2^(n-1) + U, 5) s` | `max(s + U s, min(2^(n-1) + U, 5) s)` |
/// | [`vmarea`](Self::vmarea) | 4 | `2^(n-1) + U s` | `max(s, 1 s) × 2^(n-1) + U s` |
/// | [`vast_recipe`](Self::vast_recipe) | 4 | `2^(n-1) s`: 1, 2, 4, 8 s | `max(s, 2^(n-1) s)` |
///
/// ```
/// use std::time::Duration;
/// use tollgate_client::Backoff;
///
/// let vast = Backoff::vast_sdk();
/// assert_eq!(vast.delay(2, None, 0.0), Duration::from_millis(225));
/// // The server said 1 s: wait that, not 0.225 s.
/// assert_eq!(vast.delay(2, Some(Duration::from_secs(1)), 0.0), Duration::from_secs(1));
///
/// // A policy of one's own: 0.5 s doubling, up to 0.25 s of jitter, never over 10 s, 6 retries.
/// let mine = Backoff::exponential(Duration::from_millis(500), 2.0)
///     .jitter(Duration::from_millis(250))
///     .max_delay(Duration::from_secs(10))
///     .retries(6);
/// assert_eq!(mine.delay(3, None, 0.5), Duration::from_millis(2125));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct Backoff {
    /// The delay before the first retry without a signal (before jitter).
    first: Duration,
    /// How much each delay grows over the one before.
    factor: f64,
    /// The span of the uniform jitter added on top of every delay.
    jitter: Duration,
    /// A ceiling on the policy's own delay (jitter included); never on the server's wait.
    max_delay: Option<Duration>,
    retries: u32,
    /// Retried besides 429 and a 503 with a wait.
    statuses: Vec<StatusCode>,
    server_wait: ServerWait,
}

/// How a policy combines the server's wait with its own formula.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerWait {
    /// The larger of the server's wait (plus jitter) and the policy's own delay.
    Floor,
    /// The server's wait, at least `first`, is the base the exponential grows from (VMArea).
    Scale,
}

/// # Presets
impl Backoff {
    /// The Vast.ai SDK's `VastAI` client: 429 only, 3 retries, starting at 0.15 s and
    /// multiplied by 1.5 after each attempt (0.15, 0.225, 0.3375 s), no jitter.
    ///
    /// Source: Vast.ai, *SDK Rate Limits and Errors*, "VastAI Client".
    pub fn vast_sdk() -> Self {
        Self::exponential(Duration::from_millis(150), 1.5).retries(3)
    }

    /// The Vast.ai SDK's serverless client: 408, 429 and 5xx, 5 retries,
    /// `min(2^attempt + random(0, 1), 5.0)` seconds. The SDK counts `attempt` from 0 (Python's
    /// `range(retries)`), so retry `n` waits `min(2^(n-1) + U, 5)` s: about 1–2, 2–3, 4–5, 5,
    /// 5 s. The 5 s ceiling is the policy's own; a longer wait from the server is still honoured.
    ///
    /// Source: Vast.ai, *SDK Rate Limits and Errors*, "Serverless Client". This is the
    /// layer's default.
    pub fn vast_serverless() -> Self {
        let server_errors = (500..=599).filter_map(|code| StatusCode::from_u16(code).ok());
        Self::exponential(Duration::from_secs(1), 2.0)
            .jitter(Duration::from_secs(1))
            .max_delay(Duration::from_secs(5))
            .retries(5)
            .retry_statuses(std::iter::once(StatusCode::REQUEST_TIMEOUT).chain(server_errors))
    }

    /// VMArea's recipe: 429 only, `max(Retry-After, 1) × 2^(attempt-1)` seconds plus up to 1 s
    /// of jitter, attempt counted from 1; a missing `Retry-After` counts as 1 s. Its loop makes
    /// at most 5 attempts, so 4 retries.
    ///
    /// Source: VMArea, *Rate limits*, "Handling 429 in your client". Unlike the recipe's
    /// `parseInt`, an unreadable `Retry-After` does not turn into a zero wait.
    pub fn vmarea() -> Self {
        Self {
            server_wait: ServerWait::Scale,
            ..Self::exponential(Duration::from_secs(1), 2.0)
                .jitter(Duration::from_secs(1))
                .retries(4)
        }
    }

    /// The rate-limited client of the Vast.ai rate-limit recipe (`RateLimitedVastClient`):
    /// wait `Retry-After`, else `2^attempt` seconds with `attempt` from 0 (1, 2, 4, 8 s); at most
    /// 5 attempts, so 4 retries. The recipe also keeps a minimum delay of 0.5 s between
    /// requests: pair it with [`PoliteLayer::min_interval`](crate::PoliteLayer::min_interval).
    /// Unlike the recipe, a `Retry-After` shorter than `2^attempt` does not shorten the wait.
    ///
    /// Source: *Vast.ai Rate Limits* (vastai-rate-limits skill), "Step 1: Rate-Limited HTTP
    /// Client".
    pub fn vast_recipe() -> Self {
        Self::exponential(Duration::from_secs(1), 2.0).retries(4)
    }
}

impl Default for Backoff {
    /// [`Backoff::vast_serverless`].
    fn default() -> Self {
        Self::vast_serverless()
    }
}

/// # A policy of one's own
impl Backoff {
    /// `first × factor^(n-1)` before retry `n`, without jitter or ceiling, 3 retries, 429 (and
    /// 503 with a wait) only. A `factor` that is not a number counts as 1, a negative one as 0.
    pub fn exponential(first: Duration, factor: f64) -> Self {
        Self {
            first,
            factor: if factor.is_nan() {
                1.0
            } else {
                factor.max(0.0)
            },
            jitter: Duration::ZERO,
            max_delay: None,
            retries: 3,
            statuses: Vec::new(),
            server_wait: ServerWait::Floor,
        }
    }

    /// Adds a uniform draw in `[0, span)` to every delay, so that clients refused together do
    /// not come back together.
    pub fn jitter(mut self, span: Duration) -> Self {
        self.jitter = span;
        self
    }

    /// A ceiling on the policy's own delay, jitter included. It never shortens the server's
    /// wait; the layer's [`max_wait`](crate::PoliteLayer::max_wait) is what gives up.
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.max_delay = Some(max);
        self
    }

    /// How many times a request may be retried (0: never).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Statuses retried besides 429 and a 503 that carries a wait (which always are).
    pub fn retry_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.statuses.extend(statuses);
        self
    }
}

/// # Reading a policy
impl Backoff {
    /// How many times a request may be retried.
    pub fn max_retries(&self) -> u32 {
        self.retries
    }

    /// Whether a response with this status is retried; `has_wait` says whether it said how
    /// long to wait.
    pub fn retries_on(&self, status: StatusCode, has_wait: bool) -> bool {
        status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::SERVICE_UNAVAILABLE && has_wait)
            || self.statuses.contains(&status)
    }

    /// The delay before retry `retry` (1 for the first), given the server's wait if it gave
    /// one, and `unit`, the jitter draw in `[0, 1)` (clamped; the layer draws it uniformly).
    /// Never shorter than `server`. Saturates at [`Duration::MAX`] instead of overflowing.
    pub fn delay(&self, retry: u32, server: Option<Duration>, unit: f64) -> Duration {
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        let growth = self
            .factor
            .powi(retry.saturating_sub(1).min(i32::MAX as u32) as i32);
        let jitter = scale(self.jitter, unit);
        let delay = match self.server_wait {
            ServerWait::Floor => {
                let own = scale(self.first, growth).saturating_add(jitter);
                let own = self.max_delay.map_or(own, |max| own.min(max));
                server.map_or(own, |s| own.max(s.saturating_add(jitter)))
            }
            ServerWait::Scale => {
                let base = server.unwrap_or(Duration::ZERO).max(self.first);
                scale(base, growth).saturating_add(jitter)
            }
        };
        // Whatever the figures (a factor below 1), the server's word stands.
        delay.max(server.unwrap_or(Duration::ZERO))
    }
}

/// `d × k`, rounded to the nanosecond, saturating; `k` is finite and non-negative or infinite.
fn scale(d: Duration, k: f64) -> Duration {
    let nanos = (d.as_nanos() as f64 * k).round();
    if nanos >= Duration::MAX.as_nanos() as f64 {
        Duration::MAX
    } else if nanos > 0.0 {
        let nanos = nanos as u128;
        Duration::new(
            (nanos / 1_000_000_000) as u64,
            (nanos % 1_000_000_000) as u32,
        )
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;
    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn vast_sdk_is_0_15_times_1_5_to_the_n_without_jitter() {
        let b = Backoff::vast_sdk();
        assert_eq!(b.max_retries(), 3);
        for (n, want) in [(1, 150), (2, 225), (3, 337_500)] {
            let want = if want > 1000 {
                Duration::from_micros(want)
            } else {
                MS(want)
            };
            assert_eq!(b.delay(n, None, 0.0), want);
            assert_eq!(b.delay(n, None, 0.99), want, "no jitter");
        }
        assert!(b.retries_on(StatusCode::TOO_MANY_REQUESTS, false));
        assert!(!b.retries_on(StatusCode::BAD_GATEWAY, false));
        assert!(!b.retries_on(StatusCode::SERVICE_UNAVAILABLE, false));
        assert!(b.retries_on(StatusCode::SERVICE_UNAVAILABLE, true));
    }

    #[test]
    fn vast_serverless_is_min_of_2_to_the_n_plus_u_and_5() {
        let b = Backoff::vast_serverless();
        assert_eq!(b.max_retries(), 5);
        for (n, base) in [(1u32, 1000u64), (2, 2000), (3, 4000)] {
            assert_eq!(b.delay(n, None, 0.0), MS(base));
            assert_eq!(b.delay(n, None, 0.5), MS(base + 500));
        }
        assert_eq!(b.delay(3, None, 0.999), MS(4999));
        assert_eq!(b.delay(4, None, 0.0), S(5), "8 s capped at 5");
        assert_eq!(b.delay(5, None, 0.7), S(5));
        assert_eq!(b.delay(u32::MAX, None, 0.7), S(5));
        // The 5 s ceiling is the policy's, not the server's.
        assert_eq!(b.delay(1, Some(S(30)), 0.5), MS(30_500));
        for code in [408, 500, 502, 503, 504, 599] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(b.retries_on(status, false), "{code}");
        }
        assert!(!b.retries_on(StatusCode::NOT_FOUND, false));
    }

    #[test]
    fn vmarea_scales_the_server_wait_by_2_to_the_n_minus_1_plus_u() {
        let b = Backoff::vmarea();
        assert_eq!(b.max_retries(), 4);
        // No Retry-After counts as 1 s.
        assert_eq!(b.delay(1, None, 0.0), S(1));
        assert_eq!(b.delay(3, None, 0.25), MS(4250));
        // Retry-After: 42 → 42, 84, 168 s (+ jitter).
        assert_eq!(b.delay(1, Some(S(42)), 0.0), S(42));
        assert_eq!(b.delay(2, Some(S(42)), 0.5), MS(84_500));
        assert_eq!(b.delay(3, Some(S(42)), 0.0), S(168));
        // max(Retry-After, 1): a 0 is read as 1.
        assert_eq!(b.delay(2, Some(S(0)), 0.0), S(2));
    }

    #[test]
    fn vast_recipe_doubles_from_1_s_or_waits_retry_after() {
        let b = Backoff::vast_recipe();
        assert_eq!(b.max_retries(), 4);
        let delays: Vec<_> = (1..=4).map(|n| b.delay(n, None, 0.9)).collect();
        assert_eq!(delays, [S(1), S(2), S(4), S(8)]);
        assert_eq!(b.delay(1, Some(S(7)), 0.0), S(7));
    }

    #[test]
    fn the_server_wait_is_a_floor_and_jitter_goes_on_top() {
        for b in [
            Backoff::vast_sdk(),
            Backoff::vast_serverless(),
            Backoff::vmarea(),
            Backoff::vast_recipe(),
            Backoff::exponential(S(1), 0.1),
            Backoff::exponential(S(1), f64::NAN),
            Backoff::exponential(S(1), -3.0).max_delay(Duration::ZERO),
            Backoff::exponential(S(1), f64::INFINITY),
        ] {
            for server in [S(0), MS(1), S(1), S(3), S(86_400), Duration::MAX] {
                for n in [1, 2, 7, u32::MAX] {
                    for unit in [0.0, 0.5, 0.999, -1.0, 7.0, f64::NAN] {
                        let d = b.delay(n, Some(server), unit);
                        assert!(d >= server, "{b:?} n={n} s={server:?} u={unit}: {d:?}");
                        assert!(d <= b.delay(n, Some(server), 1.0));
                    }
                }
            }
        }
    }

    #[test]
    fn a_server_saying_0_still_gets_the_policy_delay() {
        assert_eq!(Backoff::vast_sdk().delay(2, Some(S(0)), 0.0), MS(225));
    }

    #[test]
    fn scaling_saturates() {
        assert_eq!(scale(S(1), f64::INFINITY), Duration::MAX);
        assert_eq!(scale(Duration::MAX, 2.0), Duration::MAX);
        assert_eq!(scale(S(1), 0.0), Duration::ZERO);
        assert_eq!(scale(MS(150), 1.5), MS(225));
    }
}
