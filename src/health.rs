//! Active health checks: a background service that probes every target of
//! every upstream with a `healthCheck`, on that upstream's interval, using
//! pingora-load-balancing's HTTP check (GET path, 2xx/3xx = healthy), and
//! flips [`TargetState::healthy`] after the configured thresholds.
//!
//! It reads the live snapshot each round, so reloads add and remove checks
//! without restarting anything; target state survives reloads.

use crate::reload::ConfigHandle;
use crate::snapshot::upstream::TargetState;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_load_balancing::health_check::HealthCheck;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A target that changed state.
pub struct Transition<'a> {
    pub upstream: &'a str,
    pub target: &'a str,
    pub healthy: bool,
    /// The failed check's error (unhealthy only).
    pub error: Option<&'a str>,
}

/// The health-check background service.
pub struct HealthChecker {
    pub config: Arc<ConfigHandle>,
    /// Told of every state change (the process emits `upstream.healthy` /
    /// `upstream.unhealthy` on the event bus).
    pub on_change: Box<dyn Fn(Transition<'_>) + Send + Sync>,
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut next_due: HashMap<Arc<str>, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let snap = self.config.current();
            let now = Instant::now();
            for up in &snap.upstreams {
                let Some(spec) = &up.health else { continue };
                let due = next_due.entry(up.name.clone()).or_insert(now);
                if *due > now {
                    continue;
                }
                *due = now + spec.interval;
                let probes = up.targets.iter().map(|t| {
                    let check = &spec.check;
                    async move { (check.check(&t.backend).await, t) }
                });
                for (result, target) in futures::future::join_all(probes).await {
                    let state: &TargetState = &target.state;
                    if let Some(up_now) = state.record_check(
                        result.is_ok(),
                        spec.healthy_threshold,
                        spec.unhealthy_threshold,
                    ) {
                        let error = result.err().map(|e| e.to_string());
                        if up_now {
                            tracing::info!(upstream = %up.name, target = %target.url, "target is healthy again");
                        } else {
                            tracing::warn!(upstream = %up.name, target = %target.url, error = %error.clone().unwrap_or_default(), "target marked unhealthy");
                        }
                        (self.on_change)(Transition {
                            upstream: &up.name,
                            target: &target.url,
                            healthy: up_now,
                            error: error.as_deref(),
                        });
                    }
                }
            }
            next_due.retain(|name, _| snap.upstreams.iter().any(|u| &u.name == name));
        }
    }
}
