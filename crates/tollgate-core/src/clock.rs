//! Where "now" comes from.
//!
//! Every algorithm in tollgate takes the current time as an argument; only stores read a clock.
//! Time is a `u64` count of nanoseconds since the Unix epoch: integer arithmetic with no float
//! drift, and room until the year 2554.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch.
pub type Nanos = u64;

/// A source of the current time for a store.
pub trait Clock: Send + Sync + 'static {
    /// The current time, in nanoseconds since the Unix epoch. Must never go backwards.
    fn now(&self) -> Nanos;

    /// The current time, for a caller that has already read `seen` from this clock (the memory
    /// store keeps one such time per shard, read under the shard's lock). The default is
    /// [`now`](Self::now). A clock may instead take a cheaper reading that can disagree between
    /// CPU cores, and return the later of it and `seen`: time still never goes backwards for
    /// that caller.
    fn now_after(&self, _seen: Nanos) -> Nanos {
        self.now()
    }
}

/// Wall-clock time that never goes backwards.
///
/// The wall clock is read once, when the clock is created; later readings add the elapsed time
/// of the monotonic [`Instant`]. An NTP step of the system clock therefore cannot make a limiter
/// forget or double-count (the pitfall of clocks that can go backwards).
///
/// [`now_after`](Clock::now_after) adds instead the elapsed time of the time-stamp counter
/// (through `quanta`): a few nanoseconds rather than a `clock_gettime` call. Counters of
/// different cores may disagree, which made governor's default clock go backwards
/// (governor#299), so that reading is never let behind the caller's `seen`.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    anchor_wall: Nanos,
    anchor: Instant,
    /// The time-stamp counter when `anchor` was taken.
    anchor_raw: u64,
}

/// The calibrated time-stamp counter, shared: calibrating takes about a millisecond.
#[inline]
fn counter() -> &'static quanta::Clock {
    static COUNTER: OnceLock<quanta::Clock> = OnceLock::new();
    COUNTER.get_or_init(quanta::Clock::new)
}

impl SystemClock {
    /// Anchors a new clock at the current wall-clock time.
    pub fn new() -> Self {
        let anchor_wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, saturating_nanos);
        Self {
            anchor_wall,
            anchor: Instant::now(),
            anchor_raw: counter().raw(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Nanos {
        self.anchor_wall
            .saturating_add(saturating_nanos(self.anchor.elapsed()))
    }

    #[inline]
    fn now_after(&self, seen: Nanos) -> Nanos {
        let counter = counter();
        // A counter behind the anchor (another core's) reads as no time elapsed.
        let elapsed = counter.delta_as_nanos(self.anchor_raw, counter.raw());
        self.anchor_wall.saturating_add(elapsed).max(seen)
    }
}

/// A clock that moves only when told to: for tests, simulations and the conformance table.
///
/// Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use tollgate_core::{Clock, ManualClock};
///
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_nanos(500));
/// assert_eq!(clock.now(), 1_500);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock that reads `start` until it is moved.
    pub fn new(start: Nanos) -> Self {
        Self(Arc::new(AtomicU64::new(start)))
    }

    /// Sets the time. Moving it backwards is allowed here, so tests can probe that stores cope.
    pub fn set(&self, now: Nanos) {
        self.0.store(now, Ordering::SeqCst);
    }

    /// Moves the time forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(saturating_nanos(by), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        self.0.load(Ordering::SeqCst)
    }
}

impl<C: Clock> Clock for Arc<C> {
    fn now(&self) -> Nanos {
        (**self).now()
    }

    fn now_after(&self, seen: Nanos) -> Nanos {
        (**self).now_after(seen)
    }
}

/// A duration as nanoseconds, saturating at `u64::MAX` (584 years): how every store turns a
/// [`Duration`] into the [`Nanos`] of its clock.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(tollgate_core::saturating_nanos(Duration::from_micros(3)), 3_000);
/// assert_eq!(tollgate_core::saturating_nanos(Duration::MAX), u64::MAX);
/// ```
pub fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_monotonic_and_near_wall_time() {
        let clock = SystemClock::new();
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
        let wall = saturating_nanos(SystemTime::now().duration_since(UNIX_EPOCH).unwrap());
        assert!(wall.abs_diff(b) < 1_000_000_000);
        // The counter reading follows the same anchor, and never goes behind what was seen.
        assert!(clock.now_after(0).abs_diff(clock.now()) < 1_000_000_000);
        assert_eq!(clock.now_after(u64::MAX), u64::MAX);
    }

    /// Calibrating the time-stamp counter takes about a millisecond: it is done once, and every
    /// read shares the result.
    #[test]
    fn the_time_stamp_counter_is_calibrated_once_and_shared() {
        assert!(std::ptr::eq(counter(), counter()));
    }

    /// A clock behind an `Arc` reads as the clock it wraps, `now_after` included.
    #[test]
    fn a_clock_behind_an_arc_reads_as_the_clock_it_wraps() {
        fn read<C: Clock>(clock: &C, seen: Nanos) -> (Nanos, Nanos) {
            (clock.now(), clock.now_after(seen))
        }
        assert_eq!(read(&Arc::new(ManualClock::new(5_000)), 0), (5_000, 5_000));
        // The system clock never reads behind what the caller has seen.
        assert_eq!(read(&Arc::new(SystemClock::new()), u64::MAX).1, u64::MAX);
    }
}
