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

/// Metric names (`flexgate_…`) in `text`, histogram series suffixes removed.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("flexgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn dashboard_and_alert_rules_use_only_real_metric_names() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("src/metrics.rs")).unwrap();
    let defined: std::collections::BTreeSet<String> = metric_names(&source)
        .into_iter()
        .filter(|n| source.contains(&format!("\"{n}\"")))
        .collect();
    assert!(defined.contains("flexgate_requests_total"), "{defined:?}");

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("conf/monitoring/grafana-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let mut exprs = String::new();
    for p in panels {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            exprs.push_str(t["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    let used = metric_names(&exprs);
    let unknown: Vec<_> = used.difference(&defined).collect();
    assert!(
        unknown.is_empty(),
        "dashboard uses unknown metrics {unknown:?}"
    );

    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("conf/monitoring/prometheus-alerts.yaml")).unwrap(),
    )
    .expect("the rules are YAML");
    let mut alerts = Vec::new();
    let mut exprs = String::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name");
            assert!(rule["labels"]["severity"].is_string(), "{name}: severity");
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{name}: summary"
            );
            exprs.push_str(rule["expr"].as_str().expect("expr"));
            alerts.push(name.to_string());
        }
    }
    for wanted in [
        "FlexGateHighErrorRate",
        "FlexGateHighLatencyP99",
        "FlexGateCircuitBreakerOpen",
        "FlexGateDependencyDown",
        "FlexGateConfigReloadRejected",
    ] {
        assert!(alerts.iter().any(|a| a == wanted), "missing {wanted}");
    }
    let used = metric_names(&exprs);
    let unknown: Vec<_> = used.difference(&defined).collect();
    assert!(
        unknown.is_empty(),
        "alert rules use unknown metrics {unknown:?}"
    );
}

#[test]
fn series_follow_the_routes_methods_and_leave_with_deleted_routes_and_upstreams() {
    let ok = TestUpstream::start("ok", Behavior::Ok);
    let body = format!(
        "upstreams:\n  - name: ok\n    url: \"{0}\"\n  - name: spare\n    url: \"{0}\"\nroutes:\n  - id: api\n    path: /api\n    methods: [GET]\n    upstream: ok\n  - id: old\n    path: /old\n    upstream: spare\n",
        ok.url()
    );
    let gw = Gateway::start("", &body);
    assert_eq!(request(gw.port, "GET", "/old", &[], b"").status, 200);
    let has = |text: &str, needle: &str| text.lines().any(|l| l.contains(needle));
    let (_, text) = scrape(&gw);
    // A GET-only route has GET, HEAD (implied) and OTHER series, nothing else.
    for m in ["GET", "HEAD", "OTHER"] {
        assert!(
            has(&text, &format!("method=\"{m}\",route=\"api\"")),
            "{m} of api:\n{text}"
        );
    }
    for m in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        assert!(
            !has(&text, &format!("method=\"{m}\",route=\"api\"")),
            "no {m} series for a GET-only route"
        );
    }
    assert!(has(&text, "route=\"old\""));
    assert!(has(&text, "upstream=\"spare\""));
    // Deleted through the admin API: their series go.
    let auth = ("Authorization", "Bearer test-admin-token");
    let r = request(gw.admin_port, "DELETE", "/api/routes/old", &[auth], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(
        gw.admin_port,
        "DELETE",
        "/api/upstreams/spare",
        &[auth],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, text) = scrape(&gw);
    assert!(!has(&text, "route=\"old\""), "{text}");
    assert!(!has(&text, "upstream=\"spare\""), "{text}");
    assert!(has(&text, "route=\"api\""), "the others stay");
}
