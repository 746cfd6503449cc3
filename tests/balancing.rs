//! Load balancing through the real gateway: round robin, weights, consistent
//! hashing on a header, least connections, active health checks, passive
//! ejection of a dead target, and upstream keep-alive connection reuse.

mod common;
use common::*;

use std::collections::HashMap;
use std::time::Duration;

/// One upstream `pool` (the given YAML lines under it) behind the route `/api/*`.
fn pool_config(targets: &[(String, u32)], extra: &str) -> String {
    let mut y = String::from("upstreams:\n  - name: pool\n    targets:\n");
    for (url, weight) in targets {
        y.push_str(&format!(
            "      - url: \"{url}\"\n        weight: {weight}\n"
        ));
    }
    y.push_str(extra);
    y.push_str("routes:\n  - id: api\n    path: \"/api/*\"\n    upstream: pool\n");
    y
}

fn count(d: &HashMap<String, usize>, name: &str) -> usize {
    d.get(name).copied().unwrap_or(0)
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

#[test]
fn round_robin_spreads_evenly_over_three_targets() {
    let a = TestUpstream::start("a", Behavior::Ok);
    let b = TestUpstream::start("b", Behavior::Ok);
    let c = TestUpstream::start("c", Behavior::Ok);
    let gw = Gateway::start(
        "",
        &pool_config(
            &[(a.url(), 1), (b.url(), 1), (c.url(), 1)],
            "    loadBalancing: roundRobin\n",
        ),
    );
    let d = distribution(gw.port, "/api/rr", 300, &[]);
    assert_eq!(d.values().sum::<usize>(), 300, "{d:?}");
    for name in ["a", "b", "c"] {
        let n = count(&d, name);
        assert!(
            (85..=115).contains(&n),
            "target {name} got {n} of 300 requests, expected about 100: {d:?}"
        );
    }
    assert_eq!(a.hits() + b.hits() + c.hits(), 300);
}

#[test]
fn weighted_targets_follow_their_weights() {
    let heavy = TestUpstream::start("heavy", Behavior::Ok);
    let light = TestUpstream::start("light", Behavior::Ok);
    let gw = Gateway::start("", &pool_config(&[(heavy.url(), 3), (light.url(), 1)], ""));
    let d = distribution(gw.port, "/api/w", 400, &[]);
    let (h, l) = (count(&d, "heavy"), count(&d, "light"));
    assert_eq!(h + l, 400, "{d:?}");
    assert!(l > 0, "the weight-1 target must still get traffic: {d:?}");
    let ratio = h as f64 / l as f64;
    assert!(
        (2.0..=4.5).contains(&ratio),
        "weights 3:1 gave heavy={h} light={l} (ratio {ratio:.2})"
    );
}

#[test]
fn consistent_hash_on_header_is_sticky_and_spreads_keys() {
    let a = TestUpstream::start("a", Behavior::Ok);
    let b = TestUpstream::start("b", Behavior::Ok);
    let c = TestUpstream::start("c", Behavior::Ok);
    let gw = Gateway::start(
        "",
        &pool_config(
            &[(a.url(), 1), (b.url(), 1), (c.url(), 1)],
            "    loadBalancing: consistentHash\n    hashKey: \"header:X-User\"\n",
        ),
    );
    let mut owner_of = HashMap::new();
    for u in 0..30 {
        let user = format!("user-{u}");
        let d = distribution(gw.port, "/api/profile", 8, &[("X-User", &user)]);
        assert_eq!(
            d.len(),
            1,
            "requests with X-User: {user} went to several targets: {d:?}"
        );
        owner_of.insert(user, d.into_keys().next().unwrap());
    }
    // Stickiness holds across connections too, not only within one.
    for (user, owner) in owner_of.iter().take(5) {
        let r = request(gw.port, "GET", "/api/again", &[("X-User", user)], b"");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-upstream"), Some(owner.as_str()), "{user}");
    }
    let used: std::collections::HashSet<&String> = owner_of.values().collect();
    assert!(
        used.len() > 1,
        "30 different X-User values all hashed to one target: {owner_of:?}"
    );
}

#[test]
fn least_connections_prefers_the_fast_target() {
    let fast = TestUpstream::start("fast", Behavior::Ok);
    let slow = TestUpstream::start("slow", Behavior::Delay(Duration::from_millis(300)));
    let gw = Gateway::start(
        "",
        &pool_config(
            &[(fast.url(), 1), (slow.url(), 1)],
            "    loadBalancing: leastConnections\n",
        ),
    );
    let port = gw.port;
    let totals: Vec<HashMap<String, usize>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|_| s.spawn(move || distribution(port, "/api/lc", 12, &[])))
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut d = HashMap::new();
    for t in totals {
        for (k, v) in t {
            *d.entry(k).or_insert(0) += v;
        }
    }
    let (f, sl) = (count(&d, "fast"), count(&d, "slow"));
    assert_eq!(f + sl, 96, "{d:?}");
    assert!(
        f >= 2 * sl,
        "least connections should send most requests to the fast target: fast={f} slow={sl}"
    );
}

#[test]
fn active_health_check_removes_and_restores_a_target() {
    let good = TestUpstream::start("good", Behavior::Ok);
    let sick = TestUpstream::start("sick", Behavior::HealthStatus(500));
    let gw = Gateway::start(
        "",
        &pool_config(
            &[(good.url(), 1), (sick.url(), 1)],
            "    healthCheck:\n      path: /health\n      interval: 200\n      timeout: 500\n      healthyThreshold: 1\n      unhealthyThreshold: 1\n",
        ),
    );
    // Probes reach the target (they are not counted as hits).
    gw.wait_until(
        "a health probe on the sick target",
        Duration::from_secs(5),
        || {
            sick.requests
                .lock()
                .unwrap()
                .iter()
                .any(|r| r.path.starts_with("/health"))
        },
    );
    gw.wait_until(
        "the failing target to stop receiving traffic",
        Duration::from_secs(5),
        || {
            sick.clear();
            distribution(gw.port, "/api/hc", 10, &[]);
            sick.hits() == 0
        },
    );
    sick.clear();
    let d = distribution(gw.port, "/api/hc", 40, &[]);
    assert_eq!(count(&d, "good"), 40, "{d:?}");
    assert_eq!(sick.hits(), 0, "a target marked down must get no traffic");

    sick.set_behavior(Behavior::HealthStatus(200));
    gw.wait_until(
        "the recovered target to receive traffic again",
        Duration::from_secs(5),
        || count(&distribution(gw.port, "/api/hc", 10, &[]), "sick") > 0,
    );
    let d = distribution(gw.port, "/api/hc", 40, &[]);
    assert!(
        count(&d, "sick") >= 10,
        "a recovered target is back in rotation: {d:?}"
    );
}

#[test]
fn passive_ejection_stops_trying_a_dead_target() {
    let live = TestUpstream::start("live", Behavior::Ok);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gw = Gateway::start(
        "",
        &pool_config(
            &[(live.url(), 1), (dead, 1)],
            "    loadBalancing: roundRobin\n    retries: 1\n    passive:\n      maxFailures: 1\n      ejectDuration: 60000\n",
        ),
    );
    let mut c = Client::connect(gw.port);
    for i in 0..20 {
        let r = c.request("GET", "/api/p", &[], b"").expect("response");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.header("x-upstream"), Some("live"));
    }
    assert_eq!(live.hits(), 20);
    let log = access_lines(&gw, 20);
    let attempts: Vec<u64> = log
        .iter()
        .map(|l| {
            l["attempts"]
                .as_u64()
                .unwrap_or_else(|| panic!("no attempts in {l}"))
        })
        .collect();
    let retried = attempts.iter().filter(|&&a| a > 1).count();
    assert_eq!(
        retried, 1,
        "the dead target must be tried once, then ejected; attempts per request: {attempts:?}"
    );
    assert!(
        attempts[2..].iter().all(|&a| a == 1),
        "after the first failure no request tries the dead target: {attempts:?}"
    );
}

#[test]
fn upstream_connections_are_kept_alive_and_reused() {
    let up = TestUpstream::start("up", Behavior::Ok);
    let gw = Gateway::start("", &pool_config(&[(up.url(), 1)], ""));
    let d = distribution(gw.port, "/api/ka", 200, &[]);
    assert_eq!(count(&d, "up"), 200);
    assert_eq!(up.hits(), 200);
    let conns = up.connections.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        conns <= 5,
        "200 sequential requests opened {conns} upstream connections (expected reuse)"
    );
}
