//! Upstream failures as the client sees them: timeouts (upstream and route
//! level) → 504, refused and broken upstreams → 502 JSON, the retry policy
//! (idempotent methods only, connect failures always), truncated bodies, and
//! redirects passed through rather than followed.

mod common;
use common::*;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

/// One upstream `up` (extra YAML lines under it) behind the route `/api/*`
/// (extra YAML lines under the route).
fn config(url: &str, upstream_extra: &str, route_extra: &str) -> String {
    format!(
        "upstreams:\n  - name: up\n    url: \"{url}\"\n{upstream_extra}routes:\n  - id: api\n    path: \"/api/*\"\n    upstream: up\n{route_extra}"
    )
}

/// Asserts a gateway JSON error reply.
fn assert_gateway_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["error"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    let id = r.header("x-request-id").expect("x-request-id on errors");
    assert!(!id.is_empty());
    assert_eq!(body["requestId"].as_str(), Some(id), "{body}");
}

/// The access-log lines once at least `n` have been written.
fn access_lines(gw: &Gateway, n: usize) -> Vec<serde_json::Value> {
    gw.wait_until(
        &format!("{n} access log lines"),
        Duration::from_secs(5),
        || gw.access_log().len() >= n,
    );
    gw.access_log()
}

/// A keep-alive origin that answers every request with `status` and the given
/// `Location`, and an empty body.
fn redirecting_upstream(status: u16, location: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let location = location.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    // Requests here have no body: read the head only.
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" || line == "\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let resp = format!(
                        "HTTP/1.1 {status} Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
                    );
                    if conn.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn hanging_upstream_times_out_with_504_json() {
    let up = TestUpstream::start("up", Behavior::Delay(Duration::from_secs(5)));
    let gw = Gateway::start("", &config(&up.url(), "    readTimeout: 300\n", ""));
    let t = Instant::now();
    let r = request(gw.port, "GET", "/api/slow", &[], b"");
    let took = t.elapsed();
    assert_gateway_error(&r, 504, "upstream_timeout");
    assert!(
        took < Duration::from_secs(2),
        "a 300 ms read timeout answered after {took:?}"
    );
    assert_eq!(up.hits(), 1, "the request did reach the upstream");
}

#[test]
fn route_timeout_overrides_the_upstream_timeout() {
    let up = TestUpstream::start("up", Behavior::Delay(Duration::from_secs(5)));
    let gw = Gateway::start(
        "",
        &config(&up.url(), "    timeout: 10000\n", "    timeout: 300\n"),
    );
    let t = Instant::now();
    let r = request(gw.port, "GET", "/api/slow", &[], b"");
    let took = t.elapsed();
    assert_gateway_error(&r, 504, "upstream_timeout");
    assert!(
        took < Duration::from_secs(2),
        "a 300 ms route timeout answered after {took:?}"
    );
}

#[test]
fn refused_upstream_is_a_fast_502_upstream_unavailable() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gw = Gateway::start("", &config(&dead, "", ""));
    let t = Instant::now();
    let r = request(gw.port, "GET", "/api/x", &[], b"");
    let took = t.elapsed();
    assert_gateway_error(&r, 502, "upstream_unavailable");
    assert!(
        took < Duration::from_secs(2),
        "refused connect answered after {took:?}"
    );
}

#[test]
fn upstream_closing_without_response_is_502_bad_gateway() {
    let up = TestUpstream::start("up", Behavior::CloseWithoutResponse);
    let gw = Gateway::start("", &config(&up.url(), "", ""));
    let r = request(gw.port, "GET", "/api/x", &[], b"");
    assert_gateway_error(&r, 502, "bad_gateway");
    assert!(up.hits() >= 1);
}

#[test]
fn only_idempotent_requests_are_retried_after_a_response_failure() {
    let up = TestUpstream::start("up", Behavior::CloseWithoutResponse);
    let gw = Gateway::start(
        "",
        &config(&up.url(), "    retries: 2\n    retryBackoff: 10\n", ""),
    );
    let r = request(gw.port, "GET", "/api/get", &[], b"");
    assert_gateway_error(&r, 502, "bad_gateway");
    assert_eq!(up.hits(), 3, "GET: one attempt plus two retries");

    up.clear();
    let r = request(gw.port, "POST", "/api/post", &[], b"{\"n\":1}");
    assert_gateway_error(&r, 502, "bad_gateway");
    assert_eq!(
        up.hits(),
        1,
        "a POST that may have been processed must not be replayed"
    );
    assert_eq!(up.last().method, "POST");
}

#[test]
fn connect_failures_are_retried_even_for_post() {
    let live = TestUpstream::start("live", Behavior::Ok);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let body = format!(
        "upstreams:\n  - name: up\n    loadBalancing: roundRobin\n    retries: 1\n    targets:\n      - url: \"{}\"\n      - url: \"{dead}\"\nroutes:\n  - id: api\n    path: \"/api/*\"\n    upstream: up\n",
        live.url()
    );
    let gw = Gateway::start("", &body);
    for i in 0..10 {
        let payload = format!("order-{i}");
        let r = request(gw.port, "POST", "/api/orders", &[], payload.as_bytes());
        assert_eq!(r.status, 200, "POST {i}: {}", r.text());
        assert_eq!(r.header("x-upstream"), Some("live"));
    }
    let seen: Vec<String> = live
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    for i in 0..10 {
        let payload = format!("order-{i}");
        let n = seen.iter().filter(|b| **b == payload).count();
        assert_eq!(
            n, 1,
            "{payload} reached the live upstream {n} times: {seen:?}"
        );
    }
    assert_eq!(live.hits(), 10);
    let log = access_lines(&gw, 10);
    assert!(
        log.iter().any(|l| l["attempts"].as_u64() == Some(2)),
        "the dead target was never tried, so nothing was retried: {log:?}"
    );
}

#[test]
fn upstream_dying_mid_body_is_not_a_complete_response() {
    let up = TestUpstream::start("up", Behavior::DieMidBody);
    let gw = Gateway::start("", &config(&up.url(), "", ""));
    let mut c = Client::connect(gw.port);
    match c.request("GET", "/api/file", &[], b"") {
        // The connection was cut before the announced 1000 bytes: the client can tell.
        Err(_) => {}
        // Any 200 that parses as complete hides the truncation (a short body
        // cleanly terminated, or close-delimited); a gateway error is fine.
        Ok(r) => assert_ne!(
            r.status,
            200,
            "a truncated upstream body arrived as a complete 200 ({} of 1000 bytes, headers {:?})",
            r.body.len(),
            r.headers
        ),
    }
}

#[test]
fn upstream_redirects_are_passed_through_not_followed() {
    let internal = TestUpstream::start("internal", Behavior::Ok);
    let location = format!("{}/secret", internal.url());
    let origin = redirecting_upstream(302, location.clone());
    let gw = Gateway::start("", &config(&format!("http://{origin}"), "", ""));
    let r = request(gw.port, "GET", "/api/moved", &[], b"");
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(r.header("location"), Some(location.as_str()));
    assert_eq!(internal.hits(), 0, "the gateway must not follow redirects");
    assert!(r.header("x-request-id").is_some());
}

#[test]
fn a_route_may_allow_replaying_buffered_post_bodies() {
    let up = TestUpstream::start("up", Behavior::CloseWithoutResponse);
    let gw = Gateway::start(
        "",
        &config(
            &up.url(),
            "    retries: 2\n    retryBackoff: 10\n",
            "    retryNonIdempotent: true\n",
        ),
    );
    let r = request(gw.port, "POST", "/api/post", &[], b"{\"n\":1}");
    assert_gateway_error(&r, 502, "bad_gateway");
    let seen = up.requests.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "opted-in POST: one attempt plus two retries");
    assert!(
        seen.iter().all(|r| r.body == b"{\"n\":1}"),
        "every attempt carries the whole body"
    );
}
