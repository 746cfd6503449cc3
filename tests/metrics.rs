//! Prometheus metrics at `/metrics` on the admin port: exact counts after
//! known traffic, bounded labels, histogram counts, state gauges — parsed
//! with a Prometheus text-format parser.

mod common;
use common::*;
use prometheus_parse::{Scrape, Value};

fn scrape(gw: &Gateway) -> (Scrape, String) {
    let r = request(gw.admin_port, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    let scrape =
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid exposition format");
    (scrape, text)
}

fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => f64::NAN,
        })
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

#[test]
fn counts_after_known_traffic() {
    let ok = TestUpstream::start("ok", Behavior::Ok);
    let bad = TestUpstream::start("bad", Behavior::Status(500));
    let body = format!(
        "upstreams:\n  - name: ok\n    url: \"{}\"\n  - name: bad\n    url: \"{}\"\n    circuitBreaker:\n      enabled: true\n      consecutiveFailures: 100\nroutes:\n  - id: api\n    path: /api/*\n    methods: [GET]\n    upstream: ok\n  - id: broken\n    path: /broken\n    upstream: bad\n",
        ok.url(),
        bad.url()
    );
    let gw = Gateway::start("", &body);
    let mut c = Client::connect(gw.port);
    for _ in 0..3 {
        assert_eq!(
            c.request("GET", "/api/x?secret=1", &[], b"")
                .unwrap()
                .status,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(c.request("GET", "/nowhere", &[], b"").unwrap().status, 404);
    }
    assert_eq!(
        c.request("DELETE", "/broken", &[], b"").unwrap().status,
        500
    );
    assert_eq!(request(gw.port, "POST", "/api/x", &[], b"x").status, 405);

    // A request is recorded when it finishes, just after its response is sent.
    let requests = "flexgate_requests_total";
    let settled = eventually(std::time::Duration::from_secs(5), || {
        let (s, _) = scrape(&gw);
        s.samples.iter().any(|x| {
            x.metric == requests
                && x.labels.get("method") == Some("POST")
                && matches!(x.value, Value::Counter(v) if v == 1.0)
        })
    });
    assert!(settled, "the last request was recorded");
    let (s, text) = scrape(&gw);
    assert_eq!(
        value(
            &s,
            requests,
            &[("route", "api"), ("method", "GET"), ("status_class", "2xx")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &s,
            requests,
            &[
                ("route", "none"),
                ("method", "GET"),
                ("status_class", "4xx")
            ]
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            requests,
            &[
                ("route", "none"),
                ("method", "POST"),
                ("status_class", "4xx")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            requests,
            &[
                ("route", "broken"),
                ("method", "DELETE"),
                ("status_class", "5xx")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(&s, "flexgate_request_duration_seconds", &[("route", "api")]),
        3.0,
        "histogram count"
    );
    assert_eq!(
        value(
            &s,
            "flexgate_upstream_response_seconds",
            &[("upstream", "ok")]
        ),
        3.0
    );
    assert_eq!(value(&s, "flexgate_requests_in_flight", &[]), 0.0);
    assert_eq!(value(&s, "flexgate_config_version", &[]), 1.0);
    assert_eq!(
        value(&s, "flexgate_circuit_breaker_state", &[("upstream", "bad")]),
        0.0
    );
    assert_eq!(
        value(
            &s,
            "flexgate_upstream_target_healthy",
            &[("upstream", "ok")]
        ),
        1.0
    );
    assert!(
        !text.contains("flexgate_dependency_up{"),
        "no dependency is configured"
    );
    assert!(
        value(
            &s,
            "flexgate_upstream_connections_total",
            &[("kind", "reused")]
        ) >= 1.0
    );
    assert!(
        text.contains("le=\"0.0005\"") && text.contains("le=\"30\""),
        "buckets from 0.5 ms to 30 s"
    );
    assert!(
        !text.contains("/api/x") && !text.contains("secret"),
        "no raw paths or client values in labels"
    );
}

#[test]
fn limits_and_auth_failures_are_counted() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let body = format!(
        "upstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - id: limited\n    path: /l/*\n    upstream: app\n    rateLimit:\n      max: 1\n      windowMs: 60000\n  - id: locked\n    path: /k/*\n    upstream: app\n    auth: required\n",
        up.url()
    );
    let gw = Gateway::start("", &body);
    for _ in 0..3 {
        request(gw.port, "GET", "/l/x", &[], b"");
    }
    request(gw.port, "GET", "/k/x", &[], b"");
    let (s, _) = scrape(&gw);
    assert_eq!(
        value(&s, "flexgate_rate_limited_total", &[("route", "limited")]),
        2.0
    );
    assert_eq!(
        value(&s, "flexgate_auth_failures_total", &[("route", "locked")]),
        1.0
    );
}
