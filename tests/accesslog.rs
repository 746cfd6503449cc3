//! The access log: one JSON line per request with the fields operators
//! need, and `logging.sampling` deciding which lines are written.

mod common;
use common::*;
use std::time::Duration;

fn config(up: &TestUpstream, sampling: &str) -> String {
    format!(
        "upstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - id: api\n    path: /api/*\n    upstream: app\nlogging:\n  sampling:\n{sampling}",
        up.url()
    )
}

#[test]
fn every_request_is_logged_with_its_fields() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start(
        "",
        &config(&up, "    successRate: 1.0\n    errorRate: 1.0\n"),
    );
    let r = request(
        gw.port,
        "GET",
        "/api/items?q=1",
        &[("User-Agent", "tester/1"), ("X-Request-Id", "trace-123")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(request(gw.port, "GET", "/nope", &[], b"").status, 404);
    gw.wait_until("two access lines", Duration::from_secs(5), || {
        gw.access_log().len() >= 2
    });
    let lines = gw.access_log();
    let ok = lines
        .iter()
        .find(|l| l["request_id"] == "trace-123")
        .expect("line for the proxied request");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["path"], "/api/items");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["route"], "api");
    assert_eq!(ok["upstream"], "app");
    assert_eq!(ok["target_url"], up.url());
    assert_eq!(ok["client_ip"], "127.0.0.1");
    assert_eq!(ok["user_agent"], "tester/1");
    assert_eq!(ok["bytes_out"], "app /api/items?q=1".len());
    assert!(ok["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(ok["upstream_ms"].as_f64().unwrap() >= 0.0);
    let missing = lines
        .iter()
        .find(|l| l["status"] == 404)
        .expect("line for the 404");
    assert_eq!(missing["error"], "no_route");
    assert_eq!(missing["route"], "-");
}

#[test]
fn sampling_keeps_errors_and_drops_successes() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start(
        "",
        &config(&up, "    successRate: 0.0\n    errorRate: 1.0\n"),
    );
    let mut c = Client::connect(gw.port);
    for _ in 0..20 {
        assert_eq!(c.request("GET", "/api/x", &[], b"").unwrap().status, 200);
    }
    for _ in 0..5 {
        assert_eq!(c.request("GET", "/missing", &[], b"").unwrap().status, 404);
    }
    gw.wait_until("five error lines", Duration::from_secs(5), || {
        gw.access_log().len() >= 5
    });
    let lines = gw.access_log();
    assert_eq!(lines.len(), 5, "only errors are logged: {lines:?}");
    assert!(lines.iter().all(|l| l["status"] == 404));
}
