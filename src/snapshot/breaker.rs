//! Circuit breaker per upstream: closed → open → half-open → closed.
//!
//! - **Closed**: requests pass; outcomes are counted in a fixed window
//!   (10 s). It opens when the failure percentage reaches
//!   `failureThreshold` over at least `minimumRequests` requests in the
//!   window, or after `consecutiveFailures` failures in a row.
//! - **Open**: requests are answered 503 at once (with `Retry-After`)
//!   without touching the upstream, for `openDuration` — doubled each time
//!   the breaker re-opens from half-open, capped at 300 s.
//! - **Half-open**: one probe request at a time is let through; its
//!   success closes the breaker, its failure re-opens it.
//!
//! A failure is a connect error, a timeout, a broken exchange or a 5xx
//! answer, all on the upstream's side. A request the client abandons (or
//! that fails for a reason of its own) is neither a success nor a failure:
//! it is not recorded, and if it was the half-open probe, the probe slot is
//! released with [`Breaker::cancel_probe`]. State is atomics; the only
//! contention is on transitions. The breaker object is kept across reloads
//! while the upstream's settings are unchanged, so a reload neither resets
//! nor forgets an open breaker.

use super::clock::now_ms;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;
const WINDOW_MS: u64 = 10_000;
const MAX_OPEN_MS: u64 = 300_000;

/// Settings of one breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Failure percentage (1–100) that opens the breaker.
    pub failure_percent: u32,
    pub minimum_requests: u32,
    /// Consecutive failures that open it (0 = off).
    pub consecutive_failures: u32,
    pub open_duration: Duration,
}

/// Public view of the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// What a request may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Normal request.
    Allowed,
    /// The half-open probe: report its outcome.
    Probe,
    /// Refused; retry after this long.
    Rejected(Duration),
}

/// A state transition to report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Opened,
    Closed,
}

pub struct Breaker {
    pub settings: BreakerSettings,
    state: AtomicU8,
    open_until: AtomicU64,
    reopen_count: AtomicU32,
    window_start: AtomicU64,
    window_total: AtomicU32,
    window_failures: AtomicU32,
    consecutive: AtomicU32,
    probe_started: AtomicU64,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings,
            state: AtomicU8::new(CLOSED),
            open_until: AtomicU64::new(0),
            reopen_count: AtomicU32::new(0),
            window_start: AtomicU64::new(now_ms()),
            window_total: AtomicU32::new(0),
            window_failures: AtomicU32::new(0),
            consecutive: AtomicU32::new(0),
            probe_started: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Decides whether a request may go to the upstream.
    pub fn admit(&self) -> Admission {
        self.admit_at(now_ms())
    }

    fn admit_at(&self, now: u64) -> Admission {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Admission::Allowed,
            OPEN => {
                let until = self.open_until.load(Ordering::Acquire);
                if now < until {
                    return Admission::Rejected(Duration::from_millis(until - now));
                }
                if self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.probe_started.store(now, Ordering::Release);
                    Admission::Probe
                } else {
                    Admission::Rejected(Duration::from_secs(1))
                }
            }
            _ => {
                // One probe at a time; a probe that never reported (stuck) is replaced after the open duration.
                let started = self.probe_started.load(Ordering::Acquire);
                let stale =
                    now.saturating_sub(started) > self.settings.open_duration.as_millis() as u64;
                if stale
                    && self
                        .probe_started
                        .compare_exchange(started, now, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    Admission::Probe
                } else {
                    Admission::Rejected(Duration::from_secs(1))
                }
            }
        }
    }

    /// Records an outcome; returns a transition to report, if any.
    pub fn record(&self, success: bool, probe: bool) -> Option<Transition> {
        self.record_at(now_ms(), success, probe)
    }

    fn record_at(&self, now: u64, success: bool, probe: bool) -> Option<Transition> {
        if probe {
            return if success {
                self.reopen_count.store(0, Ordering::Release);
                self.reset_window(now);
                self.consecutive.store(0, Ordering::Release);
                self.state.store(CLOSED, Ordering::Release);
                Some(Transition::Closed)
            } else {
                let n = self.reopen_count.fetch_add(1, Ordering::AcqRel) + 1;
                self.open(now, n);
                None // still open; `opened` was reported when it first opened
            };
        }
        if self.state.load(Ordering::Acquire) != CLOSED {
            return None;
        }
        if now.saturating_sub(self.window_start.load(Ordering::Acquire)) > WINDOW_MS {
            self.reset_window(now);
        }
        let total = self.window_total.fetch_add(1, Ordering::AcqRel) + 1;
        if success {
            self.consecutive.store(0, Ordering::Release);
            return None;
        }
        let failures = self.window_failures.fetch_add(1, Ordering::AcqRel) + 1;
        let consecutive = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        let s = &self.settings;
        let by_count = s.consecutive_failures > 0 && consecutive >= s.consecutive_failures;
        let by_rate =
            total >= s.minimum_requests.max(1) && failures * 100 >= s.failure_percent * total;
        if (by_count || by_rate)
            && self
                .state
                .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.open(now, 0);
            return Some(Transition::Opened);
        }
        None
    }

    /// Releases the half-open probe slot without an outcome (the probe ended
    /// for a reason that says nothing about the upstream, e.g. the client
    /// went away): the next request becomes the probe at once instead of
    /// waiting for the stuck-probe timeout.
    ///
    /// Half-open goes back to open with its (already expired) open time, the
    /// state it was in just before the probe was admitted.
    pub fn cancel_probe(&self) {
        let _ = self
            .state
            .compare_exchange(HALF_OPEN, OPEN, Ordering::AcqRel, Ordering::Acquire);
    }

    fn open(&self, now: u64, reopens: u32) {
        let base = self.settings.open_duration.as_millis() as u64;
        let dur = base
            .saturating_mul(1u64 << reopens.min(16))
            .min(MAX_OPEN_MS.max(base));
        self.open_until.store(now + dur, Ordering::Release);
        self.state.store(OPEN, Ordering::Release);
    }

    fn reset_window(&self, now: u64) {
        self.window_start.store(now, Ordering::Release);
        self.window_total.store(0, Ordering::Release);
        self.window_failures.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(percent: u32, min: u32, consecutive: u32) -> Breaker {
        Breaker::new(BreakerSettings {
            failure_percent: percent,
            minimum_requests: min,
            consecutive_failures: consecutive,
            open_duration: Duration::from_millis(1000),
        })
    }

    #[test]
    fn opens_on_failure_percentage_over_minimum_volume() {
        let b = breaker(50, 4, 0);
        let t = 1_000_000;
        assert_eq!(b.record_at(t, false, false), None, "below minimum volume");
        assert_eq!(b.record_at(t, true, false), None);
        assert_eq!(b.record_at(t, true, false), None);
        assert_eq!(
            b.record_at(t, false, false),
            Some(Transition::Opened),
            "2 of 4 = 50%"
        );
        assert_eq!(b.state(), BreakerState::Open);
        assert!(
            matches!(b.admit_at(t + 10), Admission::Rejected(d) if d <= Duration::from_millis(990))
        );
    }

    #[test]
    fn consecutive_mode_then_half_open_probe_closes() {
        let b = breaker(100, 1000, 3);
        let t = 2_000_000;
        b.record_at(t, false, false);
        b.record_at(t, false, false);
        assert_eq!(b.record_at(t, false, false), Some(Transition::Opened));
        assert!(matches!(b.admit_at(t + 999), Admission::Rejected(_)));
        assert_eq!(b.admit_at(t + 1000), Admission::Probe);
        assert!(
            matches!(b.admit_at(t + 1001), Admission::Rejected(_)),
            "one probe at a time"
        );
        assert_eq!(b.record_at(t + 1100, true, true), Some(Transition::Closed));
        assert_eq!(b.admit_at(t + 1101), Admission::Allowed);
    }

    #[test]
    fn failed_probe_reopens_for_longer() {
        let b = breaker(100, 1000, 1);
        let t = 3_000_000;
        assert_eq!(b.record_at(t, false, false), Some(Transition::Opened));
        assert_eq!(b.admit_at(t + 1000), Admission::Probe);
        assert_eq!(b.record_at(t + 1000, false, true), None);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(
            matches!(b.admit_at(t + 2500), Admission::Rejected(_)),
            "second opening lasts 2 s"
        );
        assert_eq!(b.admit_at(t + 3000), Admission::Probe);
    }

    #[test]
    fn a_cancelled_probe_frees_the_slot_without_an_outcome() {
        let b = breaker(100, 1000, 1);
        let t = 5_000_000;
        assert_eq!(b.record_at(t, false, false), Some(Transition::Opened));
        assert_eq!(b.admit_at(t + 1000), Admission::Probe);
        assert!(matches!(b.admit_at(t + 1001), Admission::Rejected(_)));
        b.cancel_probe();
        assert_ne!(
            b.state(),
            BreakerState::Closed,
            "not closed by a cancelled probe"
        );
        assert_eq!(
            b.admit_at(t + 1002),
            Admission::Probe,
            "next request probes at once"
        );
        assert!(matches!(b.admit_at(t + 1002), Admission::Rejected(_)));
        assert_eq!(b.record_at(t + 1003, true, true), Some(Transition::Closed));
        b.cancel_probe();
        assert_eq!(b.state(), BreakerState::Closed, "no effect when closed");
        assert_eq!(b.admit_at(t + 1004), Admission::Allowed);
    }

    #[test]
    fn successes_reset_the_consecutive_count() {
        let b = breaker(100, 1000, 2);
        let t = 4_000_000;
        b.record_at(t, false, false);
        b.record_at(t, true, false);
        assert_eq!(b.record_at(t, false, false), None);
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
