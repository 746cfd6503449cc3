//! Webhooks, black box: the real binary delivering to real receivers on
//! loopback. Signatures are checked here with the test's own HMAC code; a
//! receiver that is down and comes back gets each event once; a restart
//! mid-retry (file journal, and PostgreSQL) still delivers once; two nodes
//! sharing PostgreSQL deliver a cluster-wide event once; 10,000 rate-limit
//! hits become a handful of POSTs carrying the exact count; 410 and long
//! failure disable a subscription (audited); a dead letter is replayed;
//! URLs the SSRF policy refuses are refused with their field.

mod common;

use base64::Engine;
use common::pg::TestDb;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const AUTH: (&str, &str) = ("Authorization", "Bearer test-admin-token");
const JSON: (&str, &str) = ("Content-Type", "application/json");
/// 32 bytes, in the Standard Webhooks form.
const SECRET: &str = "whsec_c2VjcmV0LWtleS1vZi10aGlydHktdHdvLWJ5dGVzISE=";

/// Fast retries for tests.
const FAST: &str = "    initialDelay: 100ms\n    maxDelay: 300ms\n    maxRetries: 20\n";

fn admin(gw: &Gateway, method: &str, path: &str, body: &Value) -> Response {
    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    request(gw.admin_port, method, path, &[AUTH, JSON], text.as_bytes())
}

/// The POSTs a receiver got (health checks excluded).
fn posts(rx: &TestUpstream) -> Vec<Recorded> {
    rx.requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.method == "POST")
        .cloned()
        .collect()
}

fn body_json(r: &Recorded) -> Value {
    serde_json::from_slice(&r.body).expect("a JSON body")
}

/// Checks a delivery's signature with this test's own code: HMAC-SHA256
/// keyed by the decoded `whsec_` secret over `id.timestamp.body`.
fn assert_signed(r: &Recorded) {
    let id = r.header("webhook-id").expect("webhook-id");
    let ts = r.header("webhook-timestamp").expect("webhook-timestamp");
    let sig = r.header("webhook-signature").expect("webhook-signature");
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(SECRET.strip_prefix("whsec_").unwrap()).unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let mut signed = format!("{id}.{ts}.").into_bytes();
    signed.extend_from_slice(&r.body);
    let expected = format!(
        "v1,{}",
        b64.encode(ring::hmac::sign(&key, &signed).as_ref())
    );
    assert!(
        sig.split(' ').any(|s| s == expected),
        "signature {sig:?} is not {expected:?}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ts: u64 = ts.parse().expect("a Unix time");
    assert!(now.abs_diff(ts) < 60, "timestamp {ts} is now");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = body_json(r);
    assert_eq!(body["id"], id, "the payload id is the webhook-id");
    for field in ["type", "time", "node", "data"] {
        assert!(!body[field].is_null(), "payload has {field}: {body}");
    }
}

fn hook(id: &str, rx: &TestUpstream, events: &str, extra: &str) -> String {
    format!(
        "  - id: {id}\n    url: \"{}/hook\"\n    events: {events}\n    secret: \"{SECRET}\"\n{extra}",
        rx.url()
    )
}

fn deliveries(gw: &Gateway, hook: &str, query: &str) -> Vec<Value> {
    let r = admin(
        gw,
        "GET",
        &format!("/api/webhooks/{hook}/deliveries{query}"),
        &Value::Null,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["deliveries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn create_route(gw: &Gateway, id: &str) {
    let r = admin(
        gw,
        "POST",
        "/api/routes",
        &json!({"id": id, "path": format!("/{id}"), "upstream": "app"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
}

fn wait(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    assert!(eventually(timeout, cond), "timed out waiting for {what}");
}

/// The webhook-ids of the POSTs of one event type.
fn ids_of(rx: &TestUpstream, kind: &str) -> BTreeSet<String> {
    posts(rx)
        .iter()
        .filter(|r| body_json(r)["type"] == kind)
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect()
}

const APP: &str = "upstreams:\n  - name: app\n    url: \"http://127.0.0.1:9\"\n";

#[test]
fn a_receiver_that_comes_back_gets_each_signed_event_once() {
    let rx = TestUpstream::start("rx", Behavior::Status(503));
    let gw = Gateway::start(
        "",
        &format!("{APP}webhooks:\n{}", hook("h", &rx, "[\"config.*\"]", FAST)),
    );
    create_route(&gw, "one");
    wait("three failed attempts", Duration::from_secs(10), || {
        posts(&rx).len() >= 3
    });
    let pending = deliveries(&gw, "h", "?status=pending");
    assert_eq!(pending.len(), 1, "{pending:?}");
    wait(
        "the queue depth on /metrics",
        Duration::from_secs(8),
        || {
            request(gw.admin_port, "GET", "/metrics", &[], b"")
                .text()
                .contains("flexgate_webhook_queue_depth{webhook=\"h\"} 1")
        },
    );
    assert!(pending[0]["attempts"].as_u64().unwrap() >= 1);
    assert_eq!(pending[0]["lastStatus"], 503);
    rx.set_behavior(Behavior::Ok);
    wait("the delivery to succeed", Duration::from_secs(10), || {
        !deliveries(&gw, "h", "?status=succeeded").is_empty()
    });
    let settled = posts(&rx).len();
    std::thread::sleep(Duration::from_millis(1500));
    let all = posts(&rx);
    assert_eq!(all.len(), settled, "nothing is sent after the success");
    for r in &all {
        assert_signed(r);
        assert_eq!(r.path, "/hook");
    }
    let ids: BTreeSet<_> = all
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "every attempt carries the same webhook-id");
    let body = body_json(&all[0]);
    assert_eq!(body["type"], "config.changed");
    assert!(body["data"]["version"].as_u64().is_some(), "{body}");
    let done = &deliveries(&gw, "h", "?status=succeeded")[0];
    assert_eq!(done["attempts"].as_u64().unwrap() as usize, all.len());
    assert_eq!(done["lastStatus"], 200);
    assert_eq!(done["type"], "config.changed");
    let metrics = request(gw.admin_port, "GET", "/metrics", &[], b"").text();
    assert!(
        metrics
            .contains("flexgate_webhook_deliveries_total{outcome=\"succeeded\",webhook=\"h\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("webhook"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn a_restart_mid_retry_still_delivers_once() {
    let rx = TestUpstream::start("rx", Behavior::Status(500));
    let mut gw = Gateway::start(
        "",
        &format!(
            "{APP}webhooks:\n{}",
            hook("h", &rx, "[\"config.changed\"]", FAST)
        ),
    );
    create_route(&gw, "one");
    wait("two failed attempts", Duration::from_secs(10), || {
        posts(&rx).len() >= 2
    });
    let id = posts(&rx)[0].header("webhook-id").unwrap().to_string();
    gw.kill_and_restart();
    rx.set_behavior(Behavior::Ok);
    wait(
        "the delivery after the restart",
        Duration::from_secs(10),
        || {
            posts(&rx)
                .iter()
                .any(|r| r.header("webhook-id") == Some(&id) && rx_answered_ok(&gw, "h", &id))
        },
    );
    let settled = posts(&rx).len();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        posts(&rx).len(),
        settled,
        "nothing is sent after the success"
    );
    let same: Vec<_> = posts(&rx)
        .into_iter()
        .filter(|r| r.header("webhook-id") == Some(&id))
        .collect();
    let succeeded: Vec<_> = deliveries(&gw, "h", "?status=succeeded")
        .into_iter()
        .filter(|d| d["eventId"] == id.as_str())
        .collect();
    assert_eq!(succeeded.len(), 1, "one delivery of the event");
    // Every attempt is on record, except one the kill may have cut between
    // its POST and its record (at least once: it is sent again).
    let recorded = succeeded[0]["attempts"].as_u64().unwrap() as usize;
    assert!(
        recorded == same.len() || recorded + 1 == same.len(),
        "{recorded} attempts recorded, {} received",
        same.len()
    );
}

/// Whether the delivery of `event_id` is recorded as succeeded.
fn rx_answered_ok(gw: &Gateway, hook: &str, event_id: &str) -> bool {
    deliveries(gw, hook, "?status=succeeded")
        .iter()
        .any(|d| d["eventId"] == event_id)
}

#[test]
fn ten_thousand_rate_limit_hits_become_a_few_posts_with_the_exact_count() {
    let rx = TestUpstream::start("rx", Behavior::Ok);
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start(
        "",
        &format!(
            "upstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - id: api\n    path: /api\n    upstream: app\n    rateLimit:\n      max: 1\n      windowMs: 600000\nwebhooks:\n{}",
            up.url(),
            hook("h", &rx, "[\"rate_limit.exceeded\"]", "    coalesceWindow: 2s\n")
        ),
    );
    let started = Instant::now();
    let refused: usize = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut c = Client::connect(gw.port);
                    let mut refused = 0;
                    for _ in 0..2_500 {
                        // The gateway closes a connection after its keep-alive budget.
                        let r = match c.request("GET", "/api", &[], b"") {
                            Ok(r) => r,
                            Err(_) => {
                                c = Client::connect(gw.port);
                                c.request("GET", "/api", &[], b"").expect("response")
                            }
                        };
                        refused += usize::from(r.status == 429);
                    }
                    refused
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let burst = started.elapsed();
    assert_eq!(refused, 9_999, "one request passes the limit of 1");
    let total = |rx: &TestUpstream| -> u64 {
        posts(rx)
            .iter()
            .map(|r| body_json(r)["data"]["count"].as_u64().unwrap_or(0))
            .sum()
    };
    wait("every hit to be counted", Duration::from_secs(20), || {
        total(&rx) >= refused as u64
    });
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(total(&rx), refused as u64, "the counts add up exactly");
    let all = posts(&rx);
    let bound = burst.as_secs() as usize / 2 + 3;
    assert!(
        all.len() <= bound,
        "{} POSTs for a {burst:?} burst (at most {bound})",
        all.len()
    );
    let first = body_json(&all[0]);
    assert_eq!(first["type"], "rate_limit.exceeded");
    assert_eq!(first["data"]["coalesced"], true);
    assert_eq!(first["data"]["top"]["routes"][0]["value"], "api");
    assert!(first["data"]["windowStart"].is_string());
    for r in &all {
        assert_signed(r);
    }
}

#[test]
fn gone_and_long_failure_disable_a_subscription_with_an_audit_entry() {
    let gone = TestUpstream::start("gone", Behavior::Status(410));
    let failing = TestUpstream::start("failing", Behavior::Status(500));
    let watch = TestUpstream::start("watch", Behavior::Ok);
    let gw = Gateway::start(
        "",
        &format!(
            "{APP}webhooks:\n{}{}{}",
            hook("watch", &watch, "[\"webhook.disabled\"]", FAST),
            hook("gone", &gone, "[\"config.changed\"]", FAST),
            hook(
                "failing",
                &failing,
                "[\"config.changed\"]",
                &format!("{FAST}    autoDisableAfter: 1s\n")
            ),
        ),
    );
    create_route(&gw, "one");
    let enabled = |id: &str| {
        admin(&gw, "GET", &format!("/api/webhooks/{id}"), &Value::Null).json()["webhook"]["enabled"]
            .clone()
    };
    wait("410 to disable", Duration::from_secs(10), || {
        enabled("gone") == json!(false)
    });
    assert_eq!(posts(&gone).len(), 1, "410 is not retried");
    let dead = deliveries(&gw, "gone", "?status=failed");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["lastStatus"], 410);
    wait(
        "a second of failures to disable",
        Duration::from_secs(10),
        || enabled("failing") == json!(false),
    );
    let audit = admin(&gw, "GET", "/api/logs?actor=webhooks", &Value::Null).json();
    let entries = audit["entries"].as_array().unwrap();
    let resources: BTreeSet<_> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["resource"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        resources.contains(&("disable", "webhook/gone"))
            && resources.contains(&("disable", "webhook/failing")),
        "{audit}"
    );
    let reason = entries
        .iter()
        .find(|e| e["resource"] == "webhook/failing")
        .unwrap()["after"]["disabledBecause"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("autoDisableAfter"), "{reason}");
    wait("webhook.disabled events", Duration::from_secs(5), || {
        posts(&watch).len() >= 2
    });
    let disabled: BTreeSet<String> = posts(&watch)
        .iter()
        .map(body_json)
        .inspect(|b| assert_eq!(b["type"], "webhook.disabled"))
        .map(|b| b["data"]["webhook"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(disabled, BTreeSet::from(["gone".into(), "failing".into()]));
    // Disabled: new events are not queued for them.
    let before = (posts(&gone).len(), posts(&failing).len());
    create_route(&gw, "two");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!((posts(&gone).len(), posts(&failing).len()), before);
}

#[test]
fn a_dead_letter_is_replayed_on_request_and_test_events_report_their_attempt() {
    let rx = TestUpstream::start("rx", Behavior::Status(500));
    let gw = Gateway::start(
        "",
        &format!(
            "{APP}webhooks:\n{}",
            hook(
                "h",
                &rx,
                "[\"config.changed\"]",
                "    initialDelay: 100ms\n    maxRetries: 1\n"
            )
        ),
    );
    create_route(&gw, "one");
    wait("the dead letter", Duration::from_secs(10), || {
        !deliveries(&gw, "h", "?status=failed").is_empty()
    });
    assert_eq!(posts(&rx).len(), 2, "the first attempt and one retry");
    let dead = deliveries(&gw, "h", "?status=failed").remove(0);
    assert_eq!(dead["attempts"], 2);
    assert!(
        dead["lastError"]
            .as_str()
            .unwrap()
            .contains("gave up after 2 attempts"),
        "{dead}"
    );
    let snippet = dead["responseSnippet"].as_str().unwrap_or_default();
    assert!(
        snippet.contains("rx /hook"),
        "the answer's start is kept: {dead}"
    );
    rx.set_behavior(Behavior::Ok);
    let id = dead["id"].as_str().unwrap();
    let r = admin(
        &gw,
        "POST",
        &format!("/api/webhooks/h/deliveries/{id}/retry"),
        &Value::Null,
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["delivery"]["status"], "pending");
    wait("the replay", Duration::from_secs(10), || {
        admin(
            &gw,
            "GET",
            &format!("/api/webhooks/h/deliveries/{id}"),
            &Value::Null,
        )
        .json()["delivery"]["status"]
            == "succeeded"
    });
    let all = posts(&rx);
    assert_eq!(
        all[2].header("webhook-id"),
        all[0].header("webhook-id"),
        "the replay keeps the idempotency key"
    );
    // Unknown ones.
    for path in [
        "/api/webhooks/nope/deliveries",
        "/api/webhooks/h/deliveries/dlv_nope",
    ] {
        assert_eq!(admin(&gw, "GET", path, &Value::Null).status, 404, "{path}");
    }
    assert_eq!(
        admin(
            &gw,
            "GET",
            "/api/webhooks/h/deliveries?status=lost",
            &Value::Null
        )
        .status,
        400
    );
    // A test event: sent now, once, its result in the answer.
    let t = admin(&gw, "POST", "/api/webhooks/h/test", &Value::Null);
    assert_eq!(t.status, 200, "{}", t.text());
    let d = &t.json()["delivery"];
    assert_eq!(d["status"], "succeeded", "{d}");
    assert_eq!(d["type"], "webhook.test");
    assert_eq!(d["lastStatus"], 200);
    let seen = posts(&rx).pop().unwrap();
    assert_signed(&seen);
    assert_eq!(body_json(&seen)["type"], "webhook.test");
    rx.set_behavior(Behavior::Status(401));
    let t = admin(&gw, "POST", "/api/webhooks/h/test", &Value::Null).json();
    assert_eq!(t["delivery"]["status"], "failed", "{t}");
    assert_eq!(t["delivery"]["lastStatus"], 401);
    assert_eq!(t["delivery"]["attempts"], 1, "test events are not retried");
}

#[test]
fn urls_the_outbound_policy_refuses_are_refused_with_their_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flexgate.yaml");
    std::fs::write(
        &path,
        "webhooks:\n  - url: \"http://169.254.169.254/latest\"\n  - url: \"http://hooks.example.com/x\"\nsecurity:\n  allowedHosts: [\"api.example.com\"]\n",
    )
    .unwrap();
    let (code, out, err) = run_cli(&["check", "-c", path.to_str().unwrap()]);
    let text = format!("{out}{err}");
    assert_ne!(code, 0, "{text}");
    assert!(
        text.contains("webhooks[0].url") && text.contains("169.254.169.254"),
        "{text}"
    );
    assert!(
        text.contains("webhooks[1].url") && text.contains("allowedHosts"),
        "{text}"
    );
    // Through the API: 422 naming the field.
    let gw = Gateway::start(
        "",
        &format!("{APP}security:\n  blockedIPs: [\"10.0.0.0/8\"]\n"),
    );
    let r = admin(
        &gw,
        "POST",
        "/api/webhooks",
        &json!({"url": "http://10.1.2.3/hook", "secret": SECRET}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains("url") && r.text().contains("10.1.2.3"),
        "{}",
        r.text()
    );
    // A name is checked where it resolves: at config time (here through
    // the API), and again before every connection (the client's tests).
    let rx = TestUpstream::start("rx", Behavior::Ok);
    let gw = Gateway::start(
        "",
        "upstreams:\n  - name: app\n    url: \"http://192.0.2.1:9\"\nsecurity:\n  blockedIPs: [\"127.0.0.0/8\"]\n",
    );
    let r = admin(
        &gw,
        "POST",
        "/api/webhooks",
        &json!({"id": "local", "url": format!("http://localhost:{}/hook", rx.addr.port()), "secret": SECRET}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
    let text = r.text();
    assert!(
        text.contains("url") && text.contains("127.0.0.1") && text.contains("blocked"),
        "{text}"
    );
    assert_eq!(posts(&rx).len(), 0, "nothing reached the refused address");
}

// ---- database mode ----

#[test]
fn two_nodes_sharing_postgres_deliver_each_event_once_even_across_a_restart() {
    let Some(db) = TestDb::create() else { return };
    let rx = TestUpstream::start("rx", Behavior::Status(503));
    let body = format!(
        "database:\n  url: \"{}\"\n{APP}webhooks:\n{}",
        db.url(),
        hook("h", &rx, "[\"config.changed\"]", FAST)
    );
    let mut a = Gateway::start("", &body);
    let b = Gateway::start("", &body);
    // A change made on A goes live on both: each emits config.changed of
    // the same version; the cluster delivers it once.
    create_route(&a, "one");
    wait(
        "both nodes on the new version",
        Duration::from_secs(5),
        || request(b.port, "GET", "/one", &[], b"").status != 404,
    );
    wait("failed attempts", Duration::from_secs(10), || {
        posts(&rx).len() >= 3
    });
    // The node that may hold the lease dies mid-retry.
    a.kill_and_restart();
    rx.set_behavior(Behavior::Ok);
    wait("the delivery", Duration::from_secs(20), || {
        deliveries(&b, "h", "?status=succeeded")
            .iter()
            .any(|d| d["type"] == "config.changed")
    });
    let settled = posts(&rx).len();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        posts(&rx).len(),
        settled,
        "nothing is sent after the success"
    );
    for r in posts(&rx) {
        assert_signed(&r);
    }
    let ids = ids_of(&rx, "config.changed");
    let all = deliveries(&a, "h", "");
    assert_eq!(
        ids.len(),
        1,
        "one event, one webhook-id, whichever node sent it: {ids:?} ({all:?})"
    );
    assert_eq!(all.len(), 1, "one delivery in the shared store: {all:?}");
    assert_eq!(all[0]["status"], "succeeded");
    assert!(
        all[0]["attempts"].as_u64().unwrap() as usize <= settled,
        "every recorded attempt reached the receiver"
    );
}

#[test]
fn request_errors_and_target_health_reach_subscribers() {
    let rx = TestUpstream::start("rx", Behavior::Ok);
    let up = TestUpstream::start("app", Behavior::Status(500));
    let gw = Gateway::start(
        "",
        &format!(
            "upstreams:\n  - name: app\n    url: \"{}\"\n    healthCheck:\n      path: /health\n      interval: 200\n      timeout: 500\n      healthyThreshold: 1\n      unhealthyThreshold: 1\nroutes:\n  - id: api\n    path: /api\n    upstream: app\nwebhooks:\n{}",
            up.url(),
            hook(
                "h",
                &rx,
                "[\"request.error\", \"upstream.*\"]",
                "    coalesceWindow: 1s\n"
            )
        ),
    );
    let mut c = Client::connect(gw.port);
    for _ in 0..20 {
        let r = c.request("GET", "/api", &[], b"").expect("response");
        assert!(r.status >= 500, "{}", r.status);
    }
    let errors = |rx: &TestUpstream| -> u64 {
        posts(rx)
            .iter()
            .map(body_json)
            .filter(|b| b["type"] == "request.error")
            .map(|b| b["data"]["count"].as_u64().unwrap_or(0))
            .sum()
    };
    wait("20 request errors counted", Duration::from_secs(10), || {
        errors(&rx) >= 20
    });
    wait(
        "the unhealthy target reported",
        Duration::from_secs(10),
        || {
            posts(&rx)
                .iter()
                .map(body_json)
                .any(|b| b["type"] == "upstream.unhealthy" && b["data"]["upstream"] == "app")
        },
    );
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(errors(&rx), 20, "every 5xx counted once");
    let sample = posts(&rx)
        .iter()
        .map(body_json)
        .find(|b| b["type"] == "request.error")
        .unwrap();
    assert_eq!(
        sample["data"]["top"]["routes"][0]["value"], "api",
        "{sample}"
    );
    assert!(sample["data"]["sample"]["status"].as_u64().unwrap() >= 500);
}

#[test]
fn events_are_published_on_nats_by_type() {
    if std::net::TcpStream::connect_timeout(
        &"127.0.0.1:4222".parse().unwrap(),
        Duration::from_secs(1),
    )
    .is_err()
    {
        skip_or_fail("NATS not reachable at 127.0.0.1:4222");
        return;
    }
    let gw = Gateway::start("", &format!("nats:\n  url: nats://127.0.0.1:4222\n{APP}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let node_suffix = format!("-{}", gw.pid());
    let got = rt.block_on(async {
        use futures::StreamExt;
        let client = async_nats::connect("127.0.0.1:4222").await.unwrap();
        let mut sub = client
            .subscribe("flexgate.events.config.changed")
            .await
            .unwrap();
        client.flush().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut n = 0;
        while Instant::now() < deadline {
            // The gateway publishes once its NATS connection is up: change
            // the config until one of its events arrives.
            n += 1;
            let gw = &gw;
            tokio::task::block_in_place(|| create_route(gw, &format!("r{n}")));
            let wait = tokio::time::timeout(Duration::from_millis(500), async {
                while let Some(msg) = sub.next().await {
                    let v: Value = serde_json::from_slice(&msg.payload).unwrap();
                    if v["node"]
                        .as_str()
                        .is_some_and(|s| s.ends_with(&node_suffix))
                    {
                        return Some(v);
                    }
                }
                None
            })
            .await;
            if let Ok(Some(v)) = wait {
                return Some(v);
            }
        }
        None
    });
    let v = got.expect("a config.changed of this gateway on flexgate.events.config.changed");
    assert_eq!(v["type"], "config.changed");
    assert!(v["id"].as_str().unwrap().starts_with("evt_"), "{v}");
    assert!(v["data"]["version"].as_u64().is_some(), "{v}");
    assert!(v["time"].as_str().unwrap().ends_with('Z'), "{v}");
}
