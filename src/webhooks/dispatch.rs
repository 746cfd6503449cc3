//! The dispatcher: from the event bus to stored deliveries.
//!
//! It reads the bus, and for each event and each enabled subscription that
//! wants it, either folds it into the subscription's open window of that
//! kind (high-rate events, [`super::coalesce`]) or renders its payload into
//! the subscription's outbox. Windows close after the subscription's
//! `coalesceWindow` and go to the outbox as one delivery.
//!
//! Every [`FLUSH_INTERVAL`] the outboxes are written to the store in one
//! batch and the senders are woken; an outbox is emptied only once the
//! store took the batch (ids are fixed before, so a batch stored twice is
//! stored once). Outboxes are bounded ([`OUTBOX_CAPACITY`] per
//! subscription): while the store cannot take them (database down) and one
//! fills up, its two oldest closed windows of one kind are merged into
//! one; with no two to merge, its oldest window is dropped, and only with
//! no window at all its oldest state change — each drop counted in
//! `flexgate_webhook_dropped_total`. The dispatcher never blocks the bus: a
//! slow store only delays the flush, and events the bus moved past while
//! it waited are counted as dropped.
//!
//! On shutdown the open windows are closed early and written (best effort,
//! within [`SHUTDOWN_FLUSH`]).

use super::coalesce::Window;
use super::delivery::Delivery;
use super::{new_delivery, Subscription, Webhooks};
use crate::events::{Emitted, Event};
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// How often outboxes are written to the store and windows checked.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// Entries one subscription's outbox holds while the store is unavailable.
pub const OUTBOX_CAPACITY: usize = 1000;
/// How long shutdown waits for the last write.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);

/// A delivery waiting to be stored: rendered, or a closed window (kept
/// open to merging until it is stored).
enum Entry {
    Ready(Delivery),
    Window(Window),
}

/// One subscription's state in the dispatcher.
#[derive(Default)]
struct Lane {
    /// Open windows by kind.
    open: HashMap<Event, Window>,
    outbox: VecDeque<Entry>,
}

/// Renders an event's payload for a subscription.
fn render(
    webhook: &str,
    id: String,
    kind: &str,
    time_ms: u64,
    data: serde_json::Value,
) -> Delivery {
    let payload = serde_json::json!({
        "id": id,
        "type": kind,
        "time": crate::clock::rfc3339_ms(time_ms),
        "node": crate::live::node_name(),
        "data": data,
    });
    new_delivery(
        webhook,
        id,
        kind,
        payload.to_string(),
        crate::clock::unix_now_ms(),
    )
}

impl Lane {
    /// Adds an entry; a full outbox merges windows, else drops its oldest
    /// window, else its oldest entry (counted).
    fn push(&mut self, webhook: &str, entry: Entry) {
        if self.outbox.len() >= OUTBOX_CAPACITY && !self.merge_oldest_windows() {
            let oldest_window = self
                .outbox
                .iter()
                .position(|e| matches!(e, Entry::Window(_)))
                .unwrap_or(0);
            self.outbox.remove(oldest_window);
            crate::metrics::metrics()
                .webhook_dropped
                .with_label_values(&[webhook])
                .inc();
        }
        self.outbox.push_back(entry);
    }

    /// Merges the two oldest closed windows of one kind; false when there
    /// are no two.
    fn merge_oldest_windows(&mut self) -> bool {
        let mut first: HashMap<Event, usize> = HashMap::new();
        let mut pair = None;
        for (i, e) in self.outbox.iter().enumerate() {
            if let Entry::Window(w) = e {
                if let Some(&j) = first.get(&w.kind) {
                    pair = Some((j, i));
                    break;
                }
                first.insert(w.kind, i);
            }
        }
        let Some((keep, fold)) = pair else {
            return false;
        };
        let Some(Entry::Window(later)) = self.outbox.remove(fold) else {
            return false;
        };
        if let Some(Entry::Window(w)) = self.outbox.get_mut(keep) {
            w.merge(later);
        }
        true
    }

    /// Closes the windows open for `window` or longer (all with `force`).
    fn close_due(&mut self, webhook: &str, window: Duration, now_ms: u64, force: bool) {
        let due: Vec<Event> = self
            .open
            .iter()
            .filter(|(_, w)| force || now_ms >= w.opened_ms + window.as_millis() as u64)
            .map(|(k, _)| *k)
            .collect();
        for kind in due {
            if let Some(w) = self.open.remove(&kind) {
                self.push(webhook, Entry::Window(w));
            }
        }
    }
}

/// The dispatcher background task.
pub struct Dispatcher {
    pub webhooks: Arc<Webhooks>,
}

struct State {
    lanes: HashMap<String, Lane>,
    /// The store refused the last batch (logged once per outage).
    store_down: bool,
}

impl State {
    fn route(&mut self, subs: &[Arc<Subscription>], e: &Emitted) {
        for sub in subs.iter().filter(|s| s.enabled && s.wants(e.kind)) {
            let lane = self.lanes.entry(sub.id.clone()).or_default();
            if e.kind.is_high_rate() {
                match lane.open.get_mut(&e.kind) {
                    Some(w) => w.add(e),
                    None => {
                        lane.open.insert(e.kind, Window::open(e));
                    }
                }
            } else {
                let d = render(
                    &sub.id,
                    e.id.clone(),
                    e.kind.name(),
                    e.time_ms,
                    e.data.clone(),
                );
                lane.push(&sub.id, Entry::Ready(d));
            }
        }
    }

    /// Closes due windows; drops the lanes of subscriptions gone or disabled.
    fn tick(&mut self, subs: &[Arc<Subscription>], now_ms: u64, force: bool) {
        self.lanes.retain(|id, lane| {
            let Some(sub) = subs.iter().find(|s| &s.id == id && s.enabled) else {
                return false;
            };
            lane.close_due(id, sub.coalesce_window, now_ms, force);
            !(lane.open.is_empty() && lane.outbox.is_empty())
        });
    }

    /// The outboxes rendered, in order, without emptying them (windows get
    /// their payload now, with the id they were given when they opened).
    fn batch(&self, now_ms: u64) -> Vec<Delivery> {
        let mut out = Vec::new();
        for (id, lane) in &self.lanes {
            for entry in &lane.outbox {
                out.push(match entry {
                    Entry::Ready(d) => d.clone(),
                    Entry::Window(w) => {
                        render(id, w.id.clone(), w.kind.name(), now_ms, w.data(now_ms))
                    }
                });
            }
        }
        out
    }

    /// Empties the outboxes (their batch was stored).
    fn stored(&mut self) {
        for lane in self.lanes.values_mut() {
            lane.outbox.clear();
        }
    }

    /// [`State::batch`] then [`State::stored`] (tests).
    #[cfg(test)]
    fn drain(&mut self, now_ms: u64) -> Vec<Delivery> {
        let out = self.batch(now_ms);
        self.stored();
        out
    }

    /// Deliveries not stored yet per subscription (open windows included).
    fn waiting(&self) -> HashMap<String, u64> {
        self.lanes
            .iter()
            .map(|(id, l)| (id.clone(), (l.outbox.len() + l.open.len()) as u64))
            .collect()
    }
}

impl Dispatcher {
    /// Writes the outboxes to the store; they are emptied once it took them.
    async fn flush(&self, state: &mut State) {
        let batch = state.batch(crate::clock::unix_now_ms());
        if batch.is_empty() {
            return;
        }
        match self.webhooks.store.enqueue(&batch).await {
            Ok(_) => {
                state.stored();
                if std::mem::take(&mut state.store_down) {
                    tracing::info!(
                        "webhook delivery store reachable again; queued deliveries stored"
                    );
                }
                self.webhooks.wake.notify_one();
            }
            Err(e) => {
                if !std::mem::replace(&mut state.store_down, true) {
                    tracing::warn!(
                        deliveries = batch.len(),
                        "webhook deliveries not stored yet (kept in memory, bounded, until the store answers): {e}"
                    );
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Dispatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.webhooks.task_started();
        let mut rx = crate::events::bus().subscribe();
        let mut state = State {
            lanes: HashMap::new(),
            store_down: false,
        };
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    let subs = self.webhooks.subscriptions();
                    state.tick(&subs.all, crate::clock::unix_now_ms(), true);
                    let _ = tokio::time::timeout(SHUTDOWN_FLUSH, self.flush(&mut state)).await;
                    self.webhooks.task_ended().await;
                    return;
                }
                event = rx.recv() => match event {
                    Ok(e) => {
                        let subs = self.webhooks.subscriptions();
                        state.route(&subs.all, &e);
                    }
                    Err(RecvError::Lagged(n)) => {
                        let subs = self.webhooks.subscriptions();
                        for id in subs.enabled_ids() {
                            crate::metrics::metrics().webhook_dropped.with_label_values(&[&id]).inc_by(n);
                        }
                        tracing::warn!(missed = n, "webhook dispatcher fell behind the event bus");
                    }
                    Err(RecvError::Closed) => {
                        self.webhooks.task_ended().await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    let subs = self.webhooks.subscriptions();
                    state.tick(&subs.all, crate::clock::unix_now_ms(), false);
                    self.flush(&mut state).await;
                    *self.webhooks.unstored.lock().unwrap_or_else(|p| p.into_inner()) = state.waiting();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WebhookConfig;

    fn sub(events: &[&str]) -> Vec<Arc<Subscription>> {
        let w = WebhookConfig {
            id: Some("h".into()),
            url: "http://127.0.0.1:9/".into(),
            events: events.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        vec![Arc::new(Subscription::compile(&w))]
    }

    fn event(kind: Event, n: u64) -> Emitted {
        Emitted {
            id: crate::events::new_id(),
            kind,
            time_ms: 1_000,
            data: serde_json::json!({"count": n, "key": "k"}),
        }
    }

    #[test]
    fn high_rate_events_fold_into_one_delivery_per_window_and_state_changes_never() {
        let subs = sub(&["*"]);
        let mut st = State {
            lanes: HashMap::new(),
            store_down: false,
        };
        for _ in 0..10_000 {
            st.route(&subs, &event(Event::RateLimitExceeded, 1));
        }
        st.route(&subs, &event(Event::CircuitBreakerOpened, 1));
        st.route(&subs, &event(Event::CircuitBreakerClosed, 1));
        st.tick(&subs, 5_000, false);
        let before_window = st.drain(5_000);
        assert_eq!(
            before_window
                .iter()
                .map(|d| d.event_type.as_str())
                .collect::<Vec<_>>(),
            ["circuit_breaker.opened", "circuit_breaker.closed"]
        );
        st.tick(&subs, 11_000, false);
        let closed = st.drain(11_000);
        assert_eq!(closed.len(), 1);
        let body: serde_json::Value = serde_json::from_str(&closed[0].payload).unwrap();
        assert_eq!(body["type"], "rate_limit.exceeded");
        assert_eq!(body["data"]["count"], 10_000);
        assert_eq!(body["id"], closed[0].event_id);
    }

    #[test]
    fn while_the_store_is_down_windows_keep_merging_and_state_changes_survive() {
        let subs = sub(&["*"]);
        let mut st = State {
            lanes: HashMap::new(),
            store_down: false,
        };
        st.route(&subs, &event(Event::CircuitBreakerOpened, 1));
        // Flushes fail (nothing leaves the outbox) while windows keep
        // closing, far more than the outbox holds.
        for i in 0..(2 * OUTBOX_CAPACITY as u64) {
            st.route(&subs, &event(Event::AuthFailure, 1));
            st.route(&subs, &event(Event::RateLimitExceeded, 3));
            st.tick(&subs, 1_000 + 10_000 * (i + 1), false);
            assert!(st.batch(0).len() <= OUTBOX_CAPACITY);
        }
        let first = st.batch(0);
        let again = st.batch(0);
        assert_eq!(
            first.iter().map(|d| &d.event_id).collect::<Vec<_>>(),
            again.iter().map(|d| &d.event_id).collect::<Vec<_>>(),
            "a batch retried carries the same ids"
        );
        let out = st.drain(0);
        assert_eq!(
            out[0].event_type, "circuit_breaker.opened",
            "the state change survives"
        );
        let count = |kind: &str| -> u64 {
            out.iter()
                .filter(|d| d.event_type == kind)
                .map(|d| {
                    serde_json::from_str::<serde_json::Value>(&d.payload).unwrap()["data"]["count"]
                        .as_u64()
                        .unwrap()
                })
                .sum()
        };
        assert_eq!(
            count("auth.failure"),
            2 * OUTBOX_CAPACITY as u64,
            "merged, none lost"
        );
        assert_eq!(count("rate_limit.exceeded"), 6 * OUTBOX_CAPACITY as u64);
    }

    #[test]
    fn filters_select_events() {
        let subs = sub(&["circuit_breaker.*"]);
        let mut st = State {
            lanes: HashMap::new(),
            store_down: false,
        };
        st.route(&subs, &event(Event::ConfigChanged, 1));
        st.route(&subs, &event(Event::CircuitBreakerOpened, 1));
        let out = st.drain(0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event_type, "circuit_breaker.opened");
    }

    #[test]
    fn a_full_outbox_merges_windows_then_drops_the_oldest() {
        let subs = sub(&["*"]);
        let mut st = State {
            lanes: HashMap::new(),
            store_down: false,
        };
        // Windows closing one after another while nothing is stored.
        for i in 0..(OUTBOX_CAPACITY as u64 + 50) {
            st.route(&subs, &event(Event::AuthFailure, 2));
            st.tick(&subs, 1_000 + 10_000 * (i + 1), false);
        }
        let out = st.drain(0);
        assert_eq!(out.len(), OUTBOX_CAPACITY);
        let total: u64 = out
            .iter()
            .map(|d| {
                serde_json::from_str::<serde_json::Value>(&d.payload).unwrap()["data"]["count"]
                    .as_u64()
                    .unwrap()
            })
            .sum();
        assert_eq!(
            total,
            2 * (OUTBOX_CAPACITY as u64 + 50),
            "merged, nothing lost"
        );
        // State changes cannot be merged: the oldest are dropped.
        for _ in 0..(OUTBOX_CAPACITY + 5) {
            st.route(&subs, &event(Event::ConfigChanged, 1));
        }
        assert_eq!(st.drain(0).len(), OUTBOX_CAPACITY);
    }
}
