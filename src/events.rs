//! The in-process event bus: gateway events (`circuit_breaker.opened`,
//! `rate_limit.exceeded`, `auth.failure`, `upstream.failure`, config
//! changes, …) for every subscriber (metrics, SSE, NATS, webhooks).
//!
//! [`Event`] is the one list of what can be emitted: emitters name an
//! `Event`, never a string, and its names are the allow-list a webhook
//! subscription's `events` is checked against.
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

/// Everything the gateway emits on the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A 5xx answered to a client, by the gateway or the upstream.
    RequestError,
    /// A client went over a rate limit (once per key and window).
    RateLimitExceeded,
    /// The shared rate-limit backend (Redis) stopped answering.
    RateLimitBackendDown,
    /// The shared rate-limit backend answers again.
    RateLimitBackendUp,
    CircuitBreakerOpened,
    CircuitBreakerClosed,
    /// A target was ejected after consecutive connect failures.
    UpstreamFailure,
    /// Failed authentication (coalesced per address; see the proxy's auth).
    AuthFailure,
    /// A new config version is live.
    ConfigChanged,
    /// A reload was refused; the previous config stays live.
    ConfigRejected,
    /// A dependency (database, NATS) is reachable again.
    DependencyUp,
    /// A dependency (database, NATS) stopped answering.
    DependencyDown,
}

impl Event {
    /// Every event, in the order the docs list them.
    pub const ALL: [Event; 12] = [
        Event::RequestError,
        Event::RateLimitExceeded,
        Event::RateLimitBackendDown,
        Event::RateLimitBackendUp,
        Event::CircuitBreakerOpened,
        Event::CircuitBreakerClosed,
        Event::UpstreamFailure,
        Event::AuthFailure,
        Event::ConfigChanged,
        Event::ConfigRejected,
        Event::DependencyUp,
        Event::DependencyDown,
    ];

    /// The event's wire name (`circuit_breaker.opened`).
    pub const fn name(self) -> &'static str {
        match self {
            Event::RequestError => "request.error",
            Event::RateLimitExceeded => "rate_limit.exceeded",
            Event::RateLimitBackendDown => "rate_limit.backend_down",
            Event::RateLimitBackendUp => "rate_limit.backend_up",
            Event::CircuitBreakerOpened => "circuit_breaker.opened",
            Event::CircuitBreakerClosed => "circuit_breaker.closed",
            Event::UpstreamFailure => "upstream.failure",
            Event::AuthFailure => "auth.failure",
            Event::ConfigChanged => "config.changed",
            Event::ConfigRejected => "config.rejected",
            Event::DependencyUp => "dependency.up",
            Event::DependencyDown => "dependency.down",
        }
    }

    /// The event named `name`.
    pub fn from_name(name: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.name() == name)
    }

    /// True when `pattern` (a subscription's filter) is `*`, a known event
    /// name, or `<prefix>.*` matching at least one event
    /// (`circuit_breaker.*`).
    pub fn is_known_filter(pattern: &str) -> bool {
        Event::ALL.iter().any(|e| e.matches(pattern))
    }

    /// True when a subscription's filter `pattern` selects this event.
    pub fn matches(self, pattern: &str) -> bool {
        let name = self.name();
        match pattern.strip_suffix('*') {
            None => pattern == name,
            Some("") => true,
            Some(prefix) => prefix.ends_with('.') && name.starts_with(prefix),
        }
    }
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// One emitted event.
#[derive(Clone, Debug, Serialize)]
pub struct Emitted {
    pub kind: Event,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Event-specific fields.
    pub data: serde_json::Value,
}

/// The bus.
pub struct EventBus {
    tx: broadcast::Sender<Arc<Emitted>>,
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
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Emitted>> {
        self.tx.subscribe()
    }
}

/// Emits an event: logged, counted, broadcast. Never blocks.
pub fn emit(kind: Event, data: serde_json::Value) {
    let time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    tracing::info!(target: "flexgate::events", event = kind.name(), data = %data, "event");
    let b = bus();
    b.emitted.fetch_add(1, Ordering::Relaxed);
    let _ = b.tx.send(Arc::new(Emitted {
        kind,
        time_ms,
        data,
    }));
}

/// A lock-free cap on how many events of one kind are emitted per second,
/// for events a client can trigger at will (failed authentications, 5xx):
/// a flood becomes a trickle on the bus, in the log, on NATS and in
/// webhooks, and the next event that passes says how many were left out.
pub struct Gate {
    per_second: u64,
    second: AtomicU64,
    sent: AtomicU64,
    left_out: AtomicU64,
}

impl Gate {
    pub const fn new(per_second: u64) -> Gate {
        Gate {
            per_second,
            second: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            left_out: AtomicU64::new(0),
        }
    }

    /// `Some(left_out)` when an event may be emitted now (with the number
    /// left out since the last one that passed), `None` when this second's
    /// allowance is used up. `now_secs` is the current Unix second.
    pub fn pass(&self, now_secs: u64) -> Option<u64> {
        if self.second.swap(now_secs, Ordering::Relaxed) != now_secs {
            self.sent.store(0, Ordering::Relaxed);
        }
        if self.sent.fetch_add(1, Ordering::Relaxed) < self.per_second {
            Some(self.left_out.swap(0, Ordering::Relaxed))
        } else {
            self.left_out.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_receive_events_and_slow_ones_skip_ahead() {
        let mut rx = bus().subscribe();
        emit(Event::ConfigChanged, serde_json::json!({"n": 1}));
        assert_eq!(rx.try_recv().unwrap().kind, Event::ConfigChanged);
        for i in 0..CAPACITY + 10 {
            emit(Event::RequestError, serde_json::json!({ "n": i }));
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
        assert_eq!(rx.try_recv().unwrap().kind, Event::RequestError);
    }

    #[test]
    fn a_gate_lets_a_few_through_per_second_and_counts_the_rest() {
        let gate = Gate::new(3);
        let passed: Vec<_> = (0..10).map(|_| gate.pass(100)).collect();
        assert_eq!(&passed[..3], &[Some(0), Some(0), Some(0)]);
        assert!(passed[3..].iter().all(Option::is_none));
        assert_eq!(
            gate.pass(101),
            Some(7),
            "the next second reports what was left out"
        );
        assert_eq!(gate.pass(101), Some(0));
    }

    #[test]
    fn names_round_trip_and_are_unique() {
        for e in Event::ALL {
            assert_eq!(Event::from_name(e.name()), Some(e));
        }
        let mut names: Vec<_> = Event::ALL.iter().map(|e| e.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Event::ALL.len());
        assert!(Event::is_known_filter("*"));
        assert!(!Event::is_known_filter("request.errors"));
    }
}
