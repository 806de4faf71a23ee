//! Quotas written the way people write them: `"100/minute"`, `"600 per minute"`, `"1/500ms"`.
//!
//! The grammar is `<limit> ("/" | "per") [<count>] <unit>`, with optional spaces between the
//! pieces and units `ms`, `s`, `m`, `h`, `d` or their words (`millisecond`, `second`, `sec`,
//! `minute`, `min`, `hour`, `hr`, `day`, singular or plural), in any letter case. [`Quota`]'s
//! `Display` writes the same grammar back, so a quota read from a file prints as it was written.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::{Quota, QuotaError};

/// Why a quota could not be read from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseQuotaError {
    /// The text is not `<limit>/<period>`.
    #[error("{text:?} is not a quota; write it as \"<limit>/<period>\" or \"<limit> per <period>\", e.g. \"100/minute\", \"10/s\", \"1/500ms\", \"5/10s\"")]
    Syntax {
        /// The text that was read, cut to 64 characters.
        text: String,
    },
    /// The text is not a duration (`<count><unit>`).
    #[error("{text:?} is not a duration; write a count and a unit, e.g. \"250ms\", \"10s\", \"5m\", \"24h\", \"1 day\"")]
    Duration {
        /// The text that was read, cut to 64 characters.
        text: String,
    },
    /// The period's unit is not one this parser knows.
    #[error("{unit:?} is not a unit of time; use ms, s, m, h or d (or millisecond, second, minute, hour, day)")]
    Unit {
        /// The unit that was read, cut to 64 characters.
        unit: String,
    },
    /// The text reads, but the quota it names is invalid (zero, too fast, too long).
    #[error(transparent)]
    Invalid(#[from] QuotaError),
}

impl FromStr for Quota {
    type Err = ParseQuotaError;

    /// Reads `"100/minute"`, `"600 per minute"`, `"10/s"`, `"1/500ms"`, `"5/10s"`,
    /// `"1000/hour"`, `"10000/day"`; the burst is the limit, as with [`Quota::new`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate_core::Quota;
    ///
    /// let quota: Quota = "5 per 10s".parse()?;
    /// assert_eq!((quota.limit(), quota.period()), (5, Duration::from_secs(10)));
    /// assert_eq!(quota.to_string(), "5/10s");
    /// # Ok::<(), tollgate_core::ParseQuotaError>(())
    /// ```
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || ParseQuotaError::Syntax {
            text: cut(text.trim()),
        };
        let trimmed = text.trim();
        let (limit, period) = match trimmed.split_once('/') {
            Some(parts) => parts,
            None => split_per(trimmed).ok_or_else(syntax)?,
        };
        let limit = number(limit.trim()).ok_or_else(syntax)?;
        let period = span(period, true).ok_or_else(syntax)??;
        Ok(Quota::new(limit, period)?)
    }
}

/// Reads a span of time written like a quota's period, with a count: `"250ms"`, `"10s"`,
/// `"5 minutes"`, `"24h"`, `"1 day"`. For the settings that are durations (a TTL, a budget).
///
/// ```
/// use std::time::Duration;
///
/// assert_eq!(tollgate_core::parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(tollgate_core::parse_duration("24 hours"), Ok(Duration::from_secs(86_400)));
/// assert!(tollgate_core::parse_duration("soon").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, ParseQuotaError> {
    span(text, false).unwrap_or_else(|| {
        Err(ParseQuotaError::Duration {
            text: cut(text.trim()),
        })
    })
}

/// `[<count>] <unit>`: `None` when it does not read (the caller names the form it expected),
/// `Some(Err)` for an unknown unit. The count may be left out only where `bare_unit` allows
/// (`"100/minute"`). A count too large saturates, so it is reported as too long, never wrapped.
fn span(text: &str, bare_unit: bool) -> Option<Result<Duration, ParseQuotaError>> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (count, unit) = text.split_at(digits);
    let count = match count {
        "" if bare_unit => 1,
        _ => number(count)?,
    };
    let unit = unit.trim_start();
    if unit.is_empty() || !unit.chars().all(char::is_alphabetic) {
        return None;
    }
    Some(match unit_nanos(unit) {
        Some(size) => Ok(Duration::from_nanos(count.saturating_mul(size))),
        None => Err(ParseQuotaError::Unit { unit: cut(unit) }),
    })
}

impl fmt::Display for Quota {
    /// Writes `limit/period` in the largest unit that divides the period exactly, e.g.
    /// `600/minute`, `5/10s`, `1/500ms`, `7/1500000ns`. The burst is not written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str, &str); 6] = [
            (86_400_000_000_000, "d", "day"),
            (3_600_000_000_000, "h", "hour"),
            (60_000_000_000, "m", "minute"),
            (1_000_000_000, "s", "second"),
            (1_000_000, "ms", "millisecond"),
            (1, "ns", "nanosecond"),
        ];
        let period = self.period_nanos();
        let (size, short, word) = UNITS
            .into_iter()
            .find(|(size, _, _)| period.is_multiple_of(*size))
            .unwrap_or(UNITS[5]);
        match period / size {
            1 => write!(f, "{}/{word}", self.limit()),
            count => write!(f, "{}/{count}{short}", self.limit()),
        }
    }
}

/// `"600 per minute"` → `("600", "minute")`; the word must stand between spaces.
fn split_per(text: &str) -> Option<(&str, &str)> {
    let lower = text.to_ascii_lowercase();
    let at = lower.find(" per ")?;
    Some((&text[..at], &text[at + " per ".len()..]))
}

/// Decimal digits only: no sign, no `_`, no `+`, at most what fits a `u64`.
fn number(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn unit_nanos(unit: &str) -> Option<u64> {
    Some(match unit.to_lowercase().as_str() {
        "ns" | "nanosecond" | "nanoseconds" => 1,
        "us" | "µs" | "microsecond" | "microseconds" => 1_000,
        "ms" | "millisecond" | "milliseconds" => 1_000_000,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000_000_000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000_000_000,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000_000_000,
        "d" | "day" | "days" => 86_400_000_000_000,
        _ => return None,
    })
}

/// Error messages quote what was read, but never more than 64 characters of it.
fn cut(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read(text: &str) -> (u64, Duration) {
        let quota: Quota = text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
        (quota.limit(), quota.period())
    }

    #[test]
    fn reads_the_forms_people_write() {
        let secs = Duration::from_secs;
        assert_eq!(read("100/minute"), (100, secs(60)));
        assert_eq!(read("600 per minute"), (600, secs(60)));
        assert_eq!(read("10/s"), (10, secs(1)));
        assert_eq!(read("1/500ms"), (1, Duration::from_millis(500)));
        assert_eq!(read("5/10s"), (5, secs(10)));
        assert_eq!(read("1000/hour"), (1000, secs(3600)));
        assert_eq!(read("10000/day"), (10_000, secs(86_400)));
        assert_eq!(read(" 3 / 2 minutes "), (3, secs(120)));
        assert_eq!(read("3 PER 2 Hours"), (3, secs(7200)));
        assert_eq!(read("1/sec"), (1, secs(1)));
        assert_eq!(read("60/1m"), (60, secs(60)));
        assert_eq!(read("7/d"), (7, secs(86_400)));
        assert_eq!(read("2/250us"), (2, Duration::from_micros(250)));
    }

    #[test]
    fn the_burst_is_the_limit() {
        let quota: Quota = "100/minute".parse().unwrap();
        assert_eq!(quota, Quota::per_minute(100).unwrap());
    }

    #[test]
    fn nonsense_says_what_would_be_valid() {
        for text in [
            "",
            "/",
            "100",
            "100/",
            "/minute",
            "-1/s",
            "+1/s",
            "1_000/s",
            "1.5/s",
            "ten/s",
            "1/-5s",
            "1 per",
            "1 perminute",
            "99999999999999999999/s",
            "1/5",
            "1//s",
        ] {
            let err = text.parse::<Quota>().unwrap_err();
            assert!(
                matches!(err, ParseQuotaError::Syntax { .. }),
                "{text:?} gave {err:?}"
            );
            assert!(err.to_string().contains("\"100/minute\""), "{err}");
        }
        for text in ["1/fortnight", "1/5 parsecs", "1/ss", "1/mss"] {
            let err = text.parse::<Quota>().unwrap_err();
            assert!(
                matches!(err, ParseQuotaError::Unit { .. }),
                "{text:?} gave {err:?}"
            );
            assert!(err.to_string().contains("ms, s, m, h or d"), "{err}");
        }
    }

    #[test]
    fn an_invalid_quota_is_its_quota_error() {
        let zero = "0/s".parse::<Quota>();
        assert_eq!(zero, Err(ParseQuotaError::Invalid(QuotaError::ZeroLimit)));
        assert_eq!(
            "1/0s".parse::<Quota>(),
            Err(ParseQuotaError::Invalid(QuotaError::ZeroPeriod))
        );
        assert!(matches!(
            "1/365d".parse::<Quota>(),
            Err(ParseQuotaError::Invalid(QuotaError::PeriodTooLong { .. }))
        ));
        // An overflowing period is reported as too long, not wrapped into a short one.
        assert!(matches!(
            "1/18446744073709551615d".parse::<Quota>(),
            Err(ParseQuotaError::Invalid(QuotaError::PeriodTooLong { .. }))
        ));
        assert!(matches!(
            "2000000000/s".parse::<Quota>(),
            Err(ParseQuotaError::Invalid(QuotaError::RateTooHigh { .. }))
        ));
    }

    #[test]
    fn error_messages_quote_at_most_64_characters() {
        let long = format!("1/{}", "x".repeat(10_000));
        let err = long.parse::<Quota>().unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
        // What is quoted is the text's first 64 characters, whole characters counted.
        let wide = "é".repeat(100);
        let err = wide.parse::<Quota>().unwrap_err().to_string();
        assert!(err.contains(&format!("{:?}", "é".repeat(64))), "{err}");
        assert!(!err.contains(&"é".repeat(65)), "{err}");
        let unit = "5/fortnights".parse::<Quota>().unwrap_err().to_string();
        assert!(unit.contains("\"fortnights\""), "{unit}");
    }

    #[test]
    fn display_uses_the_largest_exact_unit() {
        let show = |limit, period| Quota::new(limit, period).unwrap().to_string();
        assert_eq!(show(600, Duration::from_secs(60)), "600/minute");
        assert_eq!(show(5, Duration::from_secs(10)), "5/10s");
        assert_eq!(show(1, Duration::from_millis(500)), "1/500ms");
        assert_eq!(show(1, Duration::from_secs(86_400)), "1/day");
        assert_eq!(show(3, Duration::from_secs(7200)), "3/2h");
        assert_eq!(show(7, Duration::from_nanos(1_500_000)), "7/1500000ns");
    }

    #[test]
    fn durations_need_a_count_and_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 5 minutes"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for text in ["", "s", "minute", "5", "-5s", "1.5s", "5 s x"] {
            let err = parse_duration(text).unwrap_err();
            assert!(
                matches!(err, ParseQuotaError::Duration { .. }),
                "{text:?}: {err:?}"
            );
            assert!(err.to_string().contains("\"250ms\""), "{err}");
        }
        assert!(matches!(
            parse_duration("5 fortnights"),
            Err(ParseQuotaError::Unit { .. })
        ));
        // Saturates rather than wrapping into a short span.
        assert_eq!(
            parse_duration("18446744073709551615d"),
            Ok(Duration::from_nanos(u64::MAX))
        );
    }

    proptest! {
        #[test]
        fn display_reads_back_as_the_same_quota(
            limit in 1u64..=1_000_000,
            period in 1_000_000u64..=super::super::MAX_PERIOD_NANOS,
        ) {
            if let Ok(quota) = Quota::new(limit, Duration::from_nanos(period)) {
                prop_assert_eq!(quota.to_string().parse::<Quota>(), Ok(quota));
            }
        }

        #[test]
        fn any_text_is_a_quota_or_an_error_never_a_panic(text in "\\PC{0,40}") {
            let _ = text.parse::<Quota>();
        }
    }
}
