//! How much is allowed: `limit` per `period`, with an optional burst.

use std::fmt;
use std::time::Duration;

use crate::clock::saturating_nanos;

mod text;

pub use text::{parse_duration, ParseQuotaError};

/// The longest period, in nanoseconds: 2^51 ns, about 26 days.
///
/// Every quantity an algorithm computes is bounded by a small multiple of the period or of the
/// burst span ([`MAX_BURST_SPAN_NANOS`]), so the arithmetic stays exact not only in Rust's
/// `u64`/`u128` but also in Redis's Lua, whose numbers are doubles (exact integers up to 2^53).
/// That is what lets every store give the same answers.
pub const MAX_PERIOD_NANOS: u64 = 1 << 51;

/// The longest burst span (`burst` times the emission interval), in nanoseconds: 2^52 ns. Room
/// enough for the default burst of any valid quota, whose span is at most `period + limit`.
pub const MAX_BURST_SPAN_NANOS: u64 = 1 << 52;

/// A rate: `limit` requests per `period`, and how many may arrive at once (`burst`).
///
/// A quota is validated when it is built, so nonsense is a [`QuotaError`] at configuration time,
/// never a panic or a wrong answer at request time. It covers everything from one request per day
/// to 10^9 requests per second.
///
/// ```
/// use std::time::Duration;
/// use tollgate_core::Quota;
///
/// let per_minute = Quota::per_minute(600)?;            // 600 / 60 s, burst 600
/// let interval = Quota::min_interval(Duration::from_millis(500))?; // 1 per 0.5 s
/// let smooth = Quota::per_second(10)?.with_burst(2)?;  // 10/s, at most 2 at once
/// assert_eq!(per_minute.emission_interval(), Duration::from_millis(100));
/// assert_eq!(interval.limit(), 1);
/// assert_eq!(smooth.burst(), 2);
/// # Ok::<(), tollgate_core::QuotaError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: u64,
    period: u64,
    burst: u64,
    interval: u64,
}

/// Why a [`Quota`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// `limit` was zero.
    #[error("a quota's limit must be at least 1 request")]
    ZeroLimit,
    /// `period` was zero.
    #[error("a quota's period must be longer than zero")]
    ZeroPeriod,
    /// `period` was longer than [`MAX_PERIOD_NANOS`].
    #[error("a quota's period may be at most {max:?} (got {period:?}); use a shorter period with a proportionally smaller limit")]
    PeriodTooLong {
        /// The period that was asked for.
        period: Duration,
        /// The longest period accepted.
        max: Duration,
    },
    /// More than one request per nanosecond.
    #[error("a quota may allow at most one request per nanosecond (got {limit} per {period:?})")]
    RateTooHigh {
        /// The limit that was asked for.
        limit: u64,
        /// The period that was asked for.
        period: Duration,
    },
    /// `burst` was zero.
    #[error("a quota's burst must be at least 1 request")]
    ZeroBurst,
    /// `burst` times the emission interval exceeded [`MAX_BURST_SPAN_NANOS`].
    #[error("a burst of {burst} at one request per {interval:?} spans more than {max:?}; lower the burst")]
    BurstTooLarge {
        /// The burst that was asked for.
        burst: u64,
        /// The quota's emission interval.
        interval: Duration,
        /// The longest span accepted.
        max: Duration,
    },
}

impl Quota {
    /// `limit` requests per `period`; the burst is `limit`.
    pub fn new(limit: u64, period: Duration) -> Result<Self, QuotaError> {
        if limit == 0 {
            return Err(QuotaError::ZeroLimit);
        }
        let period_nanos = saturating_nanos(period);
        if period_nanos == 0 {
            return Err(QuotaError::ZeroPeriod);
        }
        if period_nanos > MAX_PERIOD_NANOS {
            return Err(QuotaError::PeriodTooLong {
                period,
                max: Duration::from_nanos(MAX_PERIOD_NANOS),
            });
        }
        if limit > period_nanos {
            return Err(QuotaError::RateTooHigh { limit, period });
        }
        // Rounded up, so the long-run rate never exceeds `limit` per `period`.
        let interval = period_nanos.div_ceil(limit);
        Self {
            limit,
            period: period_nanos,
            burst: limit,
            interval,
        }
        .with_burst(limit)
    }

    /// `limit` requests per second.
    pub fn per_second(limit: u64) -> Result<Self, QuotaError> {
        Self::new(limit, Duration::from_secs(1))
    }

    /// `limit` requests per minute.
    pub fn per_minute(limit: u64) -> Result<Self, QuotaError> {
        Self::new(limit, Duration::from_secs(60))
    }

    /// `limit` requests per hour.
    pub fn per_hour(limit: u64) -> Result<Self, QuotaError> {
        Self::new(limit, Duration::from_secs(3600))
    }

    /// `limit` requests per day.
    pub fn per_day(limit: u64) -> Result<Self, QuotaError> {
        Self::new(limit, Duration::from_secs(86_400))
    }

    /// At least `interval` between two admitted requests: the quota 1 per `interval`.
    pub fn min_interval(interval: Duration) -> Result<Self, QuotaError> {
        Self::new(1, interval)
    }

    /// Sets how many requests may arrive at once. Only GCRA has a burst distinct from the
    /// limit; the window algorithms admit `limit` per window whatever the burst says.
    pub fn with_burst(self, burst: u64) -> Result<Self, QuotaError> {
        if burst == 0 {
            return Err(QuotaError::ZeroBurst);
        }
        match burst.checked_mul(self.interval) {
            Some(span) if span <= MAX_BURST_SPAN_NANOS => Ok(Self { burst, ..self }),
            _ => Err(QuotaError::BurstTooLarge {
                burst,
                interval: Duration::from_nanos(self.interval),
                max: Duration::from_nanos(MAX_BURST_SPAN_NANOS),
            }),
        }
    }

    /// Requests allowed per period.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The period.
    pub fn period(&self) -> Duration {
        Duration::from_nanos(self.period)
    }

    /// Requests that may arrive at once (GCRA).
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// The steady spacing between requests, `period / limit`, rounded up to a whole nanosecond.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.interval)
    }

    pub(crate) fn period_nanos(&self) -> u64 {
        self.period
    }

    pub(crate) fn interval_nanos(&self) -> u64 {
        self.interval
    }
}

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quota")
            .field("limit", &self.limit)
            .field("period", &self.period())
            .field("burst", &self.burst)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonsense_is_a_typed_error() {
        assert_eq!(Quota::per_second(0), Err(QuotaError::ZeroLimit));
        assert_eq!(Quota::new(1, Duration::ZERO), Err(QuotaError::ZeroPeriod));
        assert!(matches!(
            Quota::new(1, Duration::from_secs(365 * 86_400)),
            Err(QuotaError::PeriodTooLong { .. })
        ));
        assert!(matches!(
            Quota::per_second(2_000_000_000),
            Err(QuotaError::RateTooHigh { .. })
        ));
        assert_eq!(
            Quota::per_second(5).unwrap().with_burst(0),
            Err(QuotaError::ZeroBurst)
        );
        assert!(matches!(
            Quota::per_day(1).unwrap().with_burst(60),
            Err(QuotaError::BurstTooLarge { .. })
        ));
        assert!(matches!(
            Quota::per_second(1).unwrap().with_burst(u64::MAX),
            Err(QuotaError::BurstTooLarge { .. })
        ));
    }

    #[test]
    fn covers_one_per_day_to_a_billion_per_second() {
        let slow = Quota::per_day(1).unwrap();
        assert_eq!(slow.emission_interval(), Duration::from_secs(86_400));
        let fast = Quota::per_second(1_000_000_000).unwrap();
        assert_eq!(fast.emission_interval(), Duration::from_nanos(1));
        assert_eq!(fast.burst(), 1_000_000_000);
    }

    #[test]
    fn interval_rounds_up_so_the_rate_is_never_exceeded() {
        let q = Quota::per_second(7).unwrap();
        assert_eq!(q.interval_nanos(), 142_857_143);
        assert!(q.interval_nanos() * 7 >= 1_000_000_000);
    }

    /// A quota reports the figures it was built with, and its `Debug` shows them.
    #[test]
    fn a_quota_reports_and_shows_its_figures() {
        let q = Quota::per_minute(600).unwrap().with_burst(50).unwrap();
        let figures = (q.limit(), q.period(), q.burst());
        assert_eq!(figures, (600, Duration::from_secs(60), 50));
        assert_eq!(
            format!("{q:?}"),
            "Quota { limit: 600, period: 60s, burst: 50 }"
        );
    }
}
