//! Edge hygiene through the real gateway and a recording upstream: hop-by-hop
//! stripping, forwarding headers, correlation ids, `Via` loops, size limits
//! (431/414/413), request smuggling and framing (400/501/405 and close, the
//! upstream never sees a smuggled request), slowloris and slow POST, connection
//! caps and the keep-alive request limit.

mod common;
use common::*;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One upstream, a catch-all route and a `/small/*` route with a 1 KiB body limit.
fn config(up: &TestUpstream) -> String {
    format!(
        "upstreams:\n  - name: main\n    url: \"{}\"\nroutes:\n  - id: small\n    path: \"/small/*\"\n    upstream: main\n    maxBodySize: 1kb\n  - id: all\n    path: \"/*\"\n    upstream: main\n",
        up.url()
    )
}

/// `METHOD path` of every request the upstream recorded (complete requests only).
fn seen_paths(up: &TestUpstream) -> Vec<String> {
    up.requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

/// The last lines of the gateway log, for assertion messages.
fn log_tail(gw: &Gateway) -> String {
    let log = gw.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Sends a normal request on a fresh connection and waits for its 200. Used
/// as a barrier before looking at the recorder: a request refused before
/// routing would have been forwarded before its answer was written, so it is
/// recorded by the time the marker comes back.
fn marker(gw: &Gateway, path: &str) {
    let r = request(gw.port, "GET", path, &[], b"");
    assert_eq!(r.status, 200, "marker request {path}: {}", r.text());
}

/// True when the peer closed the connection within `within` (EOF or reset);
/// false on timeout or when more data arrives.
fn closed_within(c: &mut Client, within: Duration) -> bool {
    // Data already buffered by the reader means the server sent more.
    if !c.reader.buffer().is_empty() {
        return false;
    }
    let s = c.reader.get_mut();
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
        ),
    }
}

/// The result of a raw exchange on a fresh connection.
struct Exchange {
    response: std::io::Result<Response>,
    /// The server closed the connection after the response.
    closed: bool,
}

impl Exchange {
    fn status(&self) -> Option<u16> {
        self.response.as_ref().ok().map(|r| r.status)
    }
}

/// Sends raw bytes on a fresh connection, reads one response and (when
/// `check_close`) whether the connection is then closed.
fn exchange(port: u16, bytes: &[u8], check_close: bool) -> Exchange {
    let mut c = Client::connect(port);
    c.send_raw(bytes);
    let response = c.read(false);
    let closed = check_close && response.is_ok() && closed_within(&mut c, Duration::from_secs(3));
    Exchange { response, closed }
}

#[test]
fn hop_by_hop_headers_are_stripped_both_ways() {
    let up = TestUpstream::start(
        "main",
        Behavior::Headers(vec![
            ("Connection".into(), "X-Internal".into()),
            ("X-Internal".into(), "1".into()),
            ("Keep-Alive".into(), "timeout=5".into()),
            ("Proxy-Authenticate".into(), "Basic realm=x".into()),
            ("X-End".into(), "kept".into()),
        ]),
    );
    let gw = Gateway::start("", &config(&up));
    let r = request(
        gw.port,
        "GET",
        "/hop",
        &[
            ("Connection", "keep-alive, X-Secret"),
            ("X-Secret", "s3cr3t"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
            ("TE", "gzip"),
            ("Upgrade", "h2c"),
            ("Proxy-Connection", "keep-alive"),
            ("X-End-To-End", "yes"),
            ("Authorization", "Bearer abc"),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    for h in [
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
        "proxy-connection",
    ] {
        assert_eq!(
            seen.header(h),
            None,
            "hop-by-hop header {h} reached the upstream; head:\n{}",
            seen.raw_head
        );
    }
    for v in seen.header_all("connection") {
        let v = v.to_ascii_lowercase();
        assert!(
            !v.contains("x-secret") && !v.contains("upgrade"),
            "the client's Connection header reached the upstream: {v:?}"
        );
    }
    assert_eq!(seen.header("x-end-to-end"), Some("yes"));
    assert_eq!(seen.header("authorization"), Some("Bearer abc"));

    // Response direction: the upstream's hop-by-hop headers stop at the gateway.
    assert_eq!(r.header("x-internal"), None, "{:?}", r.headers);
    assert_eq!(r.header("keep-alive"), None, "{:?}", r.headers);
    assert_eq!(r.header("proxy-authenticate"), None, "{:?}", r.headers);
    assert!(r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
        .all(|(_, v)| !v.to_ascii_lowercase().contains("x-internal")));
    assert_eq!(r.header("x-end"), Some("kept"));
}

#[test]
fn forwarding_headers_from_an_untrusted_client_are_overwritten() {
    let up = TestUpstream::start("main", Behavior::Ok);
    let gw = Gateway::start("", &config(&up));
    let r = request(
        gw.port,
        "GET",
        "/xff",
        &[
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Real-IP", "1.2.3.4"),
            ("X-Consumer-Name", "admin"),
            ("Forwarded", "for=1.2.3.4"),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(
        seen.header_all("x-forwarded-for"),
        vec!["127.0.0.1"],
        "head:\n{}",
        seen.raw_head
    );
    assert_eq!(seen.header_all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(seen.header_all("x-forwarded-host"), vec!["test.local"]);
    assert_eq!(seen.header_all("x-real-ip"), vec!["127.0.0.1"]);
    assert_eq!(
        seen.header("x-consumer-name"),
        None,
        "gateway-owned header from the client"
    );
    assert_eq!(seen.header("forwarded"), None);

    // Without any forwarding headers from the client.
    let r = request(gw.port, "GET", "/plain", &[], b"");
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(seen.header_all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(seen.header_all("x-forwarded-host"), vec!["test.local"]);
}

#[test]
fn forwarding_headers_from_a_trusted_proxy_are_appended() {
    let up = TestUpstream::start("main", Behavior::Ok);
    let gw = Gateway::start("  trustedProxies: [\"127.0.0.1/32\"]\n", &config(&up));
    let r = request(
        gw.port,
        "GET",
        "/xff",
        &[("X-Forwarded-For", "1.2.3.4")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(
        seen.header_all("x-forwarded-for"),
        vec!["1.2.3.4, 127.0.0.1"],
        "head:\n{}",
        seen.raw_head
    );
    assert_eq!(seen.header_all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(seen.header_all("x-forwarded-host"), vec!["test.local"]);
    assert_eq!(
        seen.header("x-real-ip"),
        Some("1.2.3.4"),
        "the client behind the trusted proxy"
    );

    // A trusted proxy without X-Forwarded-For starts the list with its own address.
    let r = request(gw.port, "GET", "/plain", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header_all("x-forwarded-for"), vec!["127.0.0.1"]);
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn request_id_is_generated_propagated_or_replaced() {
    let up = TestUpstream::start("main", Behavior::Ok);
    let gw = Gateway::start("", &config(&up));

    // Absent: generated, the same value upstream and in the response.
    let r = request(gw.port, "GET", "/id", &[], b"");
    assert_eq!(r.status, 200);
    let id = r.header("x-request-id").expect("x-request-id in response");
    assert!(is_hex32(id), "generated id {id:?}");
    assert_eq!(up.last().header_all("x-request-id"), vec![id]);
    let r2 = request(gw.port, "GET", "/id", &[], b"");
    assert_ne!(
        r2.header("x-request-id"),
        Some(id),
        "ids are unique per request"
    );

    // A valid client id is kept unchanged.
    let mine = "client-42_a.b:c";
    let r = request(gw.port, "GET", "/id", &[("X-Request-Id", mine)], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some(mine));
    assert_eq!(up.last().header_all("x-request-id"), vec![mine]);

    // Invalid ids are replaced by a generated one, upstream and downstream.
    let long = "a".repeat(129);
    for bad in ["has spaces in it", long.as_str()] {
        let r = request(gw.port, "GET", "/id", &[("X-Request-Id", bad)], b"");
        assert_eq!(r.status, 200);
        let id = r.header("x-request-id").unwrap();
        assert!(
            is_hex32(id),
            "{bad:?} was not replaced: response has {id:?}"
        );
        assert_eq!(up.last().header_all("x-request-id"), vec![id]);
    }

    // Gateway replies carry the id too.
    let r = request(gw.port, "GET", "/a/../b", &[("X-Request-Id", mine)], b"");
    assert_eq!(r.status, 400);
    assert_eq!(r.header("x-request-id"), Some(mine));
}

#[test]
fn via_is_added_and_loops_get_508() {
    let up = TestUpstream::start("main", Behavior::Ok);
    let gw = Gateway::start("  viaName: fg-test\n", &config(&up));

    let r = request(gw.port, "GET", "/via", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header_all("via"), vec!["1.1 fg-test"]);

    let r = request(gw.port, "GET", "/via", &[("Via", "1.0 edge")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header_all("via"), vec!["1.0 edge, 1.1 fg-test"]);

    up.clear();
    for via in ["1.1 fg-test", "1.0 edge, 1.1 fg-test"] {
        let r = request(gw.port, "GET", "/loop", &[("Via", via)], b"");
        assert_eq!(r.status, 508, "Via: {via}: {}", r.text());
        assert_eq!(r.json()["error"], "loop_detected");
    }
    marker(&gw, "/marker");
    assert_eq!(
        seen_paths(&up),
        vec!["GET /marker"],
        "a loop reached upstream"
    );
}

/// `count` extra headers `X-H<i>: v` (the client adds `Host`).
fn many_headers(count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| (format!("X-H{i}"), "v".to_string()))
        .collect()
}

fn get_with(port: u16, path: &str, headers: &[(String, String)]) -> Response {
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    request(port, "GET", path, &h, b"")
}

#[test]
fn default_header_and_uri_limits() {
    let up = TestUpstream::start("main", Behavior::Ok);
    let gw = Gateway::start("", &config(&up));

    // 100 fields (Host + 99) pass, 101 are refused.
    let r = get_with(gw.port, "/h100", &many_headers(99));
    assert_eq!(r.status, 200, "100 header fields: {}", r.text());
    let r = get_with(gw.port, "/h101", &many_headers(100));
    assert_eq!(r.status, 431, "101 header fields: {}", r.text());

    // 60 KiB of header bytes in total.
    let big = vec![("X-Big".to_string(), "b".repeat(50 * 1024))];
    let r = get_with(gw.port, "/h50k", &big);
    assert_eq!(r.status, 200, "50 KiB of headers: {}", r.text());
    let huge = vec![("X-Big".to_string(), "b".repeat(61 * 1024))];
    let r = get_with(gw.port, "/h61k", &huge);
    assert_eq!(r.status, 431, "61 KiB of headers: {}", r.text());

    // 8 KiB request target.
    let ok_path = format!("/{}", "u".repeat(8000));
    assert_eq!(request(gw.port, "GET", &ok_path, &[], b"").status, 200);
    let long_path = format!("/{}", "u".repeat(8 * 1024 + 1));
    let r = request(gw.port, "GET", &long_path, &[], b"");
    assert_eq!(r.status, 414, "{}", r.text());
    let long_query = format!("/q?{}", "k=v&".repeat(2100));
    let r = request(gw.port, "GET", &long_query, &[], b"");
    assert_eq!(r.status, 414, "the query counts: {}", r.text());

    marker(&gw, "/marker");
    let seen = seen_paths(&up);
    assert_eq!(seen.len(), 4, "only accepted requests reach upstream");
    assert_eq!(seen[0], "GET /h100");
    assert_eq!(seen[1], "GET /h50k");
    assert_eq!(seen[3], "GET /marker");
}

#[test]
fn configured_header_and_uri_limits() {
    let up = TestUpstream::start("main", Behavior::Ok);
    let gw = Gateway::start(
        "  limits:\n    maxHeaders: 10\n    maxHeaderBytes: 2kb\n    maxUriBytes: 512\n",
        &config(&up),
    );
    assert_eq!(get_with(gw.port, "/ok", &many_headers(9)).status, 200);
    assert_eq!(get_with(gw.port, "/n", &many_headers(10)).status, 431);

    let big = vec![("X-Big".to_string(), "b".repeat(3000))];
    let r = get_with(gw.port, "/b", &big);
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(r.json()["error"], "header_fields_too_large");

    let r = request(gw.port, "GET", &format!("/{}", "u".repeat(600)), &[], b"");
    assert_eq!(r.status, 414, "{}", r.text());
    assert_eq!(r.json()["error"], "uri_too_long");

    marker(&gw, "/marker");
    assert_eq!(seen_paths(&up), vec!["GET /ok", "GET /marker"]);
}

#[test]
fn declared_body_over_the_limit_is_413_before_reading() {
    let up = TestUpstream::start("main", Behavior::Ok);
    let gw = Gateway::start("", &config(&up));

    // Route limit 1 KiB: the head alone is answered; the body is never sent.
    let mut c = Client::connect(gw.port);
    c.send_raw(b"POST /small/upload HTTP/1.1\r\nHost: test.local\r\nContent-Length: 2048\r\n\r\n");
    let r = c.read(false).expect("413 without sending the body");
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"], "payload_too_large");
    assert!(
        closed_within(&mut c, Duration::from_secs(3)),
        "the unread body makes the connection unusable; it must be closed"
    );

    // Proxy default 10 MiB on routes without their own limit.
    let mut c = Client::connect(gw.port);
    c.send_raw(b"POST /big HTTP/1.1\r\nHost: test.local\r\nContent-Length: 11534336\r\n\r\n");
    let r = c.read(false).expect("413 without sending the body");
    assert_eq!(r.status, 413, "{}", r.text());

    // At the limit is fine.
    let body = vec![b'x'; 1024];
    let r = request(gw.port, "POST", "/small/exact", &[], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().body.len(), 1024);

    marker(&gw, "/marker");
    assert_eq!(
        seen_paths(&up),
        vec!["POST /small/exact", "GET /marker"],
        "refused bodies never reach the upstream"
    );
}

#[test]
fn chunked_body_over_the_limit_is_cut() {
    let up = TestUpstream::start("main", Behavior::Ok);
    let gw = Gateway::start("", &config(&up));

    // Under the limit: forwarded whole.
    let mut raw_ok =
        b"POST /small/fits HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..2 {
        raw_ok.extend_from_slice(b"1f4\r\n");
        raw_ok.extend_from_slice(&[b'a'; 500]);
        raw_ok.extend_from_slice(b"\r\n");
    }
    raw_ok.extend_from_slice(b"0\r\n\r\n");
    let ex = exchange(gw.port, &raw_ok, false);
    assert_eq!(ex.status(), Some(200), "{:?}", ex.response);
    assert_eq!(up.last().body.len(), 1000);

    // Over the limit (3 x 500 bytes > 1 KiB), complete with its last chunk.
    let mut raw_big =
        b"POST /small/big HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..3 {
        raw_big.extend_from_slice(b"1f4\r\n");
        raw_big.extend_from_slice(&[b'b'; 500]);
        raw_big.extend_from_slice(b"\r\n");
    }
    raw_big.extend_from_slice(b"0\r\n\r\n");
    let ex = exchange(gw.port, &raw_big, false);
    assert_eq!(
        ex.status(),
        Some(413),
        "{:?}\nlog:\n{}",
        ex.response,
        log_tail(&gw)
    );

    marker(&gw, "/marker");
    let recorded = up.requests.lock().unwrap().clone();
    assert!(
        recorded.iter().all(|r| r.body.len() <= 1024),
        "the upstream received an over-limit body: {:?}",
        recorded
            .iter()
            .map(|r| (r.path.clone(), r.body.len()))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        seen_paths(&up),
        vec!["POST /small/fits", "GET /marker"],
        "the over-limit request never completes upstream"
    );
}

/// Each case: (name, raw request, accepted statuses).
type Case = (&'static str, Vec<u8>, &'static [u16]);

fn framing_cases() -> Vec<Case> {
    let h = |extra: &str, body: &str| -> Vec<u8> {
        format!("POST /frame HTTP/1.1\r\nHost: test.local\r\n{extra}\r\n{body}").into_bytes()
    };
    vec![
        (
            "CL+TE",
            h(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            &[400],
        ),
        ("CL +5", h("Content-Length: +5\r\n", "hello"), &[400]),
        ("CL -0", h("Content-Length: -0\r\n", ""), &[400]),
        (
            "two different CLs",
            h("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
            &[400],
        ),
        ("CL list", h("Content-Length: 5, 5\r\n", "hello"), &[400]),
        (
            "TE gzip",
            h("Transfer-Encoding: gzip\r\n", "hello"),
            &[501, 400],
        ),
        (
            "TE gzip, chunked",
            h("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
            &[501, 400],
        ),
        (
            "two TE headers",
            h(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            &[400],
        ),
        (
            "bad chunk size",
            h("Transfer-Encoding: chunked\r\n", "zz\r\nhello\r\n0\r\n\r\n"),
            &[400],
        ),
        (
            "underscore in header name",
            b"GET /frame HTTP/1.1\r\nHost: test.local\r\nX_User: admin\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "duplicate Host",
            b"GET /frame HTTP/1.1\r\nHost: test.local\r\nHost: other.local\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "obs-fold",
            b"GET /frame HTTP/1.1\r\nHost: test.local\r\nX-Folded: a\r\n b\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "control byte in header value",
            b"GET /frame HTTP/1.1\r\nHost: test.local\r\nX-Ctl: a\x01b\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "CONNECT",
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_vec(),
            &[405],
        ),
        (
            "dot segment",
            b"GET /a/../frame HTTP/1.1\r\nHost: test.local\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "encoded dot segment",
            b"GET /a/%2e%2e/frame HTTP/1.1\r\nHost: test.local\r\n\r\n".to_vec(),
            &[400],
        ),
    ]
}

#[test]
fn malformed_framing_is_refused_and_closed() {
    let up = TestUpstream::start("main", Behavior::Ok);
    let gw = Gateway::start("", &config(&up));
    let mut failures = Vec::new();
    for (name, bytes, accepted) in framing_cases() {
        // Dot segments are routing, not framing: the connection may stay.
        let framing = !name.contains("dot segment");
        let ex = exchange(gw.port, &bytes, framing);
        match ex.status() {
            Some(s) if accepted.contains(&s) => {
                if framing && !ex.closed {
                    failures.push(format!("{name}: {s} but the connection stayed open"));
                }
            }
            _ => failures.push(format!(
                "{name}: expected one of {accepted:?}, got {:?}",
                ex.response.as_ref().map(|r| (r.status, r.text()))
            )),
        }
    }
    marker(&gw, "/marker");
    let seen = seen_paths(&up);
    if seen != ["GET /marker"] {
        failures.push(format!("the upstream saw refused requests: {seen:?}"));
    }
    assert!(
        failures.is_empty(),
        "{}\nlog:\n{}",
        failures.join("\n"),
        log_tail(&gw)
    );
}

#[test]
fn smuggled_request_after_cl_te_never_reaches_upstream() {
    let up = TestUpstream::start("main", Behavior::Ok);
    let gw = Gateway::start("", &config(&up));
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: test.local\r\n\r\n";
    // CL.TE: a CL-only parser reads 5 bytes; a TE parser stops at `0`, then sees the GET.
    let cl_te = format!(
        "POST /first HTTP/1.1\r\nHost: test.local\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        5 + smuggled.len()
    );
    // TE.CL: a TE parser reads the whole chunk; a CL-only parser stops after 4 bytes.
    let chunk = format!("{smuggled}x");
    let te_cl = format!(
        "POST /first HTTP/1.1\r\nHost: test.local\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    // TE with an obfuscated duplicate, then a pipelined request.
    let te_te = format!(
        "POST /first HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"
    );
    let mut failures = Vec::new();
    for (name, raw) in [("CL.TE", cl_te), ("TE.CL", te_cl), ("TE.TE", te_te)] {
        let mut c = Client::connect(gw.port);
        c.send_raw(raw.as_bytes());
        match c.read(false) {
            Ok(r) if r.status == 400 => {
                if !closed_within(&mut c, Duration::from_secs(3)) {
                    failures.push(format!("{name}: 400 but the connection stayed open"));
                }
            }
            other => failures.push(format!(
                "{name}: expected 400 and close, got {:?}",
                other.map(|r| (r.status, r.text()))
            )),
        }
    }
    marker(&gw, "/marker");
    let seen = seen_paths(&up);
    if seen.iter().any(|p| p.contains("/smuggled")) {
        failures.push(format!("a smuggled request reached the upstream: {seen:?}"));
    }
    if seen != ["GET /marker"] {
        failures.push(format!("the upstream saw ambiguous requests: {seen:?}"));
    }
    assert!(
        failures.is_empty(),
        "{}\nlog:\n{}",
        failures.join("\n"),
        log_tail(&gw)
    );
}

#[test]
fn pipelined_request_after_a_rejection_is_never_processed() {
    let up = TestUpstream::start("main", Behavior::Ok);
    let gw = Gateway::start("", &config(&up));
    let mut c = Client::connect(gw.port);
    c.send_raw(
        b"POST /first HTTP/1.1\r\nHost: test.local\r\nContent-Length: +5\r\n\r\nhelloGET /second HTTP/1.1\r\nHost: test.local\r\n\r\n",
    );
    let r = c.read(false).expect("a response");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        closed_within(&mut c, Duration::from_secs(3)),
        "the pipelined request was answered or the connection stayed open"
    );
    marker(&gw, "/marker");
    assert_eq!(seen_paths(&up), vec!["GET /marker"]);

    // Valid pipelining: the second request is answered in order, or the
    // connection closes after the first (the client retries); never anything else.
    let mut c = Client::connect(gw.port);
    c.send_raw(
        b"GET /p1 HTTP/1.1\r\nHost: test.local\r\n\r\nGET /p2 HTTP/1.1\r\nHost: test.local\r\n\r\n",
    );
    let a = c.read(false).expect("first pipelined response");
    assert_eq!((a.status, a.text()), (200, "main /p1".to_string()));
    match c.read(false) {
        Ok(b) => assert_eq!((b.status, b.text()), (200, "main /p2".to_string())),
        Err(_) => {
            marker(&gw, "/marker2");
            assert!(
                !seen_paths(&up).contains(&"GET /p2".to_string()),
                "/p2 was forwarded but never answered"
            );
        }
    }
}

const API_KEY: &str = "hygiene-test-key-1";

fn auth_config(up: &TestUpstream) -> String {
    let (code, hash, err) = run_cli(&["keys", "hash", API_KEY]);
    assert_eq!(code, 0, "{err}");
    format!(
        "security:\n  auth:\n    type: apiKey\n    header: X-API-Key\n    keys:\n      - key: \"{}\"\n        name: tester\nupstreams:\n  - name: main\n    url: \"{}\"\nroutes:\n  - path: \"/private/*\"\n    upstream: main\n    auth: required\n",
        hash.trim(),
        up.url()
    )
}

#[test]
fn pipelined_unauthenticated_request_never_reaches_upstream() {
    let up = TestUpstream::start("main", Behavior::Ok);
    let gw = Gateway::start("", &auth_config(&up));
    let r = request(gw.port, "GET", "/private/x", &[("X-API-Key", API_KEY)], b"");
    assert_eq!(r.status, 200, "the key works: {}", r.text());
    up.clear();

    // Authenticated, then unauthenticated, on one connection in one write.
    let mut c = Client::connect(gw.port);
    c.send_raw(
        format!(
            "GET /private/one HTTP/1.1\r\nHost: test.local\r\nX-API-Key: {API_KEY}\r\n\r\nGET /private/two HTTP/1.1\r\nHost: test.local\r\n\r\n"
        )
        .as_bytes(),
    );
    let a = c.read(false).expect("first response");
    assert_eq!(a.status, 200, "{}", a.text());
    if let Ok(b) = c.read(false) {
        assert_eq!(
            b.status,
            401,
            "unauthenticated pipelined request: {}",
            b.text()
        );
    }
    // The same smuggled through a body: one canonical forward at most.
    let mut c = Client::connect(gw.port);
    let inner = "GET /private/three HTTP/1.1\r\nHost: test.local\r\n\r\n";
    c.send_raw(
        format!(
            "POST /private/two HTTP/1.1\r\nHost: test.local\r\nX-API-Key: {API_KEY}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{inner}",
            5 + inner.len()
        )
        .as_bytes(),
    );
    let _ = c.read(false);
    let _ = closed_within(&mut c, Duration::from_secs(3));

    let r = request(
        gw.port,
        "GET",
        "/private/marker",
        &[("X-API-Key", API_KEY)],
        b"",
    );
    assert_eq!(r.status, 200);
    let seen = seen_paths(&up);
    assert!(
        !seen
            .iter()
            .any(|p| p.contains("/private/two") && p.starts_with("GET"))
            && !seen.iter().any(|p| p.contains("/private/three")),
        "an unauthenticated pipelined request reached the upstream: {seen:?}"
    );
    assert_eq!(seen.first().map(String::as_str), Some("GET /private/one"));
}

/// Drips `head` one byte per `pace` on a fresh connection (after one normal
/// request on it when `keepalive_first`) until the server closes it. Returns
/// the time from the first dripped byte to the close, or `None` after `give_up`.
/// Signals `started` once dripping is under way.
fn drip_until_closed(
    port: u16,
    keepalive_first: bool,
    head: &[u8],
    pace: Duration,
    give_up: Duration,
    started: mpsc::Sender<()>,
) -> Option<Duration> {
    let mut c = Client::connect(port);
    if keepalive_first {
        let r = c
            .request("GET", "/before", &[], b"")
            .expect("first request");
        assert_eq!(r.status, 200);
    }
    let mut s: TcpStream = c.reader.into_inner();
    s.set_read_timeout(Some(pace)).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 512];
    for (i, b) in head.iter().enumerate() {
        if start.elapsed() > give_up {
            return None;
        }
        if s.write_all(&[*b]).is_err() {
            return Some(start.elapsed());
        }
        if i == 1 {
            let _ = started.send(());
        }
        // The read both paces the client and notices the close.
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {} // an error response; the close follows
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

fn slow_head() -> Vec<u8> {
    format!(
        "GET /slow HTTP/1.1\r\nHost: test.local\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(100)
    )
    .into_bytes()
}

#[test]
fn slowloris_is_closed_at_the_header_deadline() {
    let up = TestUpstream::start("main", Behavior::Ok);
    let gw = Gateway::start("  limits:\n    headerTimeout: 1000\n", &config(&up));
    let port = gw.port;
    let (tx, rx) = mpsc::channel();
    let slow: Vec<_> = (0..6)
        .map(|i| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                // Half of them first make a normal request: the deadline applies per request.
                let closed = drip_until_closed(
                    port,
                    i % 2 == 1,
                    &slow_head(),
                    Duration::from_millis(200),
                    Duration::from_secs(6),
                    tx,
                );
                (closed, Instant::now())
            })
        })
        .collect();
    drop(tx);
    for _ in 0..6 {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("slow clients started");
    }
    // Normal clients are served while the slow ones drip.
    let mut served_at = Instant::now();
    for i in 0..5 {
        let r = request(port, "GET", &format!("/normal{i}"), &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        served_at = Instant::now();
    }
    for (i, h) in slow.into_iter().enumerate() {
        let (closed, closed_at) = h.join().unwrap();
        let took = closed.unwrap_or_else(|| {
            panic!(
                "slow client {i} was still connected after 6 s; log:\n{}",
                log_tail(&gw)
            )
        });
        assert!(
            took <= Duration::from_millis(2500),
            "slow client {i} closed only after {took:?}"
        );
        assert!(
            took >= Duration::from_millis(700),
            "slow client {i} closed after {took:?}, before the 1 s deadline"
        );
        assert!(
            served_at < closed_at,
            "normal requests were served only after the slow clients were gone"
        );
    }
    assert!(
        !seen_paths(&up).iter().any(|p| p.contains("/slow")),
        "a partial head was forwarded"
    );
}

#[test]
fn slow_post_does_not_block_other_clients() {
    let up = TestUpstream::start("main", Behavior::Ok);
    let gw = Gateway::start("  limits:\n    headerTimeout: 1000\n", &config(&up));
    // Slow bodies: heads complete (so the header deadline is met), bodies dripping.
    let mut slow: Vec<TcpStream> = (0..5)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
            s.write_all(
                b"POST /slowpost HTTP/1.1\r\nHost: test.local\r\nContent-Length: 100\r\n\r\nab",
            )
            .unwrap();
            s
        })
        .collect();
    for round in 0..4 {
        for s in &mut slow {
            s.write_all(b"c").unwrap();
        }
        let r = request(gw.port, "GET", &format!("/normal{round}"), &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        // Pace of the slow clients.
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen_paths(&up).iter().all(|p| !p.contains("/slowpost")));
}

/// A stalled request body is cut by the read timeout (`proxy.readTimeout`,
/// here 1.5 s) and the client is told it was too slow (408), not that the
/// upstream failed.
#[test]
fn stalled_post_body_is_cut_by_the_read_timeout() {
    let up = TestUpstream::start("main", Behavior::Ok);
    let gw = Gateway::start("  readTimeout: 1500\n", &config(&up));
    let mut c = Client::connect(gw.port);
    c.reader
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let start = Instant::now();
    c.send_raw(b"POST /stall HTTP/1.1\r\nHost: test.local\r\nContent-Length: 100\r\n\r\nab");
    let r = c.read(false);
    let took = start.elapsed();
    if let Err(e) = &r {
        assert!(
            !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "a stalled body held the connection for more than 10 s"
        );
    }
    assert!(
        took <= Duration::from_secs(5),
        "stalled body held the connection for {took:?}"
    );
    assert!(
        seen_paths(&up).iter().all(|p| !p.contains("/stall")),
        "an incomplete body was recorded upstream"
    );
    if let Ok(r) = &r {
        assert!(
            r.status == 408 || r.status == 400,
            "the client stalled, but got {} {} after {took:?}",
            r.status,
            r.text()
        );
    }
}

fn upload_config(up: &TestUpstream) -> String {
    format!(
        "upstreams:\n  - name: main\n    url: \"{}\"\nroutes:\n  - path: \"/upload/*\"\n    upstream: main\n    timeout: 2000\n",
        up.url()
    )
}

/// A body dripped one byte at a time resets every per-read timeout; the
/// route's total time (`timeout: 2000`) must still end it.
#[test]
fn dripped_post_body_is_cut_at_the_route_deadline() {
    let up = TestUpstream::start("main", Behavior::Ok);
    let gw = Gateway::start("", &upload_config(&up));
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.write_all(b"POST /upload/drip HTTP/1.1\r\nHost: test.local\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    // The read paces the client (200 ms per byte) and notices the end.
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    let mut answer = String::new();
    let mut ended = None;
    while start.elapsed() < Duration::from_secs(8) && ended.is_none() {
        if s.write_all(b"x").is_err() {
            ended = Some(start.elapsed());
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => ended = Some(start.elapsed()),
            Ok(n) => {
                answer.push_str(&String::from_utf8_lossy(&buf[..n]));
                ended = Some(start.elapsed());
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => ended = Some(start.elapsed()),
        }
    }
    let took = ended.unwrap_or_else(|| {
        panic!(
            "a body dripped at 5 bytes/s was still being accepted after {:?} (route timeout 2 s); log:\n{}",
            start.elapsed(),
            log_tail(&gw)
        )
    });
    assert!(took <= Duration::from_secs(5), "ended only after {took:?}");
    assert!(
        !answer.starts_with("HTTP/1.1 2"),
        "a cut body got a success: {answer}"
    );
    assert!(
        seen_paths(&up).is_empty(),
        "an incomplete body was recorded upstream"
    );
}

/// A connection that got a 200 (retrying while earlier test connections,
/// such as the harness's readiness probe, are still being released).
fn admitted(port: u16, path: &str) -> Client {
    admitted_with(|| Client::connect(port), path)
}

/// Like [`admitted`], connecting with `connect`.
fn admitted_with(connect: impl Fn() -> Client, path: &str) -> Client {
    let mut last = String::new();
    let mut admitted = None;
    eventually(Duration::from_secs(5), || {
        let mut c = connect();
        match c.request("GET", path, &[], b"") {
            Ok(r) if r.status == 200 => {
                admitted = Some(c);
                true
            }
            Ok(r) => {
                last = format!("{} {}", r.status, r.text());
                false
            }
            Err(e) => {
                last = e.to_string();
                false
            }
        }
    });
    admitted.unwrap_or_else(|| panic!("no connection admitted: {last}"))
}

/// A connection from another loopback source address.
fn connect_from(src: &str, port: u16) -> Client {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
        sock.connect(([127, 0, 0, 1], port).into())
            .await
            .expect("connect from another source address")
            .into_std()
            .unwrap()
    });
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    Client {
        reader: std::io::BufReader::new(stream),
    }
}

/// Asserts a refused connection: 503, Retry-After, then closed.
fn assert_refused(c: &mut Client, reason: &str) {
    // The refusal is written on accept, before any request is read (nothing
    // is sent, so no unread request can turn the close into a reset).
    let r = c.read(false).expect("a 503 response");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.header("retry-after").is_some(),
        "no Retry-After: {:?}",
        r.headers
    );
    assert!(r.text().contains(reason), "{}", r.text());
    assert!(
        closed_within(c, Duration::from_secs(3)),
        "refused connection left open"
    );
}

#[test]
fn per_ip_connection_cap() {
    let up = TestUpstream::start("main", Behavior::Ok);
    let gw = Gateway::start("  limits:\n    maxConnectionsPerIp: 2\n", &config(&up));
    let mut a = admitted(gw.port, "/a");
    // Once two are open, the third from the same address is refused.
    let mut b = admitted(gw.port, "/b");
    let mut third = Client::connect(gw.port);
    assert_refused(&mut third, "this address");

    // Another client address is not affected by this one's cap.
    let mut other = connect_from("127.0.0.2", gw.port);
    let r = other.request("GET", "/other", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // The open ones still work.
    assert_eq!(a.request("GET", "/a2", &[], b"").unwrap().status, 200);
    assert_eq!(b.request("GET", "/b2", &[], b"").unwrap().status, 200);

    // Closing one frees its slot.
    drop(a);
    let mut c = admitted(gw.port, "/c");
    assert_eq!(c.request("GET", "/c2", &[], b"").unwrap().status, 200);
}

#[test]
fn global_connection_cap() {
    let up = TestUpstream::start("main", Behavior::Ok);
    let gw = Gateway::start("  limits:\n    maxConnections: 2\n", &config(&up));
    let _a = admitted(gw.port, "/a");
    let b = admitted_with(|| connect_from("127.0.0.2", gw.port), "/b");
    let mut third = connect_from("127.0.0.3", gw.port);
    assert_refused(&mut third, "connection limit");
    drop(b);
    let mut c = admitted(gw.port, "/c");
    assert_eq!(c.request("GET", "/c2", &[], b"").unwrap().status, 200);
}

#[test]
fn keepalive_request_limit_closes_the_connection() {
    let up = TestUpstream::start("main", Behavior::Ok);
    let gw = Gateway::start("  limits:\n    keepaliveRequests: 3\n", &config(&up));
    let mut c = Client::connect(gw.port);
    let mut served = 0;
    let mut closed = false;
    for i in 0..10 {
        match c.request("GET", &format!("/k{i}"), &[], b"") {
            Ok(r) => {
                assert_eq!(r.status, 200, "{}", r.text());
                served += 1;
                let closing = r
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                if closing {
                    assert!(
                        closed_within(&mut c, Duration::from_secs(3)),
                        "Connection: close but the connection stayed open"
                    );
                    closed = true;
                    break;
                }
            }
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(
        closed,
        "the connection served {served} requests and stayed open"
    );
    assert!(
        (3..=4).contains(&served),
        "closed after {served} responses, expected 3 or 4"
    );
    // A new connection is served again.
    assert_eq!(request(gw.port, "GET", "/fresh", &[], b"").status, 200);
}
