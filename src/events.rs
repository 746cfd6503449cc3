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
//!
//! Every event has an `id` (`evt_<32 hex>`), the idempotency key webhook
//! receivers see. Facts of the whole cluster (a config version going live
//! in database mode) get an id derived from the fact, so the same fact seen
//! by every node is delivered once.
//!
//! High-rate events — those a client can trigger at will
//! ([`Event::is_high_rate`]: `request.error`, `rate_limit.exceeded`,
//! `auth.failure`) — go through [`emit_counted`]: at most
//! [`HIGH_RATE_PER_SECOND`] per second and kind reach the bus, each with a
//! `count` of the occurrences it stands for; occurrences left out are folded
//! into the next one that passes, or, by [`Flusher`] within a second, into
//! an event holding only `count` and `folded: true`. The sum of `count`
//! is the exact number of occurrences.

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
    /// An active health check marked a target healthy again.
    UpstreamHealthy,
    /// An active health check marked a target unhealthy.
    UpstreamUnhealthy,
    /// A webhook subscription was disabled (410 Gone, or failing too long).
    WebhookDisabled,
}

impl Event {
    /// Every event, in the order the docs list them.
    pub const ALL: [Event; 15] = [
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
        Event::UpstreamHealthy,
        Event::UpstreamUnhealthy,
        Event::WebhookDisabled,
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
            Event::UpstreamHealthy => "upstream.healthy",
            Event::UpstreamUnhealthy => "upstream.unhealthy",
            Event::WebhookDisabled => "webhook.disabled",
        }
    }

    /// Events a client can trigger at will: emitted through
    /// [`emit_counted`], coalesced by webhooks.
    pub const fn is_high_rate(self) -> bool {
        matches!(
            self,
            Event::RequestError | Event::RateLimitExceeded | Event::AuthFailure
        )
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
    /// Unique per event (`evt_<32 hex>`), or derived from a cluster-wide fact.
    pub id: String,
    pub kind: Event,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Event-specific fields.
    pub data: serde_json::Value,
}

impl Emitted {
    /// The event as webhooks, NATS and the alerts stream carry it:
    /// `{id, type, time, node, data}` (`time` in RFC 3339 with milliseconds).
    pub fn envelope(&self, node: &str) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "type": self.kind,
            "time": crate::clock::rfc3339_ms(self.time_ms),
            "node": node,
            "data": self.data,
        })
    }
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

/// A new event id: `evt_` and 128 random bits in hex.
pub fn new_id() -> String {
    format!("evt_{:032x}", fastrand::u128(..))
}

/// Emits an event: logged, counted, broadcast. Never blocks.
pub fn emit(kind: Event, data: serde_json::Value) {
    emit_with_id(kind, new_id(), data);
}

/// [`emit`] with a given id: a fact of the whole cluster, which every node
/// may emit, names itself (`config.changed` of version 7 in database mode
/// is `evt_config_v7`), so webhooks deliver it once.
pub fn emit_with_id(kind: Event, id: String, data: serde_json::Value) {
    tracing::info!(target: "flexgate::events", event = kind.name(), id = %id, data = %data, "event");
    let b = bus();
    b.emitted.fetch_add(1, Ordering::Relaxed);
    let _ = b.tx.send(Arc::new(Emitted {
        id,
        kind,
        time_ms: crate::clock::unix_now_ms(),
        data,
    }));
}

/// High-rate events of one kind that reach the bus per second.
pub const HIGH_RATE_PER_SECOND: u64 = 10;

static REQUEST_ERRORS: Gate = Gate::new(HIGH_RATE_PER_SECOND);
static RATE_LIMITS: Gate = Gate::new(HIGH_RATE_PER_SECOND);
static AUTH_FAILURES: Gate = Gate::new(HIGH_RATE_PER_SECOND);

fn gate(kind: Event) -> Option<&'static Gate> {
    match kind {
        Event::RequestError => Some(&REQUEST_ERRORS),
        Event::RateLimitExceeded => Some(&RATE_LIMITS),
        Event::AuthFailure => Some(&AUTH_FAILURES),
        _ => None,
    }
}

/// One occurrence of a high-rate event ([`Event::is_high_rate`]). A
/// `notable` occurrence is emitted when this second's allowance is not used
/// up, with `data()` plus `count` (itself and the occurrences left out
/// before it); anything else is only counted (one atomic addition; `data`
/// is never built). Lock-free: this runs on the request path.
pub fn emit_counted(kind: Event, notable: bool, data: impl FnOnce() -> serde_json::Value) {
    let Some(gate) = gate(kind) else {
        emit(kind, data());
        return;
    };
    if let Some(count) = gate.count(crate::clock::unix_now(), notable) {
        let mut data = data();
        if let serde_json::Value::Object(map) = &mut data {
            map.insert("count".into(), count.into());
        }
        emit(kind, data);
    }
}

/// Emits, per high-rate kind, one event for the occurrences left out since
/// the last one emitted: `{"count": n, "folded": true}`.
pub fn flush_counted() {
    for kind in Event::ALL {
        if let Some(gate) = gate(kind) {
            let n = gate.take_left_out();
            if n > 0 {
                emit(kind, serde_json::json!({"count": n, "folded": true}));
            }
        }
    }
}

/// Background task: [`flush_counted`] every second, so the count of every
/// occurrence reaches the bus within about a second.
pub struct Flusher;

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for Flusher {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    flush_counted();
                    return;
                }
                _ = tick.tick() => flush_counted(),
            }
        }
    }
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
    /// allowance is used up (the occurrence is counted as left out).
    /// `now_secs` is the current Unix second.
    pub fn pass(&self, now_secs: u64) -> Option<u64> {
        if self.second.load(Ordering::Relaxed) != now_secs
            && self.second.swap(now_secs, Ordering::Relaxed) != now_secs
        {
            self.sent.store(0, Ordering::Relaxed);
        }
        if self.sent.fetch_add(1, Ordering::Relaxed) < self.per_second {
            Some(self.left_out.swap(0, Ordering::Relaxed))
        } else {
            self.left_out.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// One occurrence: `Some(count)` when it is to be emitted (standing
    /// for itself and the `count - 1` left out before it), `None` when it
    /// is only counted (not notable, or over this second's allowance).
    pub fn count(&self, now_secs: u64, notable: bool) -> Option<u64> {
        if notable {
            self.pass(now_secs).map(|left_out| left_out + 1)
        } else {
            self.left_out.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// The occurrences left out since the last emitted one, reset to 0.
    pub fn take_left_out(&self) -> u64 {
        self.left_out.swap(0, Ordering::Relaxed)
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
        assert!(Event::is_known_filter("circuit_breaker.*"));
        assert!(!Event::is_known_filter("circuit.*"));
        assert!(!Event::is_known_filter("circuit_breaker*"));
        assert!(!Event::is_known_filter("request.errors"));
        assert!(Event::CircuitBreakerClosed.matches("circuit_breaker.*"));
        assert!(!Event::UpstreamFailure.matches("circuit_breaker.*"));
        assert!(Event::UpstreamFailure.matches("*"));
    }

    #[test]
    fn counted_occurrences_add_up_across_passes_and_the_flush() {
        let gate = Gate::new(HIGH_RATE_PER_SECOND);
        let (mut total, mut emitted) = (0, 0);
        for i in 0..1000u64 {
            // Two seconds' worth, a third of them notable.
            if let Some(count) = gate.count(100 + i / 500, i % 3 == 0) {
                total += count;
                emitted += 1;
            }
        }
        total += gate.take_left_out();
        assert_eq!(total, 1000, "every occurrence is counted once");
        assert_eq!(emitted, 2 * HIGH_RATE_PER_SECOND);
    }
}
