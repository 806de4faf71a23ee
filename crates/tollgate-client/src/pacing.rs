//! Pacing: when each endpoint may next be sent a request, one table shared by every service a
//! [`PoliteLayer`](crate::PoliteLayer) builds and by all their clones.
//!
//! Two things delay a send: the configured minimum interval (each send reserves the next slot,
//! so concurrent callers queue up in order), and a learned hold (a response said the limit is
//! exhausted until some time). Entries that can no longer delay anything are swept when the
//! table grows, so it stays the size of the set of endpoints recently in use.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Below this many entries the table is never swept.
const SWEEP_FLOOR: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct Pacer {
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    slots: HashMap<String, Slot>,
    /// The size at which the next sweep happens: twice what the last one kept, so a table of
    /// live entries is not swept on every insert.
    sweep_at: usize,
}

impl Default for Table {
    fn default() -> Self {
        Self {
            slots: HashMap::new(),
            sweep_at: SWEEP_FLOOR,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    /// The earliest the next send may go, by the minimum interval.
    next: Option<Instant>,
    /// The limit is exhausted until then, as a response said.
    hold: Option<Instant>,
}

impl Slot {
    fn live(&self, now: Instant) -> bool {
        self.next.is_some_and(|t| t > now) || self.hold.is_some_and(|t| t > now)
    }
}

impl Pacer {
    /// Reserves the next send to `endpoint` and returns when it may go: not before the
    /// interval since the previous reservation, nor before a hold, unless the hold ends more
    /// than `max_wait` from now (then the server, not a guess, decides).
    pub(crate) fn reserve(
        &self,
        endpoint: &str,
        interval: Option<Duration>,
        max_wait: Duration,
        now: Instant,
    ) -> Instant {
        let mut table = self.table.lock();
        if interval.is_none() && !table.slots.contains_key(endpoint) {
            // Nothing to pace and nothing learned: no entry.
            return now;
        }
        let slot = table.slot(endpoint, now);
        let mut at = slot.next.map_or(now, |next| next.max(now));
        if let Some(hold) = slot.hold {
            if hold.saturating_duration_since(now) <= max_wait {
                at = at.max(hold);
            }
        }
        if let Some(interval) = interval {
            slot.next = at.checked_add(interval);
        }
        at
    }

    /// Holds `endpoint` until `until` (or longer, if it is already held longer).
    pub(crate) fn hold(&self, endpoint: &str, until: Instant, now: Instant) {
        let slot = &mut *self.table.lock();
        let slot = slot.slot(endpoint, now);
        slot.hold = slot.hold.max(Some(until));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().slots.len()
    }
}

impl Table {
    /// The endpoint's slot, made if it has none (sweeping first if the table is due).
    fn slot(&mut self, endpoint: &str, now: Instant) -> &mut Slot {
        if self.slots.len() >= self.sweep_at && !self.slots.contains_key(endpoint) {
            self.slots.retain(|_, slot| slot.live(now));
            self.sweep_at = (self.slots.len() * 2).max(SWEEP_FLOOR);
        }
        self.slots.entry(endpoint.to_owned()).or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const CAP: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn the_interval_spaces_reservations_in_order() {
        let pacer = Pacer::default();
        let t0 = Instant::now();
        let sends: Vec<_> = (0..4)
            .map(|_| pacer.reserve("api/x", Some(S(1)), CAP, t0) - t0)
            .collect();
        assert_eq!(sends, [S(0), S(1), S(2), S(3)]);
        // Another endpoint is paced apart.
        assert_eq!(pacer.reserve("api/y", Some(S(1)), CAP, t0), t0);
        // After a quiet spell, no debt is owed.
        let later = t0 + S(100);
        assert_eq!(pacer.reserve("api/x", Some(S(1)), CAP, later), later);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_delays_every_send_until_it_ends_unless_beyond_the_cap() {
        let pacer = Pacer::default();
        let t0 = Instant::now();
        assert_eq!(pacer.reserve("e", None, CAP, t0), t0);
        assert_eq!(pacer.len(), 0, "nothing to pace, nothing stored");
        pacer.hold("e", t0 + S(5), t0);
        pacer.hold("e", t0 + S(2), t0);
        assert_eq!(
            pacer.reserve("e", None, CAP, t0),
            t0 + S(5),
            "the longer hold"
        );
        assert_eq!(pacer.reserve("e", Some(S(1)), CAP, t0), t0 + S(5));
        assert_eq!(pacer.reserve("e", Some(S(1)), CAP, t0), t0 + S(6));
        pacer.hold("far", t0 + S(3600), t0);
        assert_eq!(pacer.reserve("far", None, CAP, t0), t0);
    }

    #[tokio::test(start_paused = true)]
    async fn dead_entries_are_swept_when_the_table_grows() {
        let pacer = Pacer::default();
        let t0 = Instant::now();
        for i in 0..SWEEP_FLOOR {
            pacer.reserve(&format!("e{i}"), Some(S(1)), CAP, t0);
        }
        assert_eq!(pacer.len(), SWEEP_FLOOR);
        // One second later every slot has passed: the next insert sweeps them.
        pacer.reserve("new", Some(S(1)), CAP, t0 + S(2));
        assert_eq!(pacer.len(), 1);
        // Live entries survive a sweep, and the next one waits for twice as many.
        for i in 0..SWEEP_FLOOR {
            pacer.hold(&format!("h{i}"), t0 + S(100), t0 + S(2));
        }
        assert_eq!(pacer.len(), SWEEP_FLOOR + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_interval_too_long_to_represent_paces_nothing_and_does_not_panic() {
        let pacer = Pacer::default();
        let t0 = Instant::now();
        assert_eq!(pacer.reserve("e", Some(Duration::MAX), CAP, t0), t0);
        assert_eq!(pacer.reserve("e", Some(Duration::MAX), CAP, t0), t0);
    }
}
