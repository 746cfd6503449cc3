//! Every Prometheus metric of the gateway, in one place.
//!
//! Names are prefixed `flexgate_` and use base units (`_seconds`, `_total`).
//! Labels are bounded: route id, upstream name, method (the eight standard
//! ones, else `OTHER`) and status class — never a raw path or a client
//! value. The request path records through handles resolved once per route
//! when a snapshot is compiled ([`RouteMetrics`]), so recording is a few
//! atomic adds with no label lookup, no formatting and no lock. Gauges that
//! mirror state (breakers, health, config version) are set at scrape time
//! from plain values the caller reads off the live config
//! ([`ScrapeState`]): metrics take names and states, never the snapshot.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

/// Request-duration buckets: sub-millisecond to 30 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "OTHER",
];
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// The registry and the metric families.
pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_duration: HistogramVec,
    pub in_flight: IntGauge,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub rate_limited: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub retries: IntCounter,
    pub shed: IntCounter,
    pub upstream_conn_new: IntCounter,
    pub upstream_conn_reused: IntCounter,
    breaker_state: IntGaugeVec,
    breaker_rejections: IntCounterVec,
    target_healthy: IntGaugeVec,
    config_version: IntGauge,
    config_reloads: IntCounter,
    config_rejected: IntCounter,
    events: IntCounter,
    events_dropped: IntCounterVec,
    log_dropped: IntCounter,
    pub breaker_transitions: IntCounterVec,
    dependency_up: IntGaugeVec,
    /// Request-history rows stored in PostgreSQL.
    pub history_written: IntCounter,
    /// Request-history records dropped because the queue was full.
    pub history_dropped_queue_full: IntCounter,
    /// Request-history rows dropped with a batch the database did not take.
    pub history_dropped_write_failed: IntCounter,
    /// Request-history batches the database did not take.
    pub history_failed_batches: IntCounter,
    /// Webhook deliveries finished or rescheduled, by subscription and
    /// outcome (`succeeded`, `failed`, `retried`).
    pub webhook_deliveries: IntCounterVec,
    /// Webhook attempts, by subscription and result (`2xx` … `5xx`,
    /// `error`, `refused`).
    pub webhook_attempts: IntCounterVec,
    /// Duration of webhook attempts, by subscription.
    pub webhook_attempt_duration: HistogramVec,
    /// Deliveries waiting (stored and not yet stored), by subscription.
    pub webhook_queue_depth: IntGaugeVec,
    /// Events a subscription lost: its queue was full (or the bus moved on).
    pub webhook_dropped: IntCounterVec,
}

impl Metrics {
    /// Removes every webhook series of a subscription that no longer exists.
    pub fn forget_webhook(&self, id: &str) {
        for outcome in ["succeeded", "failed", "retried"] {
            let _ = self.webhook_deliveries.remove_label_values(&[id, outcome]);
        }
        for result in ["2xx", "3xx", "4xx", "5xx", "1xx", "error", "refused"] {
            let _ = self.webhook_attempts.remove_label_values(&[id, result]);
        }
        let _ = self.webhook_attempt_duration.remove_label_values(&[id]);
        let _ = self.webhook_queue_depth.remove_label_values(&[id]);
        let _ = self.webhook_dropped.remove_label_values(&[id]);
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(v.clone())).expect("unique metric");
    v
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let v = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(v.clone())).expect("unique metric");
    v
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let r = Registry::new();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "flexgate_request_duration_seconds",
                "Time from request head to the end of the response, by route.",
            )
            .buckets(BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        r.register(Box::new(duration.clone()))
            .expect("unique metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "flexgate_upstream_response_seconds",
                "Time from the first upstream attempt to the response head, by upstream.",
            )
            .buckets(BUCKETS.to_vec()),
            &["upstream"],
        )
        .expect("valid metric");
        r.register(Box::new(upstream_duration.clone()))
            .expect("unique metric");
        let connections = counter_vec(
            &r,
            "flexgate_upstream_connections_total",
            "Upstream connections used, new or reused from the pool.",
            &["kind"],
        );
        let history_dropped = counter_vec(
            &r,
            "flexgate_history_dropped_total",
            "Request-history records dropped, by reason (queue_full, write_failed).",
            &["reason"],
        );
        let webhook_attempt_duration = HistogramVec::new(
            HistogramOpts::new(
                "flexgate_webhook_attempt_duration_seconds",
                "Duration of webhook delivery attempts, by subscription.",
            )
            .buckets(BUCKETS.to_vec()),
            &["webhook"],
        )
        .expect("valid metric");
        r.register(Box::new(webhook_attempt_duration.clone()))
            .expect("unique metric");
        Metrics {
            webhook_deliveries: counter_vec(
                &r,
                "flexgate_webhook_deliveries_total",
                "Webhook deliveries by subscription and outcome (succeeded, failed: a dead letter, retried: rescheduled).",
                &["webhook", "outcome"],
            ),
            webhook_attempts: counter_vec(
                &r,
                "flexgate_webhook_attempts_total",
                "Webhook delivery attempts by subscription and result (2xx, 3xx, 4xx, 5xx, error, refused).",
                &["webhook", "result"],
            ),
            webhook_attempt_duration,
            webhook_queue_depth: gauge_vec(
                &r,
                "flexgate_webhook_queue_depth",
                "Webhook deliveries waiting to be sent, by subscription.",
                &["webhook"],
            ),
            webhook_dropped: counter_vec(
                &r,
                "flexgate_webhook_dropped_total",
                "Events a webhook subscription lost because its queue was full.",
                &["webhook"],
            ),
            history_written: counter(
                &r,
                "flexgate_history_written_total",
                "Request-history rows written to PostgreSQL.",
            ),
            history_dropped_queue_full: history_dropped.with_label_values(&["queue_full"]),
            history_dropped_write_failed: history_dropped.with_label_values(&["write_failed"]),
            history_failed_batches: counter(
                &r,
                "flexgate_history_failed_batches_total",
                "Request-history batches PostgreSQL did not take (their rows are dropped).",
            ),
            upstream_conn_new: connections.with_label_values(&["new"]),
            upstream_conn_reused: connections.with_label_values(&["reused"]),
            requests: counter_vec(
                &r,
                "flexgate_requests_total",
                "Requests answered, by route, method and status class.",
                &["route", "method", "status_class"],
            ),
            duration,
            upstream_duration,
            in_flight: gauge(
                &r,
                "flexgate_requests_in_flight",
                "Requests being processed.",
            ),
            bytes_in: counter(
                &r,
                "flexgate_request_bytes_total",
                "Request body bytes received.",
            ),
            bytes_out: counter(
                &r,
                "flexgate_response_bytes_total",
                "Response body bytes sent.",
            ),
            rate_limited: counter_vec(
                &r,
                "flexgate_rate_limited_total",
                "Requests refused by a rate limit, by route.",
                &["route"],
            ),
            auth_failures: counter_vec(
                &r,
                "flexgate_auth_failures_total",
                "Requests refused by authentication or authorization, by route.",
                &["route"],
            ),
            retries: counter(
                &r,
                "flexgate_upstream_retries_total",
                "Extra upstream attempts.",
            ),
            shed: counter(
                &r,
                "flexgate_requests_shed_total",
                "Requests refused by backpressure.",
            ),
            breaker_state: gauge_vec(
                &r,
                "flexgate_circuit_breaker_state",
                "Circuit breaker state per upstream: 0 closed, 1 open, 2 half-open.",
                &["upstream"],
            ),
            breaker_rejections: counter_vec(
                &r,
                "flexgate_circuit_breaker_rejections_total",
                "Requests refused by an open breaker, by upstream.",
                &["upstream"],
            ),
            target_healthy: gauge_vec(
                &r,
                "flexgate_upstream_target_healthy",
                "1 when a target is healthy and not ejected.",
                &["upstream", "target"],
            ),
            config_version: gauge(&r, "flexgate_config_version", "Version of the live config."),
            config_reloads: counter(
                &r,
                "flexgate_config_reloads_total",
                "Config reloads applied.",
            ),
            config_rejected: counter(
                &r,
                "flexgate_config_reloads_rejected_total",
                "Config reloads rejected (the previous config stayed live).",
            ),
            events: counter(
                &r,
                "flexgate_events_total",
                "Events emitted on the event bus.",
            ),
            events_dropped: counter_vec(
                &r,
                "flexgate_events_dropped_total",
                "Events a subscriber missed: an SSE client too slow (sse), or NATS down or too slow (nats).",
                &["subscriber"],
            ),
            log_dropped: counter(
                &r,
                "flexgate_log_lines_dropped_total",
                "Access-log and log lines dropped because the log writer fell behind.",
            ),
            breaker_transitions: counter_vec(
                &r,
                "flexgate_circuit_breaker_transitions_total",
                "Circuit breaker transitions, by upstream and new state (open, closed).",
                &["upstream", "to"],
            ),
            dependency_up: gauge_vec(
                &r,
                "flexgate_dependency_up",
                "1 when a configured dependency answers, 0 when not (postgres, redis, nats; absent when not configured).",
                &["dependency"],
            ),
            registry: r,
        }
    })
}

/// Per-route handles, resolved when a snapshot is compiled.
pub struct RouteMetrics {
    /// By method (index in [`METHODS`]) and status class; `None` for the
    /// methods the route does not allow (counted as `OTHER`).
    requests: Vec<Option<IntCounter>>,
    duration: Histogram,
    upstream_duration: Histogram,
    pub rate_limited: IntCounter,
    pub auth_failures: IntCounter,
    pub breaker_rejections: IntCounter,
}

impl RouteMetrics {
    /// Resolves the handles of a route (the same children across reloads).
    /// `allows` says which methods the route takes: series exist for those
    /// and `OTHER` only, and a request with another method counts as `OTHER`.
    pub fn new(route: &str, upstream: &str, allows: impl Fn(&str) -> bool) -> RouteMetrics {
        let m = metrics();
        let mut requests = Vec::with_capacity(METHODS.len() * CLASSES.len());
        for method in METHODS {
            let created = method == "OTHER" || allows(method);
            for class in CLASSES {
                requests
                    .push(created.then(|| m.requests.with_label_values(&[route, method, class])));
            }
        }
        RouteMetrics {
            requests,
            duration: m.duration.with_label_values(&[route]),
            upstream_duration: m.upstream_duration.with_label_values(&[upstream]),
            rate_limited: m.rate_limited.with_label_values(&[route]),
            auth_failures: m.auth_failures.with_label_values(&[route]),
            breaker_rejections: m.breaker_rejections.with_label_values(&[upstream]),
        }
    }

    /// Records one finished request.
    pub fn record(
        &self,
        method: &http::Method,
        status: u16,
        seconds: f64,
        upstream_seconds: Option<f64>,
    ) {
        let mi = METHODS
            .iter()
            .position(|m| *m == method.as_str())
            .unwrap_or(METHODS.len() - 1);
        let ci = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        let other = (METHODS.len() - 1) * CLASSES.len() + ci;
        match &self.requests[mi * CLASSES.len() + ci] {
            Some(c) => c.inc(),
            None => {
                if let Some(c) = &self.requests[other] {
                    c.inc();
                }
            }
        }
        self.duration.observe(seconds);
        if let Some(u) = upstream_seconds {
            self.upstream_duration.observe(u);
        }
    }
}

/// Handles for requests that matched no route.
pub fn unrouted() -> &'static RouteMetrics {
    static R: OnceLock<RouteMetrics> = OnceLock::new();
    R.get_or_init(|| RouteMetrics::new("none", "none", |_| true))
}

impl Metrics {
    /// Removes every series of a route no longer in the live config.
    pub fn forget_route(&self, route: &str) {
        for method in METHODS {
            for class in CLASSES {
                let _ = self.requests.remove_label_values(&[route, method, class]);
            }
        }
        let _ = self.duration.remove_label_values(&[route]);
        let _ = self.rate_limited.remove_label_values(&[route]);
        let _ = self.auth_failures.remove_label_values(&[route]);
    }

    /// Removes every series of an upstream no longer in the live config
    /// (its targets' and breaker's gauges are rebuilt at each scrape).
    pub fn forget_upstream(&self, upstream: &str) {
        let _ = self.upstream_duration.remove_label_values(&[upstream]);
        let _ = self.breaker_rejections.remove_label_values(&[upstream]);
        for to in ["open", "closed"] {
            let _ = self
                .breaker_transitions
                .remove_label_values(&[upstream, to]);
        }
    }
}

/// Brings a counter up to a monotonic total kept elsewhere.
fn catch_up(counter: &IntCounter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

/// A circuit breaker's state, as `flexgate_circuit_breaker_state` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerGauge {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerGauge {
    /// The gauge's value: 0 closed, 1 open, 2 half-open.
    fn value(self) -> i64 {
        match self {
            BreakerGauge::Closed => 0,
            BreakerGauge::Open => 1,
            BreakerGauge::HalfOpen => 2,
        }
    }
}

/// One upstream of the live config, as the scrape reports it.
pub struct UpstreamGauges<'a> {
    pub name: &'a str,
    /// Its circuit breaker's state (`None`: no breaker).
    pub breaker: Option<BreakerGauge>,
    /// Each target's URL (as written in the config) and whether it is
    /// available now (healthy and not ejected).
    pub targets: Vec<(&'a str, bool)>,
}

/// What the scrape reports besides the request path's own counters.
pub struct ScrapeState<'a> {
    /// Version of the live config.
    pub config_version: u64,
    /// The live config's upstreams.
    pub upstreams: &'a [UpstreamGauges<'a>],
    pub reloads: u64,
    pub rejected: u64,
    /// Configured dependencies and whether each answers.
    pub dependencies: &'a [(&'static str, bool)],
    /// Events missed by the NATS publisher.
    pub nats_dropped: u64,
}

/// Renders the text exposition (format 0.0.4), refreshing state gauges first.
pub fn render(state: &ScrapeState<'_>) -> String {
    let m = metrics();
    m.config_version.set(state.config_version as i64);
    catch_up(&m.config_reloads, state.reloads);
    catch_up(&m.config_rejected, state.rejected);
    let bus = crate::events::bus();
    catch_up(&m.events, bus.emitted.load(Ordering::Relaxed));
    catch_up(
        &m.events_dropped.with_label_values(&["sse"]),
        bus.dropped.load(Ordering::Relaxed),
    );
    catch_up(
        &m.events_dropped.with_label_values(&["nats"]),
        state.nats_dropped,
    );
    catch_up(&m.log_dropped, crate::logging::dropped_lines());
    m.dependency_up.reset();
    for (name, up) in state.dependencies {
        m.dependency_up
            .with_label_values(&[name])
            .set(i64::from(*up));
    }
    m.breaker_state.reset();
    m.target_healthy.reset();
    for up in state.upstreams {
        if let Some(b) = up.breaker {
            m.breaker_state.with_label_values(&[up.name]).set(b.value());
        }
        for (target, available) in &up.targets {
            m.target_healthy
                .with_label_values(&[up.name, target])
                .set(i64::from(*available));
        }
    }
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&m.registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}
