//! [`LogThrottle`]: at most one log line per interval for an event that can happen on every
//! request, so that an outage or a flood of shadow denials cannot flood the logs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets one event through per interval, and counts the ones it holds back.
///
/// ```
/// use std::time::Duration;
/// use tollgate_core::LogThrottle;
///
/// let throttle = LogThrottle::new(Duration::from_secs(60));
/// assert_eq!(throttle.permit(), Some(0)); // log it: nothing was held back
/// assert_eq!(throttle.permit(), None); // held back
/// assert_eq!(throttle.permit(), None);
/// // A minute later, `permit` returns `Some(2)`: log it, saying 2 were suppressed.
/// ```
#[derive(Debug)]
pub struct LogThrottle {
    origin: Instant,
    interval: u64,
    /// Nanoseconds after `origin` at which the next event may be logged.
    next: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    /// At most one event per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            origin: Instant::now(),
            interval: crate::clock::saturating_nanos(interval),
            next: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(events held back since the last one let through)` if this one may be logged.
    pub fn permit(&self) -> Option<u64> {
        let now = crate::clock::saturating_nanos(self.origin.elapsed());
        let next = self.next.load(Ordering::Relaxed);
        if now >= next
            && self
                .next
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_interval_and_a_count_of_the_rest() {
        let throttle = LogThrottle::new(Duration::from_secs(3600));
        assert_eq!(throttle.permit(), Some(0));
        for _ in 0..5 {
            assert_eq!(throttle.permit(), None);
        }
        // Pretend the interval has passed.
        throttle.next.store(0, Ordering::Relaxed);
        assert_eq!(throttle.permit(), Some(5));
        assert_eq!(throttle.permit(), None);
        let every_time = LogThrottle::new(Duration::ZERO);
        assert_eq!(every_time.permit(), Some(0));
        assert_eq!(every_time.permit(), Some(0));
    }
}
