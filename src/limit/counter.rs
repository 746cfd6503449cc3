//! Exact per-key counts for one fixed window, lock-free, in fixed memory.
//!
//! A table of `slots` atomic words, each holding a key's 40-bit fingerprint
//! and its 24-bit count in the current window; a key takes the first free or
//! matching word among [`PROBES`] neighbours (linear probing). Counts are
//! exact for every key that finds a word: far more keys than a window sees in
//! practice (the table is sized for tens of thousands of distinct clients per
//! window). A key that finds none — the table is saturated by a flood of
//! fresh addresses — is counted by a small count-min sketch instead, which may
//! over-count but never under-counts. Nothing grows with the number of
//! clients: a flood costs no memory.
//!
//! When a window ends, the first request to notice clears the table.

use pingora_limits::rate::Rate;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Neighbouring words a key may take.
const PROBES: usize = 8;
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// Counts per key in the current fixed window.
pub struct WindowCounter {
    window: Duration,
    origin: Instant,
    /// Number of the window the table counts (windows since `origin`).
    epoch: AtomicU64,
    slots: Box<[AtomicU64]>,
    /// Keys that found no word.
    overflow: Rate,
}

impl WindowCounter {
    /// `slots` is rounded up to a power of two.
    pub fn new(window: Duration, slots: usize) -> WindowCounter {
        let slots = slots.max(PROBES).next_power_of_two();
        WindowCounter {
            window,
            origin: Instant::now(),
            epoch: AtomicU64::new(0),
            slots: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            overflow: Rate::new_with_estimator_config(window, 4, 1024),
        }
    }

    /// Bytes held, whatever the traffic.
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * 8 + 4 * 1024 * 8 * 2
    }

    /// Moves to the current window (clearing the table when it changed) and
    /// returns the time left in it.
    fn roll(&self) -> Duration {
        let elapsed = self.origin.elapsed();
        let window = self.window.as_nanos().max(1);
        let now = (elapsed.as_nanos() / window) as u64;
        let seen = self.epoch.load(Ordering::Acquire);
        if now > seen
            && self
                .epoch
                .compare_exchange(seen, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for s in self.slots.iter() {
                s.store(0, Ordering::Relaxed);
            }
        }
        let into = (elapsed.as_nanos() % window) as u64;
        Duration::from_nanos((window as u64).saturating_sub(into))
    }

    fn fingerprint(key: u64) -> u64 {
        (key >> COUNT_BITS).max(1)
    }

    /// Counts one event for `key`; returns its count in the current window
    /// and the time left in the window.
    pub fn observe(&self, key: u64) -> (u64, Duration) {
        let left = self.roll();
        let fp = Self::fingerprint(key);
        let mask = self.slots.len() - 1;
        let start = key as usize & mask;
        for i in 0..PROBES {
            let slot = &self.slots[(start + i) & mask];
            let mut current = slot.load(Ordering::Relaxed);
            loop {
                let owner = current >> COUNT_BITS;
                let next = if current == 0 {
                    (fp << COUNT_BITS) | 1
                } else if owner == fp {
                    let count = (current & COUNT_MASK).saturating_add(1).min(COUNT_MASK);
                    (fp << COUNT_BITS) | count
                } else {
                    break; // another key's word: probe on
                };
                match slot.compare_exchange_weak(
                    current,
                    next,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return (next & COUNT_MASK, left),
                    Err(actual) => current = actual,
                }
            }
        }
        (self.overflow.observe(&key, 1).max(0) as u64, left)
    }

    /// The count of `key` in the current window, without counting.
    pub fn peek(&self, key: u64) -> u64 {
        self.roll();
        let fp = Self::fingerprint(key);
        let mask = self.slots.len() - 1;
        let start = key as usize & mask;
        for i in 0..PROBES {
            let v = self.slots[(start + i) & mask].load(Ordering::Relaxed);
            if v == 0 {
                return 0;
            }
            if v >> COUNT_BITS == fp {
                return v & COUNT_MASK;
            }
        }
        self.overflow.rate_with(&key, |c| c.curr_samples).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        i.hash(&mut h);
        h.finish()
    }

    #[test]
    fn counts_are_exact_per_key_under_many_keys() {
        let c = WindowCounter::new(Duration::from_secs(60), 1 << 16);
        for i in 0..30_000 {
            assert_eq!(c.observe(key(i)).0, 1, "fresh key {i}");
        }
        for n in 1..=10 {
            assert_eq!(c.observe(key(1_000_000)).0, n);
        }
        assert_eq!(c.peek(key(1_000_000)), 10);
        assert_eq!(c.peek(key(5)), 1);
        assert_eq!(c.peek(key(2_000_000)), 0);
    }

    #[test]
    fn a_saturated_table_still_counts_every_key() {
        let c = WindowCounter::new(Duration::from_secs(60), 16);
        for i in 0..200 {
            c.observe(key(i));
        }
        // Keys beyond the table are counted (by the sketch), never lost.
        for n in 1..=3 {
            assert!(c.observe(key(9_999)).0 >= n);
        }
    }

    #[test]
    fn a_new_window_starts_from_zero() {
        let c = WindowCounter::new(Duration::from_millis(100), 64);
        assert_eq!(c.observe(7).0, 1);
        assert_eq!(c.observe(7).0, 2);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(c.peek(7), 0);
        let (n, left) = c.observe(7);
        assert_eq!(n, 1);
        assert!(left <= Duration::from_millis(100));
    }
}
