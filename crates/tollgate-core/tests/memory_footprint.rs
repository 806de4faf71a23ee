//! Bytes per key, measured with a counting allocator, and released after the horizon.
//!
//! Alone in its test binary so no other test's allocations are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use tollgate_core::conformance::BASE;
use tollgate_core::{Algorithm, Check, KeySecret, ManualClock, MemoryStore, Quota, Rule};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const KEYS: u64 = 1_000_000;

#[test]
fn bytes_per_key_at_a_million_keys_and_release() {
    for (algorithm, bound) in [
        (Algorithm::Gcra, 64),
        (Algorithm::FixedWindow, 80),
        (Algorithm::SlidingWindow, 96),
    ] {
        let clock = ManualClock::new(BASE);
        let before = LIVE.load(Ordering::Relaxed);
        let store = MemoryStore::builder()
            .clock(clock.clone())
            .sweep_interval(None)
            .build();
        let rule = Rule::builder("r", Quota::per_second(10).unwrap())
            .algorithm(algorithm)
            .build()
            .unwrap();
        for i in 0..KEYS {
            let key = KeySecret::DEFAULT.key().part(&i.to_le_bytes()).finish();
            store.check_now(&[Check { rule: &rule, key }], None);
        }
        let held = LIVE.load(Ordering::Relaxed) - before;
        let per_key = held as f64 / KEYS as f64;
        println!("{algorithm:?}: {per_key:.1} bytes per key at {KEYS} keys");
        assert!(
            per_key <= bound as f64,
            "{algorithm:?}: {per_key:.1} bytes per key"
        );

        // After the horizon, the next inserts sweep the expired keys and give the memory back.
        clock.advance(Duration::from_secs(3));
        for i in 0..KEYS / 4 {
            let key = KeySecret::DEFAULT
                .key()
                .part(b"later")
                .part(&i.to_le_bytes())
                .finish();
            store.check_now(&[Check { rule: &rule, key }], None);
        }
        let after = LIVE.load(Ordering::Relaxed) - before;
        println!(
            "{algorithm:?}: {after} bytes held after the horizon, {} keys",
            store.len()
        );
        assert!(
            (after as f64) < held as f64 * 0.6,
            "{algorithm:?}: {after} bytes still held of {held}"
        );
        drop(store);
    }
}
