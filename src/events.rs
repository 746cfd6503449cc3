//! The in-process event bus: gateway events (`circuit_breaker.opened`,
//! `rate_limit.exceeded`, `auth.failure`, `upstream.failure`, config
//! changes, …) for every subscriber (metrics, SSE, NATS, webhooks).
//!
//! Emitting never blocks and never allocates without bound: a bounded
//! broadcast channel whose slow receivers skip ahead (they are told how many
//! events they missed). With no subscriber an event is only logged.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::broadcast;

/// Events retained for slow subscribers before they skip ahead.
const CAPACITY: usize = 1024;

/// One gateway event.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// e.g. `circuit_breaker.opened`.
    pub kind: &'static str,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Event-specific fields.
    pub data: serde_json::Value,
}

/// The bus.
pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
    pub emitted: AtomicU64,
    /// Events SSE clients missed by falling behind.
    pub dropped: AtomicU64,
}

/// The process-wide bus.
pub fn bus() -> &'static EventBus {
    static BUS: OnceLock<EventBus> = OnceLock::new();
    BUS.get_or_init(|| EventBus {
        tx: broadcast::channel(CAPACITY).0,
        emitted: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
    })
}

impl EventBus {
    /// A new subscription (sees events emitted from now on).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}

/// Emits an event: logged, counted, broadcast. Never blocks.
pub fn emit(kind: &'static str, data: serde_json::Value) {
    let time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    tracing::info!(target: "flexgate::events", event = kind, data = %data, "event");
    let b = bus();
    b.emitted.fetch_add(1, Ordering::Relaxed);
    let _ = b.tx.send(Arc::new(Event {
        kind,
        time_ms,
        data,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_receive_events_and_slow_ones_skip_ahead() {
        let mut rx = bus().subscribe();
        emit("test.one", serde_json::json!({"n": 1}));
        assert_eq!(rx.try_recv().unwrap().kind, "test.one");
        for i in 0..CAPACITY + 10 {
            emit("test.flood", serde_json::json!({ "n": i }));
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
        assert_eq!(rx.try_recv().unwrap().kind, "test.flood");
    }
}
