//! Webhooks: every event on the bus, delivered to the subscriptions that
//! asked for it as a signed POST, retried, coalesced, durable, and sent once
//! per cluster.
//!
//! Flow (all off the request path; emitting an event never waits):
//!
//! 1. [`dispatch`] reads the event bus, matches each event against the
//!    enabled subscriptions' `events` filters, folds high-rate events
//!    into per-subscription windows ([`coalesce`]) and puts the rest, and
//!    each closed window, in a bounded per-subscription outbox; it writes
//!    the outboxes to the [`delivery::DeliveryStore`] in batches.
//! 2. [`send`] leases due deliveries from the store, signs and POSTs each
//!    ([`sign`], [`client`]), and records the attempt: success, a retry
//!    later (exponential backoff with full jitter, `Retry-After`), or a
//!    dead letter.
//! 3. The admin API lists deliveries, replays dead letters and sends test
//!    events through [`Webhooks`].
//!
//! Parts: `delivery.rs` (the delivery and the store interface),
//! `journal.rs` (embedded store: an append-only file), `pg_store.rs`
//! (database store: leases with `FOR UPDATE SKIP LOCKED`), `sign.rs`
//! (Standard Webhooks signatures), `client.rs` (the outbound POST under the
//! SSRF policy), `coalesce.rs`, `dispatch.rs`, `send.rs`.

pub mod client;
pub mod coalesce;
pub mod delivery;
pub mod dispatch;
pub mod journal;
pub mod pg_store;
pub mod send;
pub mod sign;

use crate::config::WebhookConfig;
use crate::reload::ConfigHandle;
use arc_swap::ArcSwap;
use delivery::{Delivery, DeliveryStatus, DeliveryStore};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Disables a subscription (id, reason) through the audited config write
/// path; `Ok(true)` when this call disabled it, `Ok(false)` when it was
/// already disabled or gone. Given by the process (the admin layer owns
/// config writes).
pub type Disabler = Arc<
    dyn Fn(String, String) -> futures::future::BoxFuture<'static, Result<bool, String>>
        + Send
        + Sync,
>;

/// One subscription, compiled from its config with the defaults applied.
pub struct Subscription {
    pub id: String,
    pub enabled: bool,
    pub url: String,
    /// Filters (`*`, names, `prefix.*`); empty = every event.
    pub events: Vec<String>,
    pub max_retries: u32,
    pub initial_delay: Duration,
    pub backoff_multiplier: f64,
    pub max_delay: Duration,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub coalesce_window: Duration,
    pub auto_disable_after: Duration,
    pub headers: Vec<(String, String)>,
    pub keys: Vec<ring::hmac::Key>,
}

impl Subscription {
    /// A subscription of `webhooks:` (named by
    /// [`WebhookConfig::effective_id`]).
    pub fn compile(w: &WebhookConfig) -> Subscription {
        let ms = |v: Option<crate::config::units::Millis>, default: u64| {
            Duration::from_millis(v.map_or(default, |m| m.0))
        };
        Subscription {
            id: w.effective_id(),
            enabled: w.enabled.unwrap_or(true),
            url: w.url.clone(),
            events: w.events.clone(),
            max_retries: w.max_retries.unwrap_or(8),
            initial_delay: ms(w.initial_delay, 1_000),
            backoff_multiplier: w.backoff_multiplier.unwrap_or(2.0),
            max_delay: ms(w.max_delay, 3_600_000),
            connect_timeout: ms(w.connect_timeout, 5_000),
            timeout: ms(w.timeout, 15_000),
            coalesce_window: ms(w.coalesce_window, 10_000),
            auto_disable_after: ms(w.auto_disable_after, 24 * 3_600_000),
            headers: w
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            keys: sign::keys(w.secret.as_deref(), w.previous_secret.as_deref()),
        }
    }

    /// Whether this subscription receives `event`.
    pub fn wants(&self, event: crate::events::Event) -> bool {
        self.events.is_empty() || self.events.iter().any(|p| event.matches(p))
    }
}

/// The compiled subscriptions of one config version.
pub struct Subscriptions {
    pub version: u64,
    pub all: Vec<Arc<Subscription>>,
}

impl Subscriptions {
    pub fn get(&self, id: &str) -> Option<&Arc<Subscription>> {
        self.all.iter().find(|s| s.id == id)
    }

    /// The ids of the enabled subscriptions.
    pub fn enabled_ids(&self) -> Vec<String> {
        self.all
            .iter()
            .filter(|s| s.enabled)
            .map(|s| s.id.clone())
            .collect()
    }
}

/// What the dispatcher, the senders and the admin API share.
pub struct Webhooks {
    pub store: Arc<dyn DeliveryStore>,
    config: Arc<ConfigHandle>,
    subscriptions: ArcSwap<Subscriptions>,
    /// Wakes the senders (new deliveries, a replay).
    pub wake: tokio::sync::Notify,
    disabler: OnceLock<Disabler>,
    /// Deliveries the dispatcher holds, not stored yet (queue depth).
    pub unstored: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// The dispatcher and the sender still running.
    tasks: std::sync::atomic::AtomicUsize,
}

impl Webhooks {
    pub fn new(store: Arc<dyn DeliveryStore>, config: Arc<ConfigHandle>) -> Arc<Webhooks> {
        Arc::new(Webhooks {
            store,
            config,
            subscriptions: ArcSwap::from_pointee(Subscriptions {
                version: u64::MAX,
                all: Vec::new(),
            }),
            wake: tokio::sync::Notify::new(),
            disabler: OnceLock::new(),
            unstored: Default::default(),
            tasks: Default::default(),
        })
    }

    /// A webhook task (dispatcher, sender) starts.
    pub fn task_started(&self) {
        self.tasks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// A webhook task ends (shutdown); the last one closes the store.
    pub async fn task_ended(&self) {
        if self.tasks.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.store.close().await;
        }
    }

    /// Sets how subscriptions are disabled (once, at start).
    pub fn set_disabler(&self, d: Disabler) {
        let _ = self.disabler.set(d);
    }

    /// The live config's subscriptions (compiled again when its version moves).
    pub fn subscriptions(&self) -> Arc<Subscriptions> {
        let snap = self.config.current();
        let cached = self.subscriptions.load_full();
        if cached.version == snap.version {
            return cached;
        }
        let fresh = Arc::new(Subscriptions {
            version: snap.version,
            all: snap
                .source
                .webhooks
                .iter()
                .map(|w| Arc::new(Subscription::compile(w)))
                .collect(),
        });
        for gone in cached.all.iter().filter(|s| fresh.get(&s.id).is_none()) {
            crate::metrics::metrics().forget_webhook(&gone.id);
        }
        self.subscriptions.store(fresh.clone());
        fresh
    }

    /// The outbound policy of the live config: (SSRF policy, allowedHosts).
    fn policy(&self) -> (crate::config::SsrfPolicy, Vec<String>) {
        let snap = self.config.current();
        (snap.ssrf.clone(), snap.allowed_hosts.to_vec())
    }

    /// Disables a subscription (410 Gone, or failing too long): an audited
    /// config write, then `webhook.disabled` on the bus.
    pub async fn disable(&self, id: &str, reason: &str) {
        let Some(disable) = self.disabler.get() else {
            tracing::warn!(
                webhook = id,
                reason,
                "webhook should be disabled, but this process cannot write the config"
            );
            return;
        };
        match disable(id.to_string(), reason.to_string()).await {
            Ok(true) => {
                tracing::warn!(webhook = id, reason, "webhook subscription disabled");
                crate::events::emit(
                    crate::events::Event::WebhookDisabled,
                    serde_json::json!({"webhook": id, "reason": reason}),
                );
            }
            Ok(false) => {}
            Err(e) => tracing::error!(webhook = id, reason, "disabling the webhook failed: {e}"),
        }
    }

    /// Sends a `webhook.test` event to subscription `id` now (enabled or
    /// not), once, without retries; the delivery is kept in its log.
    /// `None`: no such subscription.
    pub async fn send_test(&self, id: &str) -> Result<Option<Delivery>, crate::store::StoreError> {
        let subs = self.subscriptions();
        let Some(sub) = subs.get(id).cloned() else {
            return Ok(None);
        };
        let now = crate::clock::unix_now_ms();
        let event_id = crate::events::new_id();
        let payload = serde_json::json!({
            "id": event_id,
            "type": "webhook.test",
            "time": crate::clock::rfc3339_ms(now),
            "node": crate::live::node_name(),
            "data": {"webhook": id, "message": "a test event from FlexGate"},
        });
        let mut d = new_delivery(&sub.id, event_id, "webhook.test", payload.to_string(), now);
        let (policy, hosts) = self.policy();
        send::attempt(&sub, &mut d, &policy, &hosts, 0).await;
        // Stored once attempted (never pending, so no sender takes it too).
        self.store.enqueue(std::slice::from_ref(&d)).await?;
        Ok(Some(d))
    }

    /// Replays a delivery (a dead letter, or a finished one) now.
    pub async fn replay(
        &self,
        webhook: &str,
        id: &str,
    ) -> Result<Option<Delivery>, crate::store::StoreError> {
        let d = self
            .store
            .replay(webhook, id, crate::clock::unix_now_ms())
            .await?;
        if d.is_some() {
            self.wake.notify_one();
        }
        Ok(d)
    }
}

/// A new pending delivery, due now.
pub fn new_delivery(
    webhook: &str,
    event_id: String,
    event_type: &str,
    payload: String,
    now_ms: u64,
) -> Delivery {
    Delivery {
        id: format!("dlv_{:032x}", fastrand::u128(..)),
        webhook_id: webhook.to_string(),
        event_id,
        event_type: event_type.to_string(),
        payload,
        status: DeliveryStatus::Pending,
        attempts: 0,
        created_ms: now_ms,
        updated_ms: now_ms,
        next_attempt_ms: Some(now_ms),
        last_status: None,
        last_error: None,
        last_latency_ms: None,
        response_snippet: None,
    }
}
