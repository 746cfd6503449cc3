//! Admission: whether a routed request may go on, before and around
//! authentication. IP allow/deny rules, load shedding (in-flight caps), the
//! declared body size, and the rate limits of one phase.
//!
//! Each check returns `Err(Reject)` to refuse; none of them blocks, locks
//! or allocates on the way through (a Redis-backed limit is the one await).

use super::ctx::RequestCtx;
use super::respond::Reject;
use super::Gateway;
use crate::events::Event;
use crate::limit::{LimitBy, LimitRule};
use crate::snapshot::{IpRules, Route, Snapshot};
use pingora_http::RequestHeader;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Which rate limits a phase applies: limits keyed by address (or over
/// everyone) run before authentication, so a flood of bad credentials is
/// counted like any other traffic; limits keyed by consumer run after it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LimitPhase {
    BeforeAuth,
    AfterAuth,
}

/// The gateway-wide (`route: None`) or a route's IP rules.
pub fn ip_allowed(rules: Option<&IpRules>, ip: &IpAddr, on_route: bool) -> Result<(), Reject> {
    match rules {
        Some(rules) if !rules.permits(ip) => Err(Reject::Forbidden(if on_route {
            "client address is not allowed on this route".into()
        } else {
            "client address is not allowed".into()
        })),
        _ => Ok(()),
    }
}

/// Counts the request in flight (globally and on its route) or says it
/// must be shed. Counted either way: [`release`] undoes it when the request
/// ends.
pub fn admit(
    gw: &Gateway,
    snap: &Snapshot,
    route: &Route,
    ctx: &mut RequestCtx,
) -> Result<(), Reject> {
    let global = gw.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    let local = route.inflight.fetch_add(1, Ordering::Relaxed) + 1;
    crate::metrics::metrics().in_flight.inc();
    ctx.admission.in_flight = true;
    let global_cap = snap.max_in_flight * route.shed_at_percent / 100;
    let over_route = route.max_in_flight.is_some_and(|m| local > m);
    if global > global_cap.max(1) || over_route {
        crate::metrics::metrics().shed.inc();
        return Err(Reject::Overloaded { route: over_route });
    }
    Ok(())
}

/// Ends what [`admit`] counted.
pub fn release(gw: &Gateway, ctx: &mut RequestCtx) {
    if std::mem::take(&mut ctx.admission.in_flight) {
        gw.in_flight.fetch_sub(1, Ordering::Relaxed);
        crate::metrics::metrics().in_flight.dec();
        if let Some(route) = &ctx.route {
            route.inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Refuses a declared body over the route's limit (a streamed one is
/// counted in `request_body_filter`).
pub fn body_size(route: &Route, req: &RequestHeader) -> Result<(), Reject> {
    if super::hygiene::content_length(req).is_some_and(|n| n > route.max_body) {
        return Err(Reject::PayloadTooLarge {
            max: Some(route.max_body),
        });
    }
    Ok(())
}

/// The rules that apply to this request: global, per path, the route's.
fn rules<'a>(
    snap: &'a Snapshot,
    route: &'a Route,
    path: &'a str,
) -> impl Iterator<Item = &'a Arc<LimitRule>> {
    snap.rate_limits
        .global
        .iter()
        .chain(
            snap.rate_limits
                .per_path
                .iter()
                .filter(move |(p, _)| p.matches(path))
                .map(|(_, r)| r),
        )
        .chain(route.rate_limit.iter())
}

/// Applies every rate limit of `phase` that matches. `path` is the
/// matching path when path-based limits exist (empty otherwise).
pub async fn rate_limit(
    gw: &Gateway,
    snap: &Snapshot,
    route: &Route,
    path: &str,
    ctx: &mut RequestCtx,
    phase: LimitPhase,
) -> Result<(), Reject> {
    let wanted =
        |r: &&Arc<LimitRule>| (r.by == LimitBy::Consumer) == (phase == LimitPhase::AfterAuth);
    for rule in rules(snap, route, path).filter(wanted) {
        let consumer = ctx.identity.consumer.as_deref();
        let ip = ctx.client.limit_ip;
        let decision = match (&gw.redis, snap.rate_limits.redis) {
            (Some(redis), true) => {
                let key = rule.key_text(ip, consumer);
                redis.check(rule, &key, ip, consumer).await
            }
            _ => rule.check_local(ip, consumer),
        };
        if !decision.allowed {
            route.metrics.rate_limited.inc();
            crate::events::emit_counted(
                Event::RateLimitExceeded,
                decision.first_over,
                || serde_json::json!({"rule": rule.id, "route": &*route.id, "key": rule.key_text(ip, consumer), "clientIp": ctx.client.ip.to_string()}),
            );
            return Err(Reject::RateLimited {
                rule: rule.clone(),
                retry_after: decision.reset_secs,
            });
        }
        let tighter = ctx
            .admission
            .rate
            .as_ref()
            .is_none_or(|(d, _)| decision.remaining < d.remaining);
        if tighter {
            ctx.admission.rate = Some((decision, rule.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::auth::authenticate;
    use crate::proxy::test_support::{gateway, key_digest, Answer, Exchange, TestGateway};
    use pingora_http::ResponseHeader;

    const UPSTREAM: &str = "upstreams:\n  - name: app\n    url: \"http://127.0.0.1:9\"\n";

    fn get(path: &str, headers: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: api.test\r\n{headers}\r\n")
    }

    fn load(rest: &str) -> TestGateway {
        gateway(&format!("{UPSTREAM}{rest}"))
    }

    /// Counts a request in flight on its route, as `admit_request` does.
    async fn admitted(t: &TestGateway, path: &str) -> (Exchange, Result<(), Reject>) {
        let mut x = t.request("10.0.0.1", &get(path, "")).await;
        let verdict = admit(&t.gw, &t.snap, &x.route(), &mut x.ctx);
        (x, verdict)
    }

    /// The rate limits of `phase`, with the path `admit_request` passes.
    async fn limited(t: &TestGateway, x: &mut Exchange, phase: LimitPhase) -> Result<(), Reject> {
        let path = x.session.req_header().uri.path().to_string();
        rate_limit(&t.gw, &t.snap, &x.route(), &path, &mut x.ctx, phase).await
    }

    /// Both rate-limit phases around authentication, in `admit_request`'s
    /// order; a refusal is written out and read back.
    async fn limited_and_authenticated(
        t: &TestGateway,
        ip: &str,
        key: &str,
    ) -> Result<Exchange, Answer> {
        let raw = get("/api/x", &format!("X-API-Key: {key}\r\n"));
        let mut x = t.request(ip, &raw).await;
        let mut verdict = limited(t, &mut x, LimitPhase::BeforeAuth).await;
        if verdict.is_ok() {
            let req = x.session.req_header();
            match authenticate(&t.snap, &x.route(), req, &x.ctx.client, x.ctx.request_id()) {
                Ok(identity) => x.ctx.identity = identity,
                Err(reject) => verdict = Err(reject),
            }
        }
        if verdict.is_ok() {
            verdict = limited(t, &mut x, LimitPhase::AfterAuth).await;
        }
        match verdict {
            Ok(()) => Ok(x),
            Err(reject) => Err(x.refused(&t.gw, reject).await),
        }
    }

    /// The rule and remaining count kept for the `RateLimit` headers.
    fn kept(x: &Exchange) -> Option<(&str, u64)> {
        let (decision, rule) = x.ctx.admission.rate.as_ref()?;
        Some((rule.id.as_str(), decision.remaining))
    }

    fn in_flight(t: &TestGateway, x: &Exchange) -> (usize, usize) {
        (
            t.gw.in_flight.load(Ordering::Relaxed),
            x.route().inflight.load(Ordering::Relaxed),
        )
    }

    #[tokio::test]
    async fn gateway_ip_rules_refuse_with_403() {
        let t = load(
            "routes:\n  - path: /api/*\n    upstream: app\nsecurity:\n  allowIps: [10.0.0.0/8]\n  denyIps: [10.0.0.66/32]\n",
        );
        let rules = t.snap.ip_rules.as_ref();
        for ip in ["10.0.0.1", "10.200.3.4"] {
            assert!(
                ip_allowed(rules, &ip.parse().unwrap(), false).is_ok(),
                "{ip}"
            );
        }
        // Denied inside the allowed range, and outside it.
        for ip in ["10.0.0.66", "192.0.2.7"] {
            let mut x = t.request(ip, &get("/api/x", "")).await;
            let reject = ip_allowed(rules, &x.ctx.client.ip, false).unwrap_err();
            let answer = x.refused(&t.gw, reject).await;
            assert_eq!(answer.status, 403, "{ip}");
            assert_eq!(answer.code(), "forbidden");
            assert_eq!(answer.message(), "client address is not allowed");
        }
    }

    #[tokio::test]
    async fn route_ip_rules_refuse_with_403_naming_the_route() {
        let t = load(
            "routes:\n  - id: partners\n    path: /partners/*\n    upstream: app\n    allowIps: [192.0.2.0/24]\n  - id: public\n    path: /public/*\n    upstream: app\n    denyIps: [198.51.100.0/24]\n",
        );
        assert!(t.snap.ip_rules.is_none(), "no gateway-wide rules");
        let cases = [
            ("/partners/x", "192.0.2.10", true),
            ("/partners/x", "198.51.100.1", false),
            ("/public/x", "192.0.2.10", true),
            ("/public/x", "198.51.100.1", false),
        ];
        for (path, ip, allowed) in cases {
            let mut x = t.request(ip, &get(path, "")).await;
            let verdict = ip_allowed(x.route().ip_rules.as_ref(), &x.ctx.client.ip, true);
            match verdict {
                Ok(()) => assert!(allowed, "{ip} on {path} should be refused"),
                Err(reject) => {
                    assert!(!allowed, "{ip} on {path} should pass");
                    let answer = x.refused(&t.gw, reject).await;
                    assert_eq!(answer.status, 403);
                    assert_eq!(answer.code(), "forbidden");
                    assert_eq!(
                        answer.message(),
                        "client address is not allowed on this route"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn a_route_at_its_in_flight_cap_sheds_503_until_a_request_ends() {
        let t = load(
            "routes:\n  - id: capped\n    path: /capped/*\n    upstream: app\n    maxInFlight: 2\n  - id: other\n    path: /other/*\n    upstream: app\n",
        );
        let (mut first, verdict) = admitted(&t, "/capped/1").await;
        verdict.unwrap();
        let (mut second, verdict) = admitted(&t, "/capped/2").await;
        verdict.unwrap();
        let (mut third, verdict) = admitted(&t, "/capped/3").await;
        let answer = third.refused(&t.gw, verdict.unwrap_err()).await;
        assert_eq!(answer.status, 503);
        assert_eq!(answer.code(), "overloaded");
        assert_eq!(answer.message(), "this route is at its concurrency limit");
        assert_eq!(answer.header("retry-after"), Some("1"));
        // A refused request is counted too, until it ends.
        assert_eq!(in_flight(&t, &third), (3, 3));
        release(&t.gw, &mut third.ctx);
        assert_eq!(in_flight(&t, &third), (2, 2));
        // The cap is the route's: another route is not affected.
        let (mut other, verdict) = admitted(&t, "/other/1").await;
        verdict.expect("another route has room");
        release(&t.gw, &mut other.ctx);
        // Still full until an admitted request ends.
        let (mut fourth, verdict) = admitted(&t, "/capped/4").await;
        assert!(verdict.is_err());
        release(&t.gw, &mut fourth.ctx);
        release(&t.gw, &mut first.ctx);
        release(&t.gw, &mut first.ctx); // ends once
        let (mut fifth, verdict) = admitted(&t, "/capped/5").await;
        verdict.expect("a slot is free again");
        release(&t.gw, &mut second.ctx);
        release(&t.gw, &mut fifth.ctx);
        assert_eq!(in_flight(&t, &fifth), (0, 0));
    }

    #[tokio::test]
    async fn gateway_overload_sheds_low_criticality_routes_first() {
        // Low: shed above 70 % of 10; high: only above 10.
        let t = load(
            "proxy:\n  maxInFlight: 10\nroutes:\n  - id: batch\n    path: /batch/*\n    upstream: app\n    criticality: low\n  - id: checkout\n    path: /checkout/*\n    upstream: app\n    criticality: high\n",
        );
        let mut held = Vec::new();
        for i in 0..6 {
            let (x, verdict) = admitted(&t, &format!("/checkout/{i}")).await;
            verdict.unwrap();
            held.push(x);
        }
        let (x, verdict) = admitted(&t, "/batch/7").await;
        verdict.expect("the 7th request is within 70 %");
        held.push(x);
        let (mut low, verdict) = admitted(&t, "/batch/8").await;
        let answer = low.refused(&t.gw, verdict.unwrap_err()).await;
        assert_eq!(answer.status, 503);
        assert_eq!(answer.code(), "overloaded");
        assert_eq!(answer.message(), "the gateway is overloaded");
        assert_eq!(answer.header("retry-after"), Some("1"));
        release(&t.gw, &mut low.ctx);
        for i in 8..=10 {
            let (x, verdict) = admitted(&t, &format!("/checkout/{i}")).await;
            verdict.unwrap_or_else(|r| panic!("high criticality, {i} in flight: {r:?}"));
            held.push(x);
        }
        let (mut high, verdict) = admitted(&t, "/checkout/11").await;
        assert_eq!(verdict.unwrap_err().status(), 503);
        release(&t.gw, &mut high.ctx);
        for x in &mut held {
            release(&t.gw, &mut x.ctx);
        }
        assert_eq!(t.gw.in_flight.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_declared_body_over_the_route_limit_is_413_and_closes() {
        let t = load(
            "routes:\n  - id: upload\n    path: /upload/*\n    upstream: app\n    maxBodySize: 1kb\n  - id: bulk\n    path: /bulk/*\n    upstream: app\n",
        );
        let post = |path: &str, framing: &str| {
            format!("POST {path} HTTP/1.1\r\nHost: api.test\r\n{framing}\r\n\r\n")
        };
        let mut x = t
            .request("10.0.0.1", &post("/upload/x", "Content-Length: 1025"))
            .await;
        let reject = body_size(&x.route(), x.session.req_header()).unwrap_err();
        assert!(
            reject.closes(),
            "the unread body leaves the framing unknown"
        );
        let answer = x.refused(&t.gw, reject).await;
        assert_eq!(answer.status, 413);
        assert_eq!(answer.code(), "payload_too_large");
        assert_eq!(answer.message(), "request body is larger than 1024 bytes");
        assert!(answer.closes());
        for (path, framing) in [
            ("/upload/x", "Content-Length: 1024"),
            // Counted while streaming, not here.
            ("/upload/x", "Transfer-Encoding: chunked"),
            // Another route keeps the default limit.
            ("/bulk/x", "Content-Length: 1025"),
        ] {
            let x = t.request("10.0.0.1", &post(path, framing)).await;
            let verdict = body_size(&x.route(), x.session.req_header());
            assert!(verdict.is_ok(), "{path} {framing}: {verdict:?}");
        }
    }

    #[tokio::test]
    async fn the_request_over_a_rate_limit_is_429_with_its_headers() {
        let t = load(
            "routes:\n  - id: api\n    path: /api/*\n    upstream: app\n    rateLimit: {max: 3, windowMs: 3600000, message: slow down}\n",
        );
        for remaining in [2, 1, 0] {
            let mut x = t.request("10.0.0.1", &get("/api/x", "")).await;
            limited(&t, &mut x, LimitPhase::BeforeAuth).await.unwrap();
            assert_eq!(kept(&x), Some(("route:api", remaining)));
        }
        let mut x = t.request("10.0.0.1", &get("/api/x", "")).await;
        let reject = limited(&t, &mut x, LimitPhase::BeforeAuth)
            .await
            .unwrap_err();
        let answer = x.refused(&t.gw, reject).await;
        assert_eq!(answer.status, 429);
        assert_eq!(answer.code(), "rate_limited");
        assert_eq!(answer.message(), "slow down");
        let retry_after = answer.header("retry-after").expect("Retry-After");
        let seconds: u64 = retry_after.parse().expect("seconds");
        assert!((1..=3600).contains(&seconds), "{seconds}");
        assert_eq!(answer.header("ratelimit-policy"), Some("3;w=3600"));
        assert_eq!(
            answer.header("ratelimit"),
            Some(format!("limit=3, remaining=0, reset={retry_after}").as_str())
        );
        assert!(!answer.closes());
        // Another address has its own count.
        let mut x = t.request("10.0.0.2", &get("/api/x", "")).await;
        limited(&t, &mut x, LimitPhase::BeforeAuth).await.unwrap();
        assert_eq!(kept(&x), Some(("route:api", 2)));
    }

    #[tokio::test]
    async fn a_consumer_limit_is_applied_after_authentication_only() {
        let t = load(&format!(
            "routes:\n  - id: api\n    path: /api/*\n    upstream: app\n    auth: required\n    rateLimit: {{max: 1, windowMs: 3600000, by: consumer}}\nsecurity:\n  auth:\n    keys:\n      - {{key: \"{}\", name: alice}}\n      - {{key: \"{}\", name: bob}}\n",
            key_digest("alice-key"),
            key_digest("bob-key"),
        ));
        for _ in 0..3 {
            let mut x = t.request("10.0.0.1", &get("/api/x", "")).await;
            limited(&t, &mut x, LimitPhase::BeforeAuth).await.unwrap();
            assert_eq!(kept(&x), None, "no rule of this phase");
        }
        let x = limited_and_authenticated(&t, "10.0.0.1", "alice-key")
            .await
            .expect("alice's first request");
        assert_eq!(kept(&x), Some(("route:api", 0)));
        // Counted by consumer: a new address does not help alice.
        let answer = limited_and_authenticated(&t, "10.0.0.2", "alice-key")
            .await
            .unwrap_err();
        assert_eq!(answer.status, 429);
        assert_eq!(answer.code(), "rate_limited");
        assert!(answer.header("retry-after").is_some());
        assert_eq!(answer.header("ratelimit-policy"), Some("1;w=3600"));
        // Bob, from alice's first address, has his own count.
        limited_and_authenticated(&t, "10.0.0.1", "bob-key")
            .await
            .expect("bob's first request");
    }

    #[tokio::test]
    async fn an_address_limit_is_applied_before_authentication_only() {
        let t = load(
            "routes:\n  - path: /api/*\n    upstream: app\nrateLimit:\n  global: {max: 1, windowMs: 3600000}\n",
        );
        for _ in 0..3 {
            let mut x = t.request("10.0.0.1", &get("/api/x", "")).await;
            limited(&t, &mut x, LimitPhase::AfterAuth).await.unwrap();
            assert_eq!(kept(&x), None, "no rule of this phase");
        }
        let mut x = t.request("10.0.0.1", &get("/api/x", "")).await;
        limited(&t, &mut x, LimitPhase::BeforeAuth).await.unwrap();
        assert_eq!(kept(&x), Some(("global", 0)));
        let mut x = t.request("10.0.0.1", &get("/api/x", "")).await;
        let reject = limited(&t, &mut x, LimitPhase::BeforeAuth).await;
        assert_eq!(reject.unwrap_err().code(), "rate_limited");
    }

    #[tokio::test]
    async fn the_tightest_decision_is_kept_for_the_ratelimit_headers() {
        let t = load(&format!(
            "routes:\n  - id: api\n    path: /api/*\n    upstream: app\n    auth: required\n    rateLimit: {{max: 50, windowMs: 3600000}}\nrateLimit:\n  global: {{max: 100, windowMs: 3600000}}\n  perRoute:\n    - {{path: /api/*, max: 3, windowMs: 3600000}}\n    - {{path: /api/*, max: 2, windowMs: 3600000, by: consumer}}\n    - {{path: /elsewhere/*, max: 1, windowMs: 3600000}}\nsecurity:\n  auth:\n    keys:\n      - {{key: \"{}\", name: alice}}\n",
            key_digest("alice-key"),
        ));
        let mut x = t
            .request("10.0.0.1", &get("/api/x", "X-API-Key: alice-key\r\n"))
            .await;
        limited(&t, &mut x, LimitPhase::BeforeAuth).await.unwrap();
        // Global 99, the path's 2, the route's 49 left: a looser rule
        // after a tighter one does not replace it.
        assert_eq!(kept(&x), Some(("perRoute[0]", 2)));
        let req = x.session.req_header();
        x.ctx.identity =
            authenticate(&t.snap, &x.route(), req, &x.ctx.client, x.ctx.request_id()).unwrap();
        limited(&t, &mut x, LimitPhase::AfterAuth).await.unwrap();
        assert_eq!(kept(&x), Some(("perRoute[1]", 1)));
        // What the client sees on the upstream's answer.
        let mut resp = ResponseHeader::build(200, None).unwrap();
        crate::proxy::forward::downstream_response(&mut resp, &x.ctx).unwrap();
        let header = |name: &str| resp.headers.get(name).map(|v| v.to_str().unwrap());
        assert_eq!(header("ratelimit-policy"), Some("2;w=3600"));
        let ratelimit = header("ratelimit").expect("RateLimit");
        assert!(
            ratelimit.starts_with("limit=2, remaining=1, reset="),
            "{ratelimit}"
        );
    }
}
