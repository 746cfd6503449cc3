//! The canonical request target through the real gateway and a recording
//! upstream: every spelling of a path is either refused (400) or routed and
//! forwarded exactly as its canonical form; absolute-form and `*` targets,
//! Host normalisation, TRACE, and pipelined requests.
//!
//! Routes: `/admin/*` needs an API key, `/*` does not, both to one upstream.
//! A spelling that reached the catch-all without a key would be the bypass.

mod common;
use common::*;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

const KEY: &str = "canonical-test-key";

fn config(up: &TestUpstream, paths: &str) -> String {
    let digest = run_cli(&["keys", "hash", KEY]).1.trim().to_string();
    format!(
        r#"{paths}upstreams:
  - name: app
    url: "{url}"
routes:
  - id: admin
    path: /admin/*
    upstream: app
    auth: required
  - id: tenant
    path: /t/*
    host: "api.example.com"
    upstream: app
    auth: required
  - id: debug
    path: /debug
    methods: [TRACE, GET]
    upstream: app
  - id: all
    path: /*
    upstream: app
security:
  auth:
    header: X-API-Key
    # Spellings are sent without a key on purpose, many times from one
    # address: the failed-authentication budget would end the test early.
    failureLimit: {{max: 0}}
    keys:
      - key: "{digest}"
        name: tester
"#,
        url = up.url(),
    )
}

/// Sends `METHOD target HTTP/1.1` with a Host and optional key; returns the
/// status and, when forwarded, the request line's target the upstream saw.
fn send(gw: &Gateway, up: &TestUpstream, target: &[u8], key: bool) -> (u16, Option<String>) {
    up.clear();
    let mut raw = b"GET ".to_vec();
    raw.extend_from_slice(target);
    raw.extend_from_slice(b" HTTP/1.1\r\nHost: test.local\r\n");
    if key {
        raw.extend_from_slice(format!("X-API-Key: {KEY}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"Connection: close\r\n\r\n");
    let status = match common::raw(gw.port, &raw) {
        Ok(r) => r.status,
        Err(e) => panic!("{:?}: no response: {e}", String::from_utf8_lossy(target)),
    };
    let seen = up.requests.lock().unwrap().last().map(|r| r.path.clone());
    (status, seen)
}

/// Spellings of protected and unprotected paths, with their canonical form
/// (`None` = refused with 400).
const CORPUS: &[(&str, Option<&str>)] = &[
    ("/admin/secret", Some("/admin/secret")),
    ("/%61dmin/secret", Some("/admin/secret")),
    ("/%41dmin/secret", Some("/Admin/secret")),
    ("/ad%6Din/secr%65t", Some("/admin/secret")),
    ("//admin/secret", Some("/admin/secret")),
    ("/admin//secret", Some("/admin/secret")),
    ("///admin///secret?x=1", Some("/admin/secret?x=1")),
    (
        "/admin/secret?redirect=%2F..%2F",
        Some("/admin/secret?redirect=%2F..%2F"),
    ),
    ("/admin/caf%c3%a9", Some("/admin/caf%C3%A9")),
    ("/admin/a%7eb", Some("/admin/a~b")),
    ("/admin/a\"b", Some("/admin/a%22b")),
    ("/admin;x/secret", None),
    ("/admin/secret;jsessionid=1", None),
    ("/x/..;/admin/secret", None),
    ("/x/%2e%2e%2fadmin/secret", None),
    ("/x/%2e%2e/admin/secret", None),
    ("/x/.%2e/admin/secret", None),
    ("/x/../admin/secret", None),
    ("/./admin/secret", None),
    ("/%2e/admin/secret", None),
    ("/admin%2fsecret", None),
    ("/admin%2Fsecret", None),
    ("/x%5c..%5cadmin/secret", None),
    ("/x\\..\\admin/secret", None),
    ("/admin/secret%00", None),
    ("/%2561dmin/secret", None),
    ("/admin/%zz", None),
    ("/admin/%4", None),
    ("x:/admin/secret", None),
    ("admin/secret", None),
    ("ftp://h/admin/secret", None),
    ("http://user@h/admin/secret", None),
    ("*", None),
    ("http://test.local/admin/secret", Some("/admin/secret")),
    ("HTTP://test.local//%61dmin/secret", Some("/admin/secret")),
    ("/public/x", Some("/public/x")),
    ("/%70ublic//x", Some("/public/x")),
];

#[test]
fn every_spelling_is_refused_or_routed_and_forwarded_as_its_canonical_form() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start("", &config(&up, ""));
    for (raw, canonical) in CORPUS {
        let (status, seen) = send(&gw, &up, raw.as_bytes(), true);
        match canonical {
            None => {
                assert_eq!(status, 400, "{raw:?} must be refused");
                assert_eq!(seen, None, "{raw:?} must not reach the upstream");
            }
            Some(c) => {
                assert_eq!(status, 200, "{raw:?} with a key");
                assert_eq!(seen.as_deref(), Some(*c), "{raw:?} forwarded as");
                // Without a key it is routed like its canonical form.
                let (anon, _) = send(&gw, &up, raw.as_bytes(), false);
                let (canon_anon, _) = send(&gw, &up, c.as_bytes(), false);
                assert_eq!(anon, canon_anon, "{raw:?} routed like {c:?}");
            }
        }
    }
    // The protected route never answers 200 without a key, whatever the spelling.
    for raw in [
        "/%61dmin/secret",
        "//admin/secret",
        "http://test.local/admin/x",
    ] {
        assert_eq!(send(&gw, &up, raw.as_bytes(), false).0, 401, "{raw}");
    }
    // Raw non-ASCII bytes are forwarded percent-encoded, as their escape is.
    let (status, seen) = send(&gw, &up, b"/admin/caf\xc3\xa9", true);
    assert_eq!((status, seen.as_deref()), (200, Some("/admin/caf%C3%A9")));
    let log = gw.log();
    assert!(!log.contains("panicked"), "{log}");
}

/// Random spellings of `/admin/<segment>`: every one needs the key and,
/// with it, reaches the upstream as the one canonical path.
#[test]
fn generated_spellings_of_a_protected_path_never_skip_its_auth() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start("", &config(&up, ""));
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let plain = "/admin/Report-2024_v1.txt";
    for _ in 0..150 {
        let mut spelled = String::new();
        for c in plain.chars() {
            match c {
                '/' if rng.u8(..4) == 0 => spelled.push_str("//"),
                '/' => spelled.push('/'),
                c if rng.bool() => {
                    let hex = format!("%{:02X}", c as u32);
                    spelled.push_str(&if rng.bool() { hex.to_lowercase() } else { hex });
                }
                c => spelled.push(c),
            }
        }
        let (anon, _) = send(&gw, &up, spelled.as_bytes(), false);
        assert_eq!(anon, 401, "{spelled} without a key");
        let (status, seen) = send(&gw, &up, spelled.as_bytes(), true);
        assert_eq!(status, 200, "{spelled}");
        assert_eq!(seen.as_deref(), Some(plain), "{spelled} forwarded as");
    }
}

#[test]
fn path_options_keep_slashes_and_match_without_parameters() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let paths = "  paths:\n    mergeSlashes: false\n    escapedSlashes: keep\n    pathParameters: ignoreForMatching\n";
    let gw = Gateway::start(paths, &config(&up, ""));
    // `;` parameters: matched without them (the protected route), forwarded with them.
    assert_eq!(send(&gw, &up, b"/admin;x/secret", false).0, 401);
    let (s, seen) = send(&gw, &up, b"/admin;jsessionid=1/secret", true);
    assert_eq!(
        (s, seen.as_deref()),
        (200, Some("/admin;jsessionid=1/secret"))
    );
    // Repeated slashes kept: `//admin` is not `/admin`, for the router and upstream alike.
    let (s, seen) = send(&gw, &up, b"//admin/secret", false);
    assert_eq!((s, seen.as_deref()), (200, Some("//admin/secret")));
    // Escaped slashes kept as is (upper-cased), never decoded.
    let (s, seen) = send(&gw, &up, b"/files/a%2fb", false);
    assert_eq!((s, seen.as_deref()), (200, Some("/files/a%2Fb")));
    // Dot segments stay refused whatever the options.
    assert_eq!(send(&gw, &up, b"/x/..;/admin/secret", true).0, 400);
    // Bad values are named by `check`.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "proxy:\n  paths:\n    escapedSlashes: decode\n").unwrap();
    let (code, out, err) = run_cli(&["check", "-c", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        format!("{out}{err}").contains("proxy.paths.escapedSlashes"),
        "{out}{err}"
    );
}

fn exchange(gw: &Gateway, raw: &[u8]) -> Response {
    common::raw(gw.port, raw).expect("a response")
}

#[test]
fn targets_hosts_and_methods() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start("", &config(&up, ""));
    // Absolute-form: routed on its path and its authority (which stands for
    // the Host when none is sent), forwarded in origin-form.
    let r = exchange(
        &gw,
        format!("GET http://API.example.com./t/x HTTP/1.1\r\nX-API-Key: {KEY}\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.path, "/t/x");
    assert_eq!(seen.header("x-forwarded-host"), Some("API.example.com."));
    let r = exchange(
        &gw,
        b"GET http://api.example.com/t/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
    );
    assert_eq!(r.status, 401, "the host route's auth applies");
    // A Host that contradicts the authority is refused, never routed on either.
    up.clear();
    let r = exchange(
        &gw,
        b"GET http://test.local/admin/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    assert_eq!(up.hits(), 0);
    // Host: case, trailing dot and port do not matter for matching.
    for host in [
        "api.example.com",
        "API.Example.COM",
        "api.example.com.",
        "api.example.com:8443",
    ] {
        let r = exchange(
            &gw,
            format!("GET /t/x HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        );
        assert_eq!(
            r.status, 401,
            "Host {host} must reach the protected host route"
        );
    }
    // HTTP/1.1 needs a Host; HTTP/1.0 does not.
    let r = exchange(&gw, b"GET /public HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("Host"), "{}", r.text());
    let r = exchange(&gw, b"GET /public HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = exchange(&gw, b"GET /public HTTP/1.1\r\nHost: a b\r\n\r\n");
    assert_eq!(r.status, 400);
    // `*`: OPTIONS only, answered by the gateway.
    up.clear();
    let r = exchange(&gw, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.header("allow").is_some_and(|a| a.contains("GET")));
    assert_eq!(up.hits(), 0);
    assert_eq!(
        exchange(&gw, b"GET * HTTP/1.1\r\nHost: x\r\n\r\n").status,
        400
    );
    // TRACE: 405 unless a route lists it.
    let r = exchange(&gw, b"TRACE /public HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 405);
    assert!(!r.header("allow").unwrap_or("").contains("TRACE"));
    let r = exchange(&gw, b"TRACE /debug HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(up.last().method, "TRACE");
}

#[test]
fn pipelined_requests_are_all_answered_in_order_each_through_the_chain() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start("", &config(&up, ""));
    let stream = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    // Four requests in one write: the unauthenticated one is refused on its
    // own, the others are forwarded, the POST with its body.
    writer
        .write_all(
            b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /admin/secret HTTP/1.1\r\nHost: x\r\n\r\n\
              POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
              GET /%74hree HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        let r = read_response(&mut reader, false).expect("every pipelined request is answered");
        got.push((r.status, r.text()));
    }
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![200, 401, 200, 200],
        "{got:?}"
    );
    assert!(
        got[0].1.ends_with("/one") && got[2].1.ends_with("/two") && got[3].1.ends_with("/three")
    );
    let seen: Vec<(String, String)> = up
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("GET".into(), "/one".into()),
            ("POST".into(), "/two".into()),
            ("GET".into(), "/three".into())
        ]
    );
    assert_eq!(up.requests.lock().unwrap()[1].body, b"hello");
}
