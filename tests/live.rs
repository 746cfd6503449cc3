//! Live observability through the running binary: the `/api/metrics`
//! summary after known traffic, the SSE streams (order, keep-going, a
//! stalled client that harms nobody and is told what it missed), alerts of
//! one node seen on another through NATS, and readiness that follows NATS
//! and Redis going away and coming back.
//!
//! The cluster test uses the NATS at 127.0.0.1:4222; the readiness test
//! starts its own `nats-server -js` and `redis-server` on other ports.
//! Outside CI a missing service skips with a loud message; with `CI=true`
//! it fails.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const AUTH: (&str, &str) = ("Authorization", "Bearer test-admin-token");

/// A Server-Sent Events client over a raw socket (chunked body decoded).
struct SseClient {
    reader: BufReader<TcpStream>,
    text: String,
}

impl SseClient {
    fn open(port: u16, path: &str) -> SseClient {
        Self::open_on(TcpStream::connect(("127.0.0.1", port)).unwrap(), path)
    }

    fn open_on(mut s: TcpStream, path: &str) -> SseClient {
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer test-admin-token\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(s);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/event-stream"),
            "{head}"
        );
        SseClient {
            reader,
            text: String::new(),
        }
    }

    fn read_chunk(&mut self) -> std::io::Result<()> {
        let mut size = String::new();
        if self.reader.read_line(&mut size)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        let mut chunk = vec![0; n + 2];
        self.reader.read_exact(&mut chunk)?;
        self.text.push_str(&String::from_utf8_lossy(&chunk[..n]));
        Ok(())
    }

    /// The next event (name, JSON data) within `limit`; comments skipped.
    fn next_event(&mut self, limit: Duration) -> Option<(String, serde_json::Value)> {
        let deadline = Instant::now() + limit;
        loop {
            while let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() {
                    let json = serde_json::from_str(&data)
                        .unwrap_or_else(|e| panic!("event data not JSON ({e}): {data}"));
                    return Some((name, json));
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.reader
                .get_mut()
                .set_read_timeout(Some(left.max(Duration::from_millis(10))))
                .unwrap();
            if self.read_chunk().is_err() {
                return None;
            }
        }
    }

    /// Events until one satisfies `want` (returned) or `limit` passes.
    fn until(
        &mut self,
        limit: Duration,
        mut want: impl FnMut(&str, &serde_json::Value) -> bool,
    ) -> Option<(String, serde_json::Value)> {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let (name, data) = self.next_event(left)?;
            if want(&name, &data) {
                return Some((name, data));
            }
        }
        None
    }
}

fn key_digest(key: &str) -> String {
    run_cli(&["keys", "hash", key]).1.trim().to_string()
}

fn guarded(up: &TestUpstream) -> String {
    format!(
        "upstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - id: guarded\n    path: /guarded/*\n    upstream: app\n    auth: required\n  - id: marker\n    path: /marker\n    upstream: app\n    auth: required\n  - id: flood\n    path: /flood/*\n    upstream: app\n    rateLimit: {{max: 1, windowMs: 60000}}\nsecurity:\n  auth:\n    failureLimit: {{max: 0}}\n    keys:\n      - key: \"{}\"\n        name: good\n",
        up.url(),
        key_digest("the-good-key")
    )
}

/// `n` requests with a wrong API key (`auth.failure` events: every one
/// while the failure budget is off, at most 10 a second).
fn bad_key_requests(port: u16, path: &str, n: usize) {
    let mut client = Client::connect(port);
    for _ in 0..n {
        let r = client
            .request("GET", path, &[("X-API-Key", "wrong")], b"")
            .unwrap();
        assert_eq!(r.status, 401);
        if r.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            client = Client::connect(port);
        }
    }
}

#[test]
fn summary_counts_known_traffic_exactly() {
    let ok = TestUpstream::start("ok", Behavior::Ok);
    let bad = TestUpstream::start("bad", Behavior::Status(500));
    let gw = Gateway::start(
        "",
        &format!(
            "upstreams:\n  - name: good\n    url: \"{}\"\n  - name: broken\n    url: \"{}\"\n    retries: 0\nroutes:\n  - id: fine\n    path: /fine/*\n    upstream: good\n  - id: failing\n    path: /failing/*\n    upstream: broken\n",
            ok.url(),
            bad.url()
        ),
    );
    for _ in 0..30 {
        assert_eq!(request(gw.port, "GET", "/fine/x", &[], b"").status, 200);
    }
    for _ in 0..7 {
        assert_eq!(request(gw.port, "GET", "/failing/x", &[], b"").status, 500);
    }
    for _ in 0..5 {
        assert_eq!(request(gw.port, "GET", "/nowhere", &[], b"").status, 404);
    }
    // A request is recorded as it ends, just after its answer was sent.
    let summary = || request(gw.admin_port, "GET", "/api/metrics", &[AUTH], b"").json();
    gw.wait_until("42 requests recorded", Duration::from_secs(5), || {
        summary()["totalRequests"] == 42
    });
    let s = summary();
    assert_eq!(s["totalRequests"], 42, "{s}");
    assert_eq!(s["totalErrors"], 7, "{s}");
    assert_eq!(s["requests"], 42, "{s}");
    assert_eq!(
        s["statusCodes"],
        serde_json::json!({"200": 30, "404": 5, "500": 7}),
        "{s}"
    );
    let rate = s["errorRate"].as_f64().unwrap();
    assert!((rate - 700.0 / 42.0).abs() < 0.01, "{s}");
    assert!(
        (s["availability"].as_f64().unwrap() - (100.0 - rate)).abs() < 0.01,
        "{s}"
    );
    let fine = &s["routes"]["fine"];
    assert_eq!(
        (fine["totalRequests"].as_u64(), fine["totalErrors"].as_u64()),
        (Some(30), Some(0)),
        "{s}"
    );
    let failing = &s["routes"]["failing"];
    assert_eq!(failing["totalErrors"], 7, "{s}");
    assert_eq!(failing["errorRate"], 100.0, "{s}");
    assert_eq!(s["upstreams"]["good"]["totalRequests"], 30, "{s}");
    assert_eq!(s["upstreams"]["broken"]["totalRequests"], 7, "{s}");
    assert_eq!(
        s["routes"].as_object().unwrap().len(),
        2,
        "unrouted requests count only overall: {s}"
    );
    let latency = &s["latency"];
    for q in ["avgMs", "p50Ms", "p95Ms", "p99Ms", "maxMs"] {
        assert!(latency[q].as_f64().unwrap() > 0.0, "{q}: {s}");
    }
    assert!(
        latency["p50Ms"].as_f64() <= latency["p99Ms"].as_f64(),
        "{s}"
    );
    let points = s["requestRate"]["points"].as_array().unwrap();
    let sum: u64 = points.iter().map(|p| p["requests"].as_u64().unwrap()).sum();
    assert_eq!(sum, 42, "the series holds every request: {s}");
    assert_eq!(s["requestRate"]["intervalSeconds"], 10);
    // The summary needs the admin token like the rest of /api.
    assert_eq!(
        request(gw.admin_port, "GET", "/api/metrics", &[], b"").status,
        401
    );
}

#[test]
fn metrics_stream_starts_with_connected_then_sends_summaries() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start(
        "",
        &format!(
            "upstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - id: r\n    path: /r\n    upstream: app\n",
            up.url()
        ),
    );
    let mut sse = SseClient::open(gw.admin_port, "/api/stream/metrics?interval=1");
    let (name, first) = sse.next_event(Duration::from_secs(5)).expect("an event");
    assert_eq!(name, "connected", "{first}");
    assert_eq!(first["stream"], "metrics");
    assert_eq!(first["intervalSeconds"], 1);
    for _ in 0..3 {
        assert_eq!(request(gw.port, "GET", "/r", &[], b"").status, 200);
    }
    let (_, summary) = sse
        .until(Duration::from_secs(5), |name, d| {
            name == "metrics" && d["totalRequests"] == 3
        })
        .expect("a summary counting the three requests");
    assert_eq!(summary["routes"]["r"]["totalRequests"], 3);
    assert_eq!(summary["node"], first["node"]);
    // Bad parameters are refused before the stream starts.
    for path in [
        "/api/stream/metrics?interval=0",
        "/api/stream/metrics?interval=61",
        "/api/stream/metrics?every=2",
    ] {
        let r = request(gw.admin_port, "GET", path, &[AUTH], b"");
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_eq!(r.json()["error"], "bad_request");
    }
}

#[test]
fn alerts_stream_delivers_events_and_a_stalled_client_harms_nobody() {
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start("  trustedProxies: [\"127.0.0.1/32\"]\n", &guarded(&up));
    // A client that never reads, with a small receive buffer so the
    // gateway's writes back up quickly.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", gw.admin_port).parse().unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stalled = SseClient::open_on(socket.into(), "/api/stream/alerts");

    let mut reader = SseClient::open(gw.admin_port, "/api/stream/alerts");
    let (name, hello) = reader.next_event(Duration::from_secs(5)).unwrap();
    assert_eq!(name, "connected", "{hello}");
    bad_key_requests(gw.port, "/guarded/one", 1);
    let (_, alert) = reader
        .until(Duration::from_secs(5), |name, _| name == "alert")
        .expect("the auth failure as an alert");
    assert_eq!(alert["type"], "auth.failure", "{alert}");
    assert_eq!(alert["data"]["route"], "guarded", "{alert}");
    assert_eq!(alert["node"], hello["node"], "{alert}");

    // A reading client keeps up in its own thread while a flood of events
    // passes: 3,500 config changes (more than the bus holds for a stalled
    // subscriber; events clients can trigger at will are capped per second
    // and could not flood), while the proxy serves a flood of requests.
    let watcher = std::thread::spawn(move || {
        let mut seen = 0u64;
        let got = reader.until(Duration::from_secs(90), |name, d| {
            if name == "alert" && d["type"] == "config.changed" {
                seen += 1;
            }
            d["data"]["route"] == "marker"
        });
        (got.is_some(), seen)
    });
    let admin_port = gw.admin_port;
    let writer = std::thread::spawn(move || {
        for i in 0..3500u32 {
            let body =
                format!(r#"{{"id":"churn","name":"churn-{i}","path":"/churn","upstream":"app"}}"#);
            let r = request(
                admin_port,
                if i == 0 { "POST" } else { "PUT" },
                if i == 0 {
                    "/api/routes"
                } else {
                    "/api/routes/churn"
                },
                &[AUTH, ("Content-Type", "application/json")],
                body.as_bytes(),
            );
            assert!(r.status == 200 || r.status == 201, "{}", r.text());
        }
    });
    let started = Instant::now();
    let mut client = Client::connect(gw.port);
    for i in 0..4000u32 {
        if i % 500 == 0 {
            client = Client::connect(gw.port);
        }
        let addr = format!("10.7.{}.{}", (i / 2) >> 8, (i / 2) & 255);
        let r = client
            .request("GET", "/flood/x", &[("X-Forwarded-For", &addr)], b"")
            .unwrap();
        assert_eq!(r.status, if i % 2 == 0 { 200 } else { 429 }, "{addr}");
    }
    let took = started.elapsed();
    writer.join().unwrap();
    bad_key_requests(gw.port, "/marker", 1);
    let (marker_seen, seen) = watcher.join().unwrap();
    assert!(marker_seen, "the reading client saw the last event");
    assert!(seen > 0, "the reading client saw the flood");
    // The proxy did not wait for the stalled client (generous bound: 4,000
    // requests in a debug build on a loaded machine).
    assert!(took < Duration::from_secs(30), "flood took {took:?}");

    // The stalled client, read at last: what was buffered, then told how
    // much it missed, then the newest events.
    let (name, _) = stalled.next_event(Duration::from_secs(5)).unwrap();
    assert_eq!(name, "connected");
    let (_, lag) = stalled
        .until(Duration::from_secs(10), |name, _| name == "lagged")
        .expect("a lagged event");
    assert!(lag["missed"].as_u64().unwrap() > 0, "{lag}");
    assert!(
        stalled
            .until(Duration::from_secs(10), |_, d| d["data"]["route"]
                == "marker")
            .is_some(),
        "after skipping ahead the stalled client reaches the newest event"
    );
    let m = request(gw.admin_port, "GET", "/metrics", &[], b"").text();
    let dropped = m
        .lines()
        .find(|l| l.starts_with("flexgate_events_dropped_total{subscriber=\"sse\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(dropped > 0.0, "missed events are counted:\n{m}");
}

fn nats_reachable() -> bool {
    std::net::TcpStream::connect_timeout(&"127.0.0.1:4222".parse().unwrap(), Duration::from_secs(1))
        .is_ok()
}

#[test]
fn with_nats_each_node_streams_the_whole_cluster() {
    if !nats_reachable() {
        skip_or_fail("NATS not reachable at 127.0.0.1:4222");
        return;
    }
    let up = TestUpstream::start("app", Behavior::Ok);
    let body = format!("nats:\n  url: nats://127.0.0.1:4222\n{}", guarded(&up));
    let a = Gateway::start("", &body);
    let b = Gateway::start("", &body);
    for gw in [&a, &b] {
        gw.wait_until("JetStream ready", Duration::from_secs(15), || {
            request(gw.admin_port, "GET", "/health/ready", &[], b"").status == 200
        });
    }
    let mut alerts = SseClient::open(a.admin_port, "/api/stream/alerts");
    let (_, hello) = alerts.next_event(Duration::from_secs(5)).unwrap();
    assert_eq!(hello["cluster"], true);
    let node_a = hello["node"].as_str().unwrap().to_string();
    // An event caused on B reaches A's stream.
    bad_key_requests(b.port, "/marker", 1);
    let (_, alert) = alerts
        .until(Duration::from_secs(10), |name, d| {
            name == "alert" && d["data"]["route"] == "marker"
        })
        .expect("B's alert on A's stream");
    assert_ne!(alert["node"], node_a.as_str(), "{alert}");
    // B's summaries reach A's metrics stream.
    assert_eq!(
        request(
            b.port,
            "GET",
            "/guarded/x",
            &[("X-API-Key", "the-good-key")],
            b""
        )
        .status,
        200
    );
    let mut metrics = SseClient::open(a.admin_port, "/api/stream/metrics?interval=60");
    let (_, from_b) = metrics
        .until(Duration::from_secs(15), |name, d| {
            name == "metrics" && d["node"] != node_a.as_str() && d["node"] == alert["node"]
        })
        .expect("B's summary on A's stream");
    assert!(from_b["totalRequests"].as_u64().unwrap() >= 2, "{from_b}");
}

/// A `nats-server -js` of this test's own.
struct OwnNats {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl OwnNats {
    fn start_on(port: u16, dir: tempfile::TempDir) -> Option<OwnNats> {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                skip_or_fail(&format!("cannot run nats-server: {e}"));
                return None;
            }
        };
        let listening = eventually(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(listening, "nats-server did not listen on {port}");
        Some(OwnNats { child, port, dir })
    }

    fn stop(mut self) -> (u16, tempfile::TempDir) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.port;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (port, dir)
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redis-server` of this test's own.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    fn start() -> Option<OwnRedis> {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                skip_or_fail(&format!("cannot run redis-server: {e}"));
                return None;
            }
        };
        let listening = eventually(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(listening, "redis-server did not listen on {port}");
        Some(OwnRedis { child, port })
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn readiness(gw: &Gateway) -> (u16, serde_json::Value) {
    let r = request(gw.admin_port, "GET", "/health/ready", &[], b"");
    (r.status, r.json())
}

fn dependency_gauge(gw: &Gateway, name: &str) -> Option<f64> {
    let text = request(gw.admin_port, "GET", "/metrics", &[], b"").text();
    let prefix = format!("flexgate_dependency_up{{dependency=\"{name}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.parse().ok()))
}

#[test]
fn readiness_follows_nats_and_redis_down_and_back() {
    let Some(nats) = OwnNats::start_on(free_port(), tempfile::tempdir().unwrap()) else {
        return;
    };
    let Some(redis) = OwnRedis::start() else {
        return;
    };
    let up = TestUpstream::start("app", Behavior::Ok);
    let gw = Gateway::start(
        "",
        &format!(
            "nats:\n  url: nats://127.0.0.1:{}\nrateLimit:\n  backend: redis\n  redis:\n    url: redis://127.0.0.1:{}\nupstreams:\n  - name: app\n    url: \"{}\"\nroutes:\n  - id: r\n    path: /r\n    upstream: app\n",
            nats.port,
            redis.port,
            up.url()
        ),
    );
    let wait = Duration::from_secs(15);
    gw.wait_until("ready with both dependencies", wait, || {
        readiness(&gw).0 == 200
    });
    let (_, body) = readiness(&gw);
    assert_eq!(body["checks"]["jetstream"]["status"], "UP", "{body}");
    assert_eq!(body["checks"]["redis"]["status"], "UP", "{body}");
    assert_eq!(dependency_gauge(&gw, "nats"), Some(1.0));
    assert_eq!(dependency_gauge(&gw, "redis"), Some(1.0));

    // NATS goes away: not ready, the proxy still serves; NATS returns: ready.
    let (port, dir) = nats.stop();
    gw.wait_until("jetstream DOWN", wait, || {
        let (status, body) = readiness(&gw);
        status == 503 && body["checks"]["jetstream"]["status"] == "DOWN"
    });
    assert_eq!(dependency_gauge(&gw, "nats"), Some(0.0));
    assert_eq!(request(gw.port, "GET", "/r", &[], b"").status, 200);
    let nats = OwnNats::start_on(port, dir).unwrap();
    gw.wait_until("jetstream UP again", Duration::from_secs(30), || {
        readiness(&gw).0 == 200
    });

    // Redis frozen: not ready; thawed: ready.
    redis.signal("STOP");
    gw.wait_until("redis DOWN", wait, || {
        let (status, body) = readiness(&gw);
        status == 503 && body["checks"]["redis"]["status"] == "DOWN"
    });
    assert_eq!(dependency_gauge(&gw, "redis"), Some(0.0));
    assert_eq!(request(gw.port, "GET", "/r", &[], b"").status, 200);
    redis.signal("CONT");
    gw.wait_until("redis UP again", wait, || readiness(&gw).0 == 200);
    drop(nats);
}
