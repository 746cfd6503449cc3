//! Failed sign-ins per client address: after [`MAX_FAILURES`] wrong
//! tokens (bearer header, session cookie or `POST /api/session`) within
//! [`WINDOW`], the address gets 429 with `Retry-After` on every
//! authenticated admin call until the window ends. A successful call
//! counts nothing. Memory is bounded: at most [`MAX_ADDRESSES`] addresses
//! are tracked (expired ones are dropped first, then the oldest).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed per address and window.
pub const MAX_FAILURES: u32 = 10;
/// The counting window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most.
pub const MAX_ADDRESSES: usize = 10_000;

/// Failure counts by client address.
#[derive(Default)]
pub struct Failures {
    by_addr: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Failures {
    /// `Some(seconds to wait)` when `addr` is over the limit.
    pub fn blocked(&self, addr: IpAddr) -> Option<u64> {
        let map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        let (start, n) = map.get(&addr)?;
        let left = WINDOW.checked_sub(start.elapsed())?;
        (*n >= MAX_FAILURES).then(|| left.as_secs().max(1))
    }

    /// Counts one failure of `addr`.
    pub fn fail(&self, addr: IpAddr) {
        let now = Instant::now();
        let mut map = self.by_addr.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&addr) && map.len() >= MAX_ADDRESSES {
            map.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if map.len() >= MAX_ADDRESSES {
                if let Some(oldest) = map.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let entry = map.entry(addr).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_and_stays_bounded() {
        let f = Failures::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..MAX_FAILURES - 1 {
            f.fail(a);
        }
        assert!(f.blocked(a).is_none());
        f.fail(a);
        assert!(f.blocked(a).is_some_and(|s| s <= 60));
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            f.fail(IpAddr::from(i.to_be_bytes()));
        }
        assert!(f.by_addr.lock().unwrap().len() <= MAX_ADDRESSES);
    }
}
