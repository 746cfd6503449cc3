//! Limits that hold against many addresses and against guessing, through the
//! real gateway: IPv4-mapped addresses are their IPv4 address, IPv6 clients
//! count by /64, 20,000 fresh addresses cause no false 429, address-keyed
//! limits run before authentication, failed authentications have their own
//! budget, and `auth.failure` events are coalesced.
//!
//! Client addresses are set through `X-Forwarded-For` from a trusted peer
//! (127.0.0.1), the way a gateway behind a load balancer sees them.

mod common;
use common::*;
use std::time::Duration;

const TRUSTED: &str = "  trustedProxies: [\"127.0.0.1/32\"]\n";
const KEY: &str = "address-limits-key";

fn digest() -> String {
    run_cli(&["keys", "hash", KEY]).1.trim().to_string()
}

fn from(gw: &Gateway, path: &str, addr: &str, key: Option<&str>) -> Response {
    let mut h = vec![("X-Forwarded-For", addr)];
    if let Some(k) = key {
        h.push(("X-API-Key", k));
    }
    request(gw.port, "GET", path, &h, b"")
}

/// `/limited/*` allows 2 requests per client and minute; `10.66.0.0/16` is denied.
fn limited_and_denied(up: &TestUpstream) -> String {
    format!(
        r#"upstreams:
  - name: app
    url: "{}"
routes:
  - id: limited
    path: /limited/*
    upstream: app
    rateLimit: {{max: 2, windowMs: 60000}}
  - id: all
    path: /*
    upstream: app
security:
  denyIps: ["10.66.0.0/16"]
"#,
        up.url()
    )
}

#[test]
fn mapped_addresses_are_ipv4_and_ipv6_clients_count_by_prefix() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let body = limited_and_denied(&up);
    let gw = Gateway::start(TRUSTED, &body);
    // IP rules: the mapped spelling of a denied address is denied.
    assert_eq!(from(&gw, "/x", "10.66.1.1", None).status, 403);
    assert_eq!(from(&gw, "/x", "::ffff:10.66.1.1", None).status, 403);
    // The upstream is told the IPv4 form.
    assert_eq!(from(&gw, "/x", "::ffff:192.0.2.7", None).status, 200);
    assert_eq!(up.last().header("x-real-ip"), Some("192.0.2.7"));
    // Limits: both spellings are one client.
    assert_eq!(from(&gw, "/limited/a", "192.0.2.1", None).status, 200);
    assert_eq!(
        from(&gw, "/limited/a", "::ffff:192.0.2.1", None).status,
        200
    );
    assert_eq!(from(&gw, "/limited/a", "192.0.2.1", None).status, 429);
    // IPv6: two addresses of one /64 share a budget; another /64 has its own.
    assert_eq!(from(&gw, "/limited/a", "2001:db8:1:2::1", None).status, 200);
    assert_eq!(
        from(&gw, "/limited/a", "2001:db8:1:2:ffff::9", None).status,
        200
    );
    let third = from(&gw, "/limited/a", "2001:db8:1:2:abcd::3", None);
    assert_eq!(third.status, 429, "same /64: {}", third.text());
    assert_eq!(from(&gw, "/limited/a", "2001:db8:1:3::1", None).status, 200);
    drop(gw);

    // `ipv6Prefix: 128` keys every address apart; a bad value is named.
    let per_address = body.replace("security:", "rateLimit:\n  ipv6Prefix: 128\nsecurity:");
    let gw = Gateway::start(TRUSTED, &per_address);
    for i in 1..=4 {
        let addr = format!("2001:db8:1:2::{i}");
        assert_eq!(from(&gw, "/limited/a", &addr, None).status, 200, "{addr}");
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "rateLimit:\n  ipv6Prefix: 0\n").unwrap();
    let (code, out, err) = run_cli(&["check", "-c", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        format!("{out}{err}").contains("rateLimit.ipv6Prefix"),
        "{out}{err}"
    );
}

#[test]
fn twenty_thousand_fresh_addresses_get_no_false_429() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let body = format!(
        r#"upstreams:
  - name: app
    url: "{}"
routes:
  - id: all
    path: /*
    upstream: app
    rateLimit: {{max: 10, windowMs: 60000}}
logging:
  accessLog: false
"#,
        up.url()
    );
    let gw = Gateway::start(TRUSTED, &body);
    let port = gw.port;
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                let mut refused = Vec::new();
                for i in 0..5_000u32 {
                    if i % 500 == 0 {
                        // Within the keep-alive request limit (1000).
                        c = Client::connect(port);
                    }
                    let n = t * 5_000 + i;
                    let addr = if n % 2 == 0 {
                        format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255)
                    } else {
                        format!("2001:db8:{:x}:{:x}::1", n >> 16, n & 0xffff)
                    };
                    let r = c
                        .request("GET", "/fresh", &[("X-Forwarded-For", &addr)], b"")
                        .expect("response");
                    if r.status != 200 {
                        refused.push((addr, r.status));
                    }
                }
                refused
            })
        })
        .collect();
    let refused: Vec<(String, u16)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(
        refused.is_empty(),
        "{} false refusals, e.g. {:?}",
        refused.len(),
        &refused[..refused.len().min(5)]
    );
    // The limit itself still holds for one client.
    let statuses: Vec<u16> = (0..11)
        .map(|_| from(&gw, "/one", "198.51.100.77", None).status)
        .collect();
    assert_eq!(statuses[..10], [200; 10]);
    assert_eq!(statuses[10], 429);
}

fn auth_config(up: &TestUpstream, extra: &str) -> String {
    format!(
        r#"upstreams:
  - name: app
    url: "{url}"
routes:
  - id: guarded
    path: /guarded/*
    upstream: app
    auth: required
    rateLimit: {{max: 3, windowMs: 60000}}
  - id: private
    path: /private/*
    upstream: app
    auth: required
security:
  auth:
    header: X-API-Key
    keys:
      - key: "{digest}"
        name: tester
{extra}"#,
        url = up.url(),
        digest = digest(),
    )
}

#[test]
fn address_limits_run_before_authentication() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start(TRUSTED, &auth_config(&up, "    failureLimit: {max: 0}\n"));
    let statuses: Vec<u16> = (0..5)
        .map(|_| from(&gw, "/guarded/x", "203.0.113.50", Some("wrong-key")).status)
        .collect();
    assert_eq!(statuses, vec![401, 401, 401, 429, 429]);
}

#[test]
fn failed_authentications_have_their_own_budget_and_coalesced_events() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start(
        TRUSTED,
        &auth_config(&up, "    failureLimit: {max: 5, windowMs: 60000}\n"),
    );
    let guesser = "203.0.113.60";
    let statuses: Vec<u16> = (0..40)
        .map(|i| from(&gw, "/private/x", guesser, Some(&format!("guess-{i}"))).status)
        .collect();
    assert_eq!(statuses[..5], [401; 5]);
    assert!(statuses[5..].iter().all(|&s| s == 429), "{statuses:?}");
    // Even the right key waits for the window: credentials are not tried.
    let r = from(&gw, "/private/x", guesser, Some(KEY));
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "too_many_auth_failures");
    assert!(r.header("retry-after").is_some());
    // Another address is unaffected, and the same /64 would not be.
    assert_eq!(
        from(&gw, "/private/x", "203.0.113.61", Some(KEY)).status,
        200
    );
    // 5 failures for one address: its first and the one that spent the
    // budget are reported, not every guess.
    let events = || {
        gw.log()
            .lines()
            .filter(|l| l.contains("auth.failure"))
            .count()
    };
    assert!(eventually(Duration::from_secs(2), || events() >= 2));
    assert_eq!(events(), 2, "{}", gw.log());
    // Many guessing addresses: the process-wide cap holds the event rate.
    for i in 0..60 {
        from(&gw, "/private/x", &format!("198.18.0.{i}"), Some("nope"));
    }
    let reported = events() - 2;
    assert!(
        reported < 60,
        "every guess was reported ({reported}): {}",
        gw.log()
    );
}

/// On a dual-stack listener an IPv4 client arrives as `::ffff:a.b.c.d`: it is
/// its IPv4 address for `trustedProxies`, IP rules, limits and the
/// per-address connection cap, and in what the upstream and the log are told.
#[test]
fn a_dual_stack_listener_sees_ipv4_clients_as_ipv4() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let body = limited_and_denied(&up);
    let dual_stack = |section: String| {
        let out = section.replace(
            "proxy:\n  listen: \"127.0.0.1:",
            "proxy:\n  listen: \"[::]:",
        );
        format!(
            "{out}  trustedProxies: [\"127.0.0.1/32\"]\n  limits:\n    maxConnectionsPerIp: 3\n"
        )
    };
    let gw = Gateway::start_edited(&dual_stack, &body, &[], &[]);
    assert!(
        std::fs::read_to_string(&gw.config_path)
            .unwrap()
            .contains("listen: \"[::]:"),
        "the proxy listens dual-stack"
    );
    // The peer (::ffff:127.0.0.1) is the trusted 127.0.0.1: its
    // X-Forwarded-For is believed, so the denied client is refused.
    assert_eq!(from(&gw, "/x", "10.66.1.1", None).status, 403);
    assert_eq!(from(&gw, "/x", "192.0.2.44", None).status, 200);
    assert_eq!(up.last().header("x-real-ip"), Some("192.0.2.44"));
    // Without a forwarded address the client is 127.0.0.1, as IPv4.
    assert_eq!(request(gw.port, "GET", "/x", &[], b"").status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    let statuses: Vec<u16> = (0..3)
        .map(|_| request(gw.port, "GET", "/limited/x", &[], b"").status)
        .collect();
    assert_eq!(statuses, vec![200, 200, 429]);
    // The per-address connection cap counts the mapped peer as 127.0.0.1.
    // Three connections answered (so admitted), then a fourth is refused.
    let mut held = Vec::new();
    assert!(eventually(Duration::from_secs(5), || {
        let mut c = Client::connect(gw.port);
        if c.request("GET", "/x", &[], b"")
            .is_ok_and(|r| r.status == 200)
        {
            held.push(c);
        }
        held.len() == 3
    }));
    let mut extra = Client::connect(gw.port);
    let refused = extra.read(false).expect("a refusal");
    assert_eq!(refused.status, 503, "{}", refused.text());
    drop(held);
    let log = gw.log();
    assert!(
        !log.contains("::ffff:"),
        "mapped addresses in the log: {log}"
    );
}
