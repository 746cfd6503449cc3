//! Upstream runtimes: targets, their health, and load balancing.
//!
//! Selection runs on every request, so it is lock-free: round robin, weighted
//! and consistent hashing come from pingora-load-balancing's selection
//! algorithms (built once per snapshot); least-connections is power-of-two
//! choices over per-target in-flight counters. Health (active checks) and
//! passive ejection (consecutive connect failures) are atomics in a
//! [`TargetState`] that survives reloads while the target's address and
//! upstream name stay the same.
//!
//! When every target is down the selection still returns one ("panic mode",
//! as Envoy does): trying a maybe-dead target beats refusing for sure.

use crate::config::Balancer;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::selection::{
    consistent::KetamaHashing, BackendIter, BackendSelection, Random, RoundRobin,
};
use pingora_load_balancing::Backend;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use super::clock::now_ms;
/// What the consistent hash is computed from (as the config gives it).
pub use crate::config::HashKey;

/// Mutable health of one target, shared across config reloads.
#[derive(Debug)]
pub struct TargetState {
    /// Result of active health checks (true until a check says otherwise).
    pub healthy: AtomicBool,
    pub check_successes: AtomicU32,
    pub check_failures: AtomicU32,
    /// Consecutive connect failures (passive).
    pub connect_failures: AtomicU32,
    /// Passive ejection end, in [`now_ms`] time; 0 = not ejected.
    pub ejected_until: AtomicU64,
    /// Requests currently sent to this target.
    pub inflight: AtomicU32,
}

impl Default for TargetState {
    fn default() -> Self {
        TargetState {
            healthy: AtomicBool::new(true),
            check_successes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            connect_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            inflight: AtomicU32::new(0),
        }
    }
}

impl TargetState {
    /// Healthy and not ejected.
    pub fn available(&self, now: u64) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.ejected_until.load(Ordering::Relaxed) <= now
    }

    /// Records a connect failure; ejects after `max` in a row. Returns true when it ejected.
    pub fn connect_failed(&self, max: u32, eject: Duration) -> bool {
        let n = self.connect_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= max {
            self.connect_failures.store(0, Ordering::Relaxed);
            self.ejected_until
                .store(now_ms() + eject.as_millis() as u64, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Records a successful connect.
    pub fn connected(&self) {
        if self.connect_failures.load(Ordering::Relaxed) != 0 {
            self.connect_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Applies one active check result with thresholds; returns the new state if it flipped.
    pub fn record_check(&self, ok: bool, healthy_after: u32, unhealthy_after: u32) -> Option<bool> {
        if ok {
            self.check_failures.store(0, Ordering::Relaxed);
            let n = self.check_successes.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= healthy_after && !self.healthy.swap(true, Ordering::Relaxed) {
                return Some(true);
            }
        } else {
            self.check_successes.store(0, Ordering::Relaxed);
            let n = self.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= unhealthy_after && self.healthy.swap(false, Ordering::Relaxed) {
                return Some(false);
            }
        }
        None
    }
}

/// One resolved target of an upstream.
pub struct Target {
    /// As written in the config (for logs).
    pub url: String,
    pub addr: SocketAddr,
    /// Host name (for `Host` and SNI).
    pub host: String,
    pub weight: u32,
    /// `Host` header value sent upstream (host, plus port when not default).
    pub host_header: http::HeaderValue,
    /// Peer template, cloned per attempt.
    pub peer: HttpPeer,
    /// pingora-load-balancing view of this target (for health checks).
    pub backend: Backend,
    pub state: Arc<TargetState>,
}

/// How a target is chosen.
pub enum Selector {
    RoundRobin(Arc<RoundRobin>),
    Random(Arc<Random>),
    Consistent(Arc<KetamaHashing>),
    LeastConnections,
}

/// Active health-check settings.
pub struct HealthSpec {
    pub interval: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub check: pingora_load_balancing::health_check::HttpHealthCheck,
}

/// A compiled upstream.
pub struct Upstream {
    pub name: Arc<str>,
    pub targets: Vec<Target>,
    pub selector: Selector,
    pub hash_key: HashKey,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub total_timeout: Duration,
    pub retries: u32,
    pub retry_backoff: Duration,
    pub passive_max_failures: u32,
    pub passive_eject: Duration,
    pub host_from_client: bool,
    pub health: Option<HealthSpec>,
    /// Circuit breaker, when enabled.
    pub breaker: Option<Arc<super::breaker::Breaker>>,
}

/// Builds the selection structure for targets (index stored in `Backend::ext`).
pub fn build_selector(balancer: Balancer, targets: &[Target]) -> Selector {
    let set: BTreeSet<Backend> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut b = t.backend.clone();
            b.ext.insert(i);
            b
        })
        .collect();
    match balancer {
        Balancer::RoundRobin | Balancer::Weighted => {
            Selector::RoundRobin(Arc::new(RoundRobin::build(&set)))
        }
        Balancer::ConsistentHash => Selector::Consistent(Arc::new(KetamaHashing::build(&set))),
        Balancer::LeastConnections | Balancer::P2c => Selector::LeastConnections,
        Balancer::Random => Selector::Random(Arc::new(Random::build(&set))),
    }
}

impl Upstream {
    /// Picks a target index for an attempt, avoiding `tried` targets and
    /// unavailable ones when possible. `key` feeds consistent hashing.
    pub fn select(&self, key: &[u8], tried: &[usize]) -> Option<usize> {
        let n = self.targets.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return Some(0);
        }
        let now = now_ms();
        let usable = |i: usize| !tried.contains(&i) && self.targets[i].state.available(now);
        let picked = match &self.selector {
            Selector::RoundRobin(s) => first_usable(s.iter(key), n, usable),
            Selector::Random(s) => first_usable(s.iter(key), n, usable),
            Selector::Consistent(s) => first_usable(s.iter(key), n, usable),
            Selector::LeastConnections => self.power_of_two(&usable),
        };
        // Panic mode: nothing usable — prefer an untried target, then anything.
        picked
            .or_else(|| (0..n).find(|i| !tried.contains(i)))
            .or(Some(fastrand::usize(..n)))
    }

    fn power_of_two(&self, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = self.targets.len();
        let candidates: Vec<usize> = (0..n).filter(|&i| usable(i)).collect();
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            len => {
                let i = fastrand::usize(..len);
                let mut j = fastrand::usize(..len - 1);
                if j >= i {
                    j += 1;
                }
                let (a, b) = (candidates[i], candidates[j]);
                let load = |i: usize| {
                    let t = &self.targets[i];
                    (t.state.inflight.load(Ordering::Relaxed) as u64 + 1) * 1000
                        / t.weight.max(1) as u64
                };
                Some(if load(a) <= load(b) { a } else { b })
            }
        }
    }
}

fn first_usable<I: BackendIter>(
    mut it: I,
    n: usize,
    usable: impl Fn(usize) -> bool,
) -> Option<usize> {
    // Each algorithm may repeat targets; bound the walk.
    for _ in 0..n * 4 {
        let b = it.next()?;
        if let Some(&i) = b.ext.get::<usize>() {
            if usable(i) {
                return Some(i);
            }
        }
    }
    None
}
