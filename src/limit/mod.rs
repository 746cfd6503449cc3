//! Rate limiting: rules compiled from config, decided per request.
//!
//! - **Memory** (default): one [`counter::WindowCounter`] per rule: exact
//!   counts per key in fixed windows, lock-free, in fixed memory.
//!
//!   Memory does not grow with the number of clients: a rule keyed by
//!   address or consumer holds 65,536 counters (512 KiB) plus a 64 KiB
//!   fallback sketch; a rule over `all` about 64 KiB. Counts are exact for
//!   every client while a window sees fewer than about 50,000 distinct keys
//!   for one rule; beyond that, clients that find no counter are counted by
//!   the sketch, which may over-count but never lets more through. 20,000
//!   fresh addresses in one window cause no false 429 (`tests/address_limits.rs`).
//! - **Redis** (`rateLimit.backend: redis`): one atomic Lua round-trip per
//!   decision (`redis.rs`), shared by every node, so N nodes enforce one
//!   combined limit. A Redis call has 50 ms; on error, timeout or while Redis
//!   is marked down, the same rule is decided locally (per node), never 5xx.
//!
//! Keys (`by`): `ip` (default: the client address, trusted proxies
//! honoured; an IPv4-mapped IPv6 address is its IPv4 address, and IPv6
//! addresses count by their `rateLimit.ipv6Prefix`, /64 by default — see
//! [`address_key`]), `consumer` (API-key name; the address when anonymous), `all`
//! (one bucket for everyone).
//!
//! Rules survive a reload (counters kept) when their settings are unchanged.

pub mod counter;
pub mod redis;

use counter::WindowCounter;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// What a limit counts by (as the config writes it: `ip`, `consumer`, `all`).
pub use crate::config::LimitBy;

/// One compiled limit.
pub struct LimitRule {
    /// Stable id (`global`, `route:<id>`, `perRoute[2]`), part of Redis keys.
    pub id: String,
    pub max: u64,
    pub window: Duration,
    pub by: LimitBy,
    pub message: Option<String>,
    /// `100;w=60` for `RateLimit-Policy`.
    pub policy: String,
    local: WindowCounter,
}

/// Outcome of one rule for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window resets (≥ 1 when blocked).
    pub reset_secs: u64,
    /// The first request over the limit in this window (report it once).
    pub first_over: bool,
}

impl LimitRule {
    pub fn new(
        id: String,
        max: u64,
        window: Duration,
        by: LimitBy,
        message: Option<String>,
    ) -> LimitRule {
        let policy = format!("{max};w={}", window.as_secs().max(1));
        LimitRule {
            id,
            max,
            window,
            by,
            message,
            policy,
            local: WindowCounter::new(
                window,
                match by {
                    LimitBy::All => 16,
                    LimitBy::Ip | LimitBy::Consumer => 1 << 16,
                },
            ),
        }
    }

    /// True when `ip` has used up this budget in the current window (looks
    /// without counting; for the failed-authentication budget).
    pub fn exhausted(&self, ip: IpAddr) -> bool {
        self.local.peek(self.key_hash(ip, None)) >= self.max
    }

    /// Counts one event for `ip` and returns the count in this window.
    pub fn record(&self, ip: IpAddr) -> u64 {
        self.local.observe(self.key_hash(ip, None)).0
    }

    /// True when `other` has the same settings (its counters can be kept).
    pub fn same_settings(
        &self,
        max: u64,
        window: Duration,
        by: LimitBy,
        message: &Option<String>,
    ) -> bool {
        self.max == max && self.window == window && self.by == by && &self.message == message
    }

    /// The client key text for this rule.
    pub fn key_text(&self, ip: IpAddr, consumer: Option<&str>) -> String {
        match (self.by, consumer) {
            (LimitBy::All, _) => "all".to_string(),
            (LimitBy::Consumer, Some(c)) => format!("c:{c}"),
            _ => ip.to_string(),
        }
    }

    fn key_hash(&self, ip: IpAddr, consumer: Option<&str>) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        match (self.by, consumer) {
            (LimitBy::All, _) => 0u8.hash(&mut h),
            (LimitBy::Consumer, Some(c)) => c.hash(&mut h),
            _ => ip.hash(&mut h),
        }
        h.finish()
    }

    /// Decides locally (in-process counters).
    pub fn check_local(&self, ip: IpAddr, consumer: Option<&str>) -> Decision {
        let (count, left) = self.local.observe(self.key_hash(ip, consumer));
        self.decision(count, left)
    }

    /// Builds a decision from a count within the window and the time left.
    pub fn decision(&self, count: u64, left: Duration) -> Decision {
        let allowed = count <= self.max;
        Decision {
            allowed,
            limit: self.max,
            remaining: self.max.saturating_sub(count),
            reset_secs: left
                .as_secs_f64()
                .ceil()
                .max(if allowed { 0.0 } else { 1.0 }) as u64,
            first_over: count == self.max + 1,
        }
    }
}

/// The address a client is counted by: an IPv4-mapped IPv6 address is its
/// IPv4 address; other IPv6 addresses are cut to their first `v6_prefix`
/// bits (one subscriber's /64 is one client by default).
pub fn address_key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if v6_prefix < 128 => {
            let bits = u128::from(v6);
            let mask = u128::MAX
                .checked_shl(128 - u32::from(v6_prefix))
                .unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
        other => other,
    }
}

/// The rule list of a snapshot: global first, then path rules, then the route's.
#[derive(Default)]
pub struct LimitSet {
    pub global: Option<Arc<LimitRule>>,
    pub per_path: Vec<(crate::snapshot::router::PathPattern, Arc<LimitRule>)>,
    pub redis: bool,
}

impl LimitSet {
    /// Finds a rule with `id` in a previous set, to keep its counters.
    pub fn find(&self, id: &str) -> Option<&Arc<LimitRule>> {
        self.global
            .iter()
            .chain(self.per_path.iter().map(|(_, r)| r))
            .find(|r| r.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_limit_is_exact_at_the_boundary() {
        let rule = LimitRule::new("t".into(), 3, Duration::from_secs(60), LimitBy::Ip, None);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let d: Vec<Decision> = (0..4).map(|_| rule.check_local(ip, None)).collect();
        assert!(d[..3].iter().all(|d| d.allowed));
        assert_eq!(d[0].remaining, 2);
        assert_eq!(d[2].remaining, 0);
        assert!(!d[3].allowed);
        assert!(d[3].reset_secs >= 1 && d[3].reset_secs <= 60);
        assert!(rule.check_local(other, None).allowed, "keys are separate");
    }

    #[test]
    fn consumer_keys_fall_back_to_the_address() {
        let rule = LimitRule::new(
            "t".into(),
            1,
            Duration::from_secs(60),
            LimitBy::Consumer,
            None,
        );
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(rule.check_local(ip, Some("alice")).allowed);
        assert!(!rule.check_local(ip, Some("alice")).allowed);
        assert!(rule.check_local(ip, Some("bob")).allowed);
        assert!(rule.check_local(ip, None).allowed);
        assert_eq!(rule.key_text(ip, Some("bob")), "c:bob");
        assert_eq!(rule.key_text(ip, None), "10.0.0.1");
    }

    #[test]
    fn addresses_are_keyed_by_v4_or_v6_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(address_key(ip("::ffff:10.1.2.3"), 64), ip("10.1.2.3"));
        assert_eq!(address_key(ip("10.1.2.3"), 64), ip("10.1.2.3"));
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1"), 48),
            ip("2001:db8:1::")
        );
        assert_eq!(address_key(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        let rule = LimitRule::new("t".into(), 2, Duration::from_secs(60), LimitBy::Ip, None);
        assert!(!rule.exhausted(ip("10.0.0.9")));
        assert_eq!(rule.record(ip("10.0.0.9")), 1);
        assert_eq!(rule.record(ip("10.0.0.9")), 2);
        assert!(rule.exhausted(ip("10.0.0.9")));
        assert!(!rule.exhausted(ip("10.0.0.8")));
    }

    #[test]
    fn windows_reset() {
        let rule = LimitRule::new(
            "t".into(),
            1,
            Duration::from_millis(100),
            LimitBy::All,
            None,
        );
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(rule.check_local(ip, None).allowed);
        assert!(!rule.check_local(ip, None).allowed);
        std::thread::sleep(Duration::from_millis(250));
        assert!(rule.check_local(ip, None).allowed);
    }
}
