//! The senders: lease due deliveries, POST them, record each attempt.
//!
//! One loop per node leases due deliveries from the store (woken by new
//! deliveries, replays, or every [`POLL_INTERVAL`]), at most
//! [`CONCURRENCY`] in flight and [`PER_SUBSCRIPTION`] per subscription,
//! and runs each attempt as its own task. A lease lasts the subscription's
//! `timeout` plus [`LEASE_MARGIN`], and the attempt is cut at that
//! `timeout` whatever the config says meanwhile: if this node dies
//! mid-attempt, another node (or this one after a restart) takes the
//! delivery when the lease expires. Delivery is at least once: an attempt
//! whose answer was lost is sent again, with the same `webhook-id`.
//! Leases compare the nodes' clocks: keep them in sync (NTP), or a node
//! whose clock runs ahead by more than a lease can take a live one.
//!
//! An attempt ends in one of:
//! - **success** (2xx);
//! - **retry**: any other answer or a transport failure, while retries
//!   remain. Retry `n` waits a random time in `[0, min(maxDelay,
//!   initialDelay × backoffMultiplier^(n-1))]` (full jitter), and at least
//!   the `Retry-After` of a 429 or 503 (up to a day);
//! - **dead letter** (`failed`): retries exhausted, or the address refused
//!   by the outbound policy; replayable through the admin API;
//! - **gone**: `410 Gone` fails the delivery and disables the subscription.
//!
//! After each attempt the subscription's failing streak is updated; a
//! subscription that has failed for `autoDisableAfter` without one
//! success is disabled.

use super::client::{self, Error};
use super::delivery::{Delivery, DeliveryStatus};
use super::{sign, Subscription, Webhooks};
use crate::config::SsrfPolicy;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Attempts in flight per node.
pub const CONCURRENCY: usize = 16;
/// Attempts in flight per node and subscription: a receiver that hangs
/// cannot take every sender.
pub const PER_SUBSCRIPTION: usize = 4;
/// How often the store is asked for due deliveries without a wake-up.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// A lease outlives the attempt's timeout by this much.
pub const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// How often queue depths are refreshed.
const HOUSEKEEPING: Duration = Duration::from_secs(5);
/// Old deliveries are pruned every this many housekeeping rounds (a minute).
const PRUNE_EVERY: u32 = 12;
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    /// Scheduled again (`next_attempt_ms`).
    Retry,
    /// A dead letter.
    Failed,
    /// `410 Gone`: failed, and the subscription is to be disabled.
    Gone,
}

/// The upper bound of the wait before retry `n` (n ≥ 1).
pub fn backoff_cap(sub: &Subscription, n: u32) -> Duration {
    let factor = sub
        .backoff_multiplier
        .powi(n.saturating_sub(1).min(64) as i32);
    let ms = (sub.initial_delay.as_millis() as f64 * factor).min(sub.max_delay.as_millis() as f64);
    Duration::from_millis(ms as u64)
}

/// The wait before retry `n`: full jitter under [`backoff_cap`], and at
/// least `retry_after`.
pub fn backoff(sub: &Subscription, n: u32, retry_after: Option<Duration>) -> Duration {
    let cap = backoff_cap(sub, n).as_millis() as u64;
    let jittered = Duration::from_millis(fastrand::u64(0..=cap));
    match retry_after {
        Some(r) => jittered.max(r.min(MAX_RETRY_AFTER)),
        None => jittered,
    }
}

/// The attempt-result label of an answer or failure.
fn result_label(r: &Result<client::Response, Error>) -> &'static str {
    match r {
        Ok(resp) => match resp.status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "1xx",
        },
        Err(Error::Refused(_)) => "refused",
        Err(Error::Transport(_)) => "error",
    }
}

/// One attempt of `d` to `sub`: signs, POSTs, and updates `d` (attempts,
/// last status/error/latency/snippet, status, next attempt). `max_retries`
/// is the retries allowed after the first attempt.
pub async fn attempt(
    sub: &Subscription,
    d: &mut Delivery,
    policy: &SsrfPolicy,
    allowed_hosts: &[String],
    max_retries: u32,
) -> Verdict {
    let timestamp = crate::clock::unix_now();
    let mut headers = vec![
        ("webhook-id".to_string(), d.event_id.clone()),
        ("webhook-timestamp".to_string(), timestamp.to_string()),
    ];
    let signature = sign::signature(&sub.keys, &d.event_id, timestamp, d.payload.as_bytes());
    if !signature.is_empty() {
        headers.push(("webhook-signature".to_string(), signature));
    }
    headers.extend(sub.headers.iter().cloned());
    let started = Instant::now();
    let result = client::post(client::Request {
        url: &sub.url,
        body: d.payload.as_bytes(),
        headers,
        connect_timeout: sub.connect_timeout,
        timeout: sub.timeout,
        policy,
        allowed_hosts,
    })
    .await;
    let elapsed = started.elapsed();
    let m = crate::metrics::metrics();
    m.webhook_attempts
        .with_label_values(&[&sub.id, result_label(&result)])
        .inc();
    m.webhook_attempt_duration
        .with_label_values(&[&sub.id])
        .observe(elapsed.as_secs_f64());
    let now = crate::clock::unix_now_ms();
    d.attempts += 1;
    d.updated_ms = now;
    d.last_latency_ms = Some(elapsed.as_millis() as u64);
    let (verdict, retry_after) = match &result {
        Ok(resp) => {
            d.last_status = Some(resp.status);
            d.response_snippet = Some(resp.snippet.clone()).filter(|s| !s.is_empty());
            match resp.status {
                200..=299 => {
                    d.last_error = None;
                    (Verdict::Succeeded, None)
                }
                410 => {
                    d.last_error =
                        Some("410 Gone: the receiver asked to stop; subscription disabled".into());
                    (Verdict::Gone, None)
                }
                s => {
                    d.last_error = Some(match s {
                        300..=399 => format!("answered {s} (redirects are not followed)"),
                        _ => format!("answered {s}"),
                    });
                    let honoured = matches!(s, 429 | 503).then_some(resp.retry_after).flatten();
                    (Verdict::Retry, honoured)
                }
            }
        }
        Err(e) => {
            d.last_status = None;
            d.response_snippet = None;
            d.last_error = Some(e.to_string());
            match e {
                Error::Refused(_) => (Verdict::Failed, None),
                Error::Transport(_) => (Verdict::Retry, None),
            }
        }
    };
    let verdict = match verdict {
        Verdict::Retry if d.attempts > max_retries => {
            let why = d.last_error.take().unwrap_or_default();
            d.last_error = Some(format!(
                "gave up after {} attempts; last: {why}",
                d.attempts
            ));
            Verdict::Failed
        }
        v => v,
    };
    match verdict {
        Verdict::Succeeded => {
            d.status = DeliveryStatus::Succeeded;
            d.next_attempt_ms = None;
        }
        Verdict::Retry => {
            d.status = DeliveryStatus::Pending;
            let wait = backoff(sub, d.attempts, retry_after);
            d.next_attempt_ms = Some(now + wait.as_millis() as u64);
        }
        Verdict::Failed | Verdict::Gone => {
            d.status = DeliveryStatus::Failed;
            d.next_attempt_ms = None;
        }
    }
    let outcome = match verdict {
        Verdict::Succeeded => "succeeded",
        Verdict::Retry => "retried",
        Verdict::Failed | Verdict::Gone => "failed",
    };
    m.webhook_deliveries
        .with_label_values(&[&sub.id, outcome])
        .inc();
    verdict
}

/// The sender background task.
pub struct Sender {
    pub webhooks: Arc<Webhooks>,
}

impl Sender {
    /// Runs one leased delivery to its recorded end; returns its
    /// subscription's id. The attempt takes at most `lease_timeout` (the
    /// timeout its lease was taken for), whatever the config says by then.
    async fn run(webhooks: Arc<Webhooks>, mut d: Delivery, lease_timeout: Duration) -> String {
        let id = d.webhook_id.clone();
        let subs = webhooks.subscriptions();
        let Some(sub) = subs.get(&d.webhook_id).filter(|s| s.enabled).cloned() else {
            // Deleted or disabled meanwhile: give the lease back untouched.
            let _ = webhooks.store.finish(&d).await;
            return id;
        };
        let (policy, hosts) = webhooks.policy();
        let verdict = tokio::time::timeout(
            lease_timeout,
            attempt(&sub, &mut d, &policy, &hosts, sub.max_retries),
        )
        .await;
        let Ok(verdict) = verdict else {
            // Out of lease: another sender may have it now; record nothing.
            return id;
        };
        if let Err(e) = webhooks.store.finish(&d).await {
            tracing::warn!(webhook = %sub.id, delivery = %d.id, "recording a webhook attempt failed: {e}");
        }
        let now = crate::clock::unix_now_ms();
        let success = verdict == Verdict::Succeeded;
        let failing_since = match webhooks.store.record_outcome(&sub.id, success, now).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(webhook = %sub.id, "recording webhook health failed: {e}");
                None
            }
        };
        if verdict == Verdict::Gone {
            webhooks
                .disable(&sub.id, "the receiver answered 410 Gone")
                .await;
        } else if let Some(since) = failing_since {
            let failing = Duration::from_millis(now.saturating_sub(since));
            if failing >= sub.auto_disable_after {
                let reason = format!(
                    "every delivery failed for {}s (autoDisableAfter); last error: {}",
                    failing.as_secs(),
                    d.last_error.as_deref().unwrap_or("-")
                );
                webhooks.disable(&sub.id, &reason).await;
            }
        }
        id
    }

    /// Queue depths to the gauge; finished and orphaned deliveries pruned
    /// every [`PRUNE_EVERY`] rounds.
    async fn housekeeping(&self, round: u32) {
        let subs = self.webhooks.subscriptions();
        let live: Vec<String> = subs.all.iter().map(|s| s.id.clone()).collect();
        if round % PRUNE_EVERY == 0 {
            let pruned = self
                .webhooks
                .store
                .prune(&live, crate::clock::unix_now_ms())
                .await;
            if let Err(e) = pruned {
                tracing::debug!("pruning webhook deliveries failed: {e}");
            }
        }
        let stored = self
            .webhooks
            .store
            .pending_counts()
            .await
            .unwrap_or_default();
        let unstored = self
            .webhooks
            .unstored
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let gauge = &crate::metrics::metrics().webhook_queue_depth;
        for id in &live {
            let n = stored.get(id).copied().unwrap_or(0) + unstored.get(id).copied().unwrap_or(0);
            gauge.with_label_values(&[id]).set(n as i64);
        }
    }
}

#[async_trait]
impl BackgroundService for Sender {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.webhooks.task_started();
        let mut running = tokio::task::JoinSet::new();
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut store_down = false;
        let mut in_flight: std::collections::HashMap<String, usize> = Default::default();
        let mut rounds = 0u32;
        let mut chores = tokio::time::interval(HOUSEKEEPING);
        chores.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    // Attempts in flight finish within their timeout, or
                    // their leases expire and they are sent again.
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        while running.join_next().await.is_some() {}
                    }).await;
                    self.webhooks.task_ended().await;
                    return;
                }
                _ = poll.tick() => {}
                _ = self.webhooks.wake.notified() => {}
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok(id) = done {
                        if let Some(n) = in_flight.get_mut(&id) {
                            *n = n.saturating_sub(1);
                        }
                    }
                }
                _ = chores.tick() => {
                    self.housekeeping(rounds).await;
                    rounds = rounds.wrapping_add(1);
                    continue;
                }
            }
            let subs = self.webhooks.subscriptions();
            // Per subscription, leased on its own and capped: a receiver
            // that hangs holds at most PER_SUBSCRIPTION slots, never the
            // others' turn.
            for sub in subs.all.iter().filter(|s| s.enabled) {
                let free = CONCURRENCY.saturating_sub(running.len());
                let own = in_flight.get(&sub.id).copied().unwrap_or(0);
                let max = free.min(PER_SUBSCRIPTION.saturating_sub(own));
                if max == 0 {
                    continue;
                }
                let lease = sub.timeout + LEASE_MARGIN;
                let now = crate::clock::unix_now_ms();
                match self
                    .webhooks
                    .store
                    .lease_due(
                        std::slice::from_ref(&sub.id),
                        now,
                        lease.as_millis() as u64,
                        max,
                    )
                    .await
                {
                    Ok(due) => {
                        if std::mem::take(&mut store_down) {
                            tracing::info!("webhook deliveries flow again");
                        }
                        for d in due {
                            *in_flight.entry(sub.id.clone()).or_default() += 1;
                            // The attempt ends well inside its lease.
                            let deadline = sub.timeout;
                            running.spawn(Self::run(self.webhooks.clone(), d, deadline));
                        }
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut store_down, true) {
                            tracing::warn!("webhook deliveries wait: {e}");
                        }
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WebhookConfig;

    fn sub() -> Subscription {
        Subscription::compile(&WebhookConfig {
            url: "http://127.0.0.1:9/".into(),
            initial_delay: Some(crate::config::units::Millis(1_000)),
            max_delay: Some(crate::config::units::Millis(60_000)),
            ..Default::default()
        })
    }

    #[test]
    fn backoff_grows_exponentially_with_full_jitter_and_a_cap() {
        let s = sub();
        assert_eq!(backoff_cap(&s, 1), Duration::from_secs(1));
        assert_eq!(backoff_cap(&s, 2), Duration::from_secs(2));
        assert_eq!(backoff_cap(&s, 4), Duration::from_secs(8));
        assert_eq!(
            backoff_cap(&s, 20),
            Duration::from_secs(60),
            "capped at maxDelay"
        );
        let waits: Vec<Duration> = (0..200).map(|_| backoff(&s, 4, None)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(8)));
        assert!(
            waits.iter().any(|w| *w < Duration::from_secs(4)),
            "jittered"
        );
        assert!(
            waits.iter().any(|w| *w > Duration::from_secs(4)),
            "jittered"
        );
        let honoured = backoff(&s, 1, Some(Duration::from_secs(30)));
        assert!(
            honoured >= Duration::from_secs(30),
            "Retry-After is a floor"
        );
    }
}
