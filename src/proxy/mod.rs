//! The data plane: FlexGate's Pingora `ProxyHttp` implementation.
//!
//! A request's path, one way through the phases:
//! - `early_request_filter`: marks the head as received (header deadline).
//! - `request_filter`: take the snapshot once, correlation id, hygiene
//!   (`hygiene.rs`), client IP, probes, IP rules, route match (404/405), body
//!   limit, API-key auth. Any refusal is written by `respond.rs` and ends here.
//! - `upstream_peer`: deadline, backoff before a retry, target selection
//!   (`snapshot::upstream`), peer timeouts.
//! - `upstream_request_filter` / `response_filter`: header rewriting.
//! - `fail_to_connect` / `error_while_proxy`: passive ejection, retry policy.
//! - `fail_to_proxy`: error → JSON reply; `logging`: access log, counters,
//!   request history (an owned record pushed without waiting; `history/`).
//!
//! Nothing here blocks, locks or does I/O besides the proxied exchange.

pub mod canonical;
pub mod edge;
pub mod hygiene;
pub mod respond;

use crate::accesslog::{self, AccessRecord};
use crate::config::RouteAuth;
use crate::keys::KeyRejection;
use crate::limit::redis::RedisLimiter;
use crate::limit::{Decision, LimitRule};
use crate::reload::ConfigHandle;
use crate::snapshot::breaker::{Admission, Transition};
use crate::snapshot::router::Match;
use crate::snapshot::upstream::{HashKey, Selector};
use crate::snapshot::{HeaderOps, PathRewrite, Route, Snapshot};
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora_core::protocols::Digest;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{Error, ErrorType, OrErr, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use respond::GatewayReply;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Process-wide data-plane counters (exported by the metrics module).
#[derive(Default)]
pub struct ProxyStats {
    pub requests: AtomicU64,
    pub upstream_connects_new: AtomicU64,
    pub upstream_connects_reused: AtomicU64,
    pub retries: AtomicU64,
    pub ejections: AtomicU64,
    /// Requests between admission and logging, over all routes.
    pub inflight: AtomicUsize,
    pub shed: AtomicU64,
    pub rate_limited: AtomicU64,
    pub breaker_rejections: AtomicU64,
    pub auth_failures: AtomicU64,
}

/// Per-request state.
pub struct RequestCtx {
    pub snap: Option<Arc<Snapshot>>,
    pub route: Option<Arc<Route>>,
    /// Correlation id (the client's when valid, else a new one): a header
    /// value, so that it is copied into both heads without allocating.
    pub request_id: HeaderValue,
    pub client_ip: IpAddr,
    pub start: Instant,
    pub deadline: Option<Instant>,
    /// Upstream attempts so far.
    pub attempts: u32,
    pub tried: Vec<usize>,
    /// Target of the current attempt.
    pub target: Option<usize>,
    /// Status the gateway answered with itself (0 = upstream's).
    pub status: u16,
    pub error_code: Option<&'static str>,
    pub consumer: Option<Arc<str>>,
    pub body_bytes: u64,
    pub upstream_started: Option<Instant>,
    pub upstream_elapsed: Option<Duration>,
    pub websocket: bool,
    pub tls: bool,
    /// Counted in the in-flight gauges (global and route).
    pub admitted: bool,
    /// This request is the breaker's half-open probe.
    pub breaker_probe: bool,
    /// The most restrictive rate-limit decision (for `RateLimit` headers).
    pub rate: Option<(Decision, Arc<LimitRule>)>,
    /// Verified JWT (claims to forward).
    pub jwt: Option<crate::jwt::Verified>,
    /// The path routes match when it differs from the canonical path
    /// (`proxy.paths.pathParameters: ignoreForMatching`).
    pub match_path: Option<String>,
    /// The address limits count this client by (`limit::address_key`).
    pub limit_ip: IpAddr,
}

/// The gateway service.
pub struct Gateway {
    pub config: Arc<ConfigHandle>,
    /// Shared counters when `rateLimit.backend: redis`.
    pub redis: Option<Arc<RedisLimiter>>,
    pub stats: Arc<ProxyStats>,
    /// True on the TLS listener's instance (sets `X-Forwarded-Proto`).
    pub tls: bool,
    /// The request-history queue (database mode with `history.enabled`).
    pub history: Option<crate::history::HistorySink>,
}

impl Gateway {
    async fn reply(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut reply: GatewayReply,
    ) -> Result<bool> {
        // A refused request's body is never read: say the connection closes.
        let req = session.req_header();
        if hygiene::content_length(req).is_some_and(|n| n > 0)
            || req.headers.contains_key(header::TRANSFER_ENCODING)
        {
            reply.close = true;
        }
        respond::send(session, ctx, reply).await?;
        Ok(true)
    }

    /// Rewrites the request target to its canonical form (`canonical.rs`).
    /// `Some` is the finished exchange when the target was refused or
    /// answered here (`OPTIONS *`).
    async fn canonicalise_target(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &Snapshot,
    ) -> Result<Option<Result<bool>>> {
        let req = session.req_header();
        let (rewritten, authority) =
            match canonical::canonicalise(req.raw_path(), &req.method, &snap.paths) {
                Ok(canonical::Target::Path {
                    rewritten,
                    authority,
                    match_path,
                }) => {
                    ctx.match_path = match_path;
                    (rewritten, authority.map(HeaderValue::from_str))
                }
                Ok(canonical::Target::Asterisk) => {
                    ctx.status = 200;
                    let mut resp = ResponseHeader::build(200, Some(3))?;
                    resp.insert_header("allow", "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS")?;
                    resp.insert_header("content-length", "0")?;
                    resp.insert_header("x-request-id", ctx.request_id.clone())?;
                    session.write_response_header(Box::new(resp), true).await?;
                    return Ok(Some(Ok(true)));
                }
                Err(why) => {
                    let reply = GatewayReply::new(400, "bad_request", why.0);
                    return Ok(Some(self.reply(session, ctx, reply).await));
                }
            };
        let req = session.req_header_mut();
        if let Some(Ok(authority)) = authority {
            req.insert_header(header::HOST, authority)?;
        }
        if let Some(target) = rewritten {
            if req.set_raw_path(target.as_bytes()).is_err() {
                let reply = GatewayReply::new(400, "bad_request", "invalid request target");
                return Ok(Some(self.reply(session, ctx, reply).await));
            }
        }
        Ok(None)
    }

    /// The owned request-history row of a finished request.
    fn history_record(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        status: u16,
        bytes_in: u64,
        bytes_out: u64,
    ) -> crate::history::HistoryRecord {
        let req = session.req_header();
        let duration = ctx.start.elapsed();
        crate::history::HistoryRecord {
            time: std::time::SystemTime::now()
                .checked_sub(duration)
                .unwrap_or_else(std::time::SystemTime::now),
            method: req.method.clone(),
            path: crate::history::HistoryRecord::stored_path(req.uri.path()),
            route_id: ctx.route.as_ref().map(|r| r.id.clone()),
            upstream: ctx.route.as_ref().map(|r| r.upstream.name.clone()),
            status,
            duration,
            client_ip: ctx.client_ip,
            user_agent: req
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(crate::history::HistoryRecord::stored_user_agent),
            bytes_in,
            bytes_out,
            request_id: ctx.request_id.clone(),
        }
    }

    fn release_target(&self, ctx: &mut RequestCtx) {
        if let (Some(i), Some(route)) = (ctx.target.take(), ctx.route.as_ref()) {
            if let Some(t) = route.upstream.targets.get(i) {
                t.state.inflight.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts a failed authentication against the address's budget and
    /// reports it. Events are coalesced so that a brute force cannot flood
    /// logs, NATS or webhooks: per address and budget window, only the first
    /// failure and the one that exhausts the budget are reported, and at most
    /// [`AUTH_EVENTS_PER_SECOND`] per second in all (the next event says how
    /// many were left out).
    fn auth_failed(&self, snap: &Snapshot, route: &Route, ctx: &RequestCtx, reason: &str) {
        self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        route.metrics.auth_failures.inc();
        let (failures, notable) = match &snap.auth_failures {
            Some(budget) => {
                let n = budget.record(ctx.limit_ip);
                (Some(n), n == 1 || n == budget.max)
            }
            None => (None, true),
        };
        if !notable {
            return;
        }
        if let Some(left_out) = auth_event_gate() {
            crate::events::emit(
                crate::events::Event::AuthFailure,
                serde_json::json!({"route": &*route.id, "reason": reason, "clientIp": ctx.client_ip.to_string(), "requestId": ctx.request_id(), "failuresInWindow": failures, "eventsLeftOut": left_out}),
            );
        }
    }

    /// 429 when the client's address has used up its failed-authentication
    /// budget (checked before any credential is looked at).
    fn auth_budget_spent(&self, snap: &Snapshot, ctx: &RequestCtx) -> Option<GatewayReply> {
        let budget = snap.auth_failures.as_ref()?;
        if !budget.exhausted(ctx.limit_ip) {
            return None;
        }
        self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
        Some(
            GatewayReply::new(
                429,
                "too_many_auth_failures",
                "too many failed authentications from this address; try again later",
            )
            .header("retry-after", budget.window.as_secs().max(1).to_string()),
        )
    }

    /// Backpressure: counts the request in flight or says it must be shed.
    fn admit(&self, snap: &Snapshot, route: &Route, ctx: &mut RequestCtx) -> Option<GatewayReply> {
        let global = self.stats.inflight.fetch_add(1, Ordering::Relaxed) + 1;
        let local = route.inflight.fetch_add(1, Ordering::Relaxed) + 1;
        crate::metrics::metrics().in_flight.inc();
        ctx.admitted = true;
        let global_cap = snap.max_in_flight * route.shed_at_percent / 100;
        let over_route = route.max_in_flight.is_some_and(|m| local > m);
        if global > global_cap.max(1) || over_route {
            self.stats.shed.fetch_add(1, Ordering::Relaxed);
            crate::metrics::metrics().shed.inc();
            let msg = if over_route {
                "this route is at its concurrency limit"
            } else {
                "the gateway is overloaded"
            };
            return Some(GatewayReply::new(503, "overloaded", msg).header("retry-after", "1"));
        }
        None
    }

    /// Applies every rate limit of one phase that matches; `Err` is the 429
    /// to send. Limits keyed by address (or over everyone) run before
    /// authentication, so a flood of bad credentials is counted like any
    /// other traffic; limits keyed by consumer run after it.
    async fn rate_limit(
        &self,
        snap: &Snapshot,
        route: &Arc<Route>,
        path: &str,
        ctx: &mut RequestCtx,
        after_auth: bool,
    ) -> Result<(), GatewayReply> {
        let rules = snap
            .rate_limits
            .global
            .iter()
            .chain(
                snap.rate_limits
                    .per_path
                    .iter()
                    .filter(|(p, _)| p.matches(path))
                    .map(|(_, r)| r),
            )
            .chain(route.rate_limit.iter())
            .filter(|r| (r.by == crate::limit::LimitBy::Consumer) == after_auth);
        for rule in rules {
            let consumer = ctx.consumer.as_deref();
            let decision = match (&self.redis, snap.rate_limits.redis) {
                (Some(redis), true) => {
                    let key = rule.key_text(ctx.limit_ip, consumer);
                    redis.check(rule, &key, ctx.limit_ip, consumer).await
                }
                _ => rule.check_local(ctx.limit_ip, consumer),
            };
            if !decision.allowed {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                route.metrics.rate_limited.inc();
                if decision.first_over {
                    crate::events::emit(
                        crate::events::Event::RateLimitExceeded,
                        serde_json::json!({"rule": rule.id, "route": &*route.id, "key": rule.key_text(ctx.limit_ip, consumer)}),
                    );
                }
                let msg = rule
                    .message
                    .clone()
                    .unwrap_or_else(|| "too many requests".to_string());
                return Err(GatewayReply::new(429, "rate_limited", msg)
                    .header("retry-after", decision.reset_secs.to_string())
                    .header("ratelimit-policy", rule.policy.clone())
                    .header(
                        "ratelimit",
                        format!(
                            "limit={}, remaining=0, reset={}",
                            decision.limit, decision.reset_secs
                        ),
                    ));
            }
            if ctx
                .rate
                .as_ref()
                .is_none_or(|(d, _)| decision.remaining < d.remaining)
            {
                ctx.rate = Some((decision, rule.clone()));
            }
        }
        Ok(())
    }

    fn health_reply(&self, path: &str, snap: &Snapshot) -> Option<(u16, String)> {
        match path {
            "/health/live" => Some((200, "{\"status\":\"UP\"}".to_string())),
            "/health/ready" => Some((
                200,
                format!("{{\"status\":\"UP\",\"checks\":{{\"config\":{{\"status\":\"UP\",\"version\":{}}}}}}}", snap.version),
            )),
            _ => None,
        }
    }
}

fn apply_header_ops<H: hygiene::HeaderEdit>(head: &mut H, ops: &HeaderOps) {
    for n in &ops.remove {
        head.remove(n);
    }
    for (n, v) in &ops.set {
        head.set(n.clone(), v.clone());
    }
}

fn rewrite_path(rewrite: &PathRewrite, req: &mut RequestHeader) {
    let PathRewrite::ReplacePrefix { prefix, with } = rewrite else {
        return;
    };
    let path = req.uri.path();
    let Some(rest) = path.strip_prefix(prefix.as_str()) else {
        return;
    };
    let mut new_path = String::with_capacity(with.len() + rest.len() + 1);
    new_path.push_str(with);
    if !rest.is_empty() && !rest.starts_with('/') && !with.ends_with('/') {
        new_path.push('/');
    }
    new_path.push_str(rest);
    if new_path.is_empty() {
        new_path.push('/');
    } else if !new_path.starts_with('/') {
        new_path.insert(0, '/');
    }
    if let Some(q) = req.uri.query() {
        new_path.push('?');
        new_path.push_str(q);
    }
    if let Ok(uri) = http::Uri::try_from(new_path) {
        req.set_uri(uri);
    }
}

fn host_of(req: &RequestHeader) -> &str {
    let raw = req
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.host())
        .unwrap_or("");
    match raw.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => raw.split(':').next().unwrap_or(""),
    }
}

// Header names: `HeaderName`s to look up and remove, `&'static str`s to
// insert (Pingora keeps the case of an inserted name; a `&'static str` is
// taken as is, while a non-standard `HeaderName` is copied into a new buffer).
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_CONSUMER: HeaderName = HeaderName::from_static("x-consumer-name");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const H_X_FORWARDED_FOR: &str = "x-forwarded-for";
const H_X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const H_X_FORWARDED_HOST: &str = "x-forwarded-host";
const H_X_REQUEST_ID: &str = "x-request-id";
const H_X_CONSUMER: &str = "x-consumer-name";
const H_X_REAL_IP: &str = "x-real-ip";
const EMPTY: HeaderValue = HeaderValue::from_static("");

/// Process-wide cap on `auth.failure` events.
const AUTH_EVENTS_PER_SECOND: u64 = 10;

/// `Some(left_out)` when an `auth.failure` event may be emitted now, with
/// the number of events left out since the last one; `None` when this
/// second's allowance is used up. Lock-free.
fn auth_event_gate() -> Option<u64> {
    static SECOND: AtomicU64 = AtomicU64::new(0);
    static SENT: AtomicU64 = AtomicU64::new(0);
    static LEFT_OUT: AtomicU64 = AtomicU64::new(0);
    let now = crate::keys::unix_now();
    if SECOND.swap(now, Ordering::Relaxed) != now {
        SENT.store(0, Ordering::Relaxed);
    }
    if SENT.fetch_add(1, Ordering::Relaxed) < AUTH_EVENTS_PER_SECOND {
        Some(LEFT_OUT.swap(0, Ordering::Relaxed))
    } else {
        LEFT_OUT.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Appends `n` in decimal (no formatting machinery on the request path).
fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[i..]).unwrap_or("0"));
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            snap: None,
            route: None,
            request_id: HeaderValue::from_static(""),
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            start: Instant::now(),
            deadline: None,
            attempts: 0,
            tried: Vec::new(),
            target: None,
            status: 0,
            error_code: None,
            consumer: None,
            body_bytes: 0,
            upstream_started: None,
            upstream_elapsed: None,
            websocket: false,
            tls: self.tls,
            admitted: false,
            breaker_probe: false,
            rate: None,
            jwt: None,
            match_path: None,
            limit_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }

    async fn early_request_filter(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        edge::mark_head_received();
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let snap = self.config.current();
        ctx.snap = Some(snap.clone());
        let req = session.req_header();
        ctx.request_id = match req.headers.get(&X_REQUEST_ID) {
            Some(v) if hygiene::valid_request_id(v.as_bytes()) => v.clone(),
            _ => hygiene::new_request_id(),
        };
        if let Some(r) = hygiene::check_request(req, &snap.limits, &snap.via_name) {
            let allow = r.status == 405;
            let mut reply = GatewayReply::new(r.status, r.code, r.message).closing(r.close);
            if allow {
                reply = reply.header("allow", "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS");
            }
            return self.reply(session, ctx, reply).await;
        }
        if req.headers.contains_key(header::TRANSFER_ENCODING) {
            let raw_cl = session.as_downstream().as_http1().is_some_and(|h1| {
                hygiene::raw_head_has_content_length(&h1.get_headers_raw_bytes())
            });
            if raw_cl {
                let reply = GatewayReply::new(
                    400,
                    "bad_request",
                    "Content-Length and Transfer-Encoding together",
                )
                .closing(true);
                return self.reply(session, ctx, reply).await;
            }
        }
        if let Some(reply) = self.canonicalise_target(session, ctx, &snap).await? {
            return reply;
        }
        let req = session.req_header();
        let path = req.uri.path();
        let peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_canonical())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        ctx.client_ip = hygiene::client_ip(&snap, peer_ip, req);
        ctx.limit_ip = crate::limit::address_key(ctx.client_ip, snap.ipv6_prefix);

        if snap.health_endpoints {
            if let Some((status, body)) = self.health_reply(path, &snap) {
                ctx.status = status;
                let mut resp = ResponseHeader::build(status, Some(4))?;
                resp.insert_header("content-type", "application/json")?;
                resp.insert_header("content-length", body.len().to_string())?;
                resp.insert_header("x-request-id", ctx.request_id.clone())?;
                resp.insert_header("cache-control", "no-store")?;
                session.write_response_header(Box::new(resp), false).await?;
                session
                    .write_response_body(Some(Bytes::from(body)), true)
                    .await?;
                return Ok(true);
            }
        }
        if let Some(rules) = &snap.ip_rules {
            if !rules.permits(&ctx.client_ip) {
                return self
                    .reply(
                        session,
                        ctx,
                        GatewayReply::new(403, "forbidden", "client address is not allowed"),
                    )
                    .await;
            }
        }
        let req = session.req_header();
        let host = match req.headers.get(header::HOST) {
            Some(h) => canonical::route_host(h.as_bytes()),
            None if req.version == http::Version::HTTP_11 => Err(canonical::Refusal(
                "an HTTP/1.1 request needs a Host header",
            )),
            None => Ok(std::borrow::Cow::Borrowed(
                req.uri.authority().map_or("", |a| a.host()),
            )),
        };
        let host = match host {
            Ok(h) => h,
            Err(why) => {
                let reply = GatewayReply::new(400, "bad_request", why.0);
                return self.reply(session, ctx, reply).await;
            }
        };
        let match_path = ctx.match_path.as_deref().unwrap_or(req.uri.path());
        let route = match snap.router.find(&host, &req.method, match_path) {
            Match::Found(r) => r.clone(),
            Match::MethodNotAllowed(allow) => {
                let reply = GatewayReply::new(
                    405,
                    "method_not_allowed",
                    format!("{} is not allowed on this path", req.method),
                )
                .header("allow", allow);
                return self.reply(session, ctx, reply).await;
            }
            Match::NotFound => {
                return self
                    .reply(
                        session,
                        ctx,
                        GatewayReply::new(404, "no_route", "no route matches this request"),
                    )
                    .await;
            }
        };
        ctx.route = Some(route.clone());
        if let Some(reply) = self.admit(&snap, &route, ctx) {
            return self.reply(session, ctx, reply).await;
        }
        if let Some(rules) = &route.ip_rules {
            if !rules.permits(&ctx.client_ip) {
                return self
                    .reply(
                        session,
                        ctx,
                        GatewayReply::new(
                            403,
                            "forbidden",
                            "client address is not allowed on this route",
                        ),
                    )
                    .await;
            }
        }
        if hygiene::content_length(req).is_some_and(|n| n > route.max_body) {
            let reply = GatewayReply::new(
                413,
                "payload_too_large",
                format!("request body is larger than {} bytes", route.max_body),
            )
            .closing(true);
            return self.reply(session, ctx, reply).await;
        }
        ctx.websocket = route.websocket && hygiene::is_websocket_upgrade(req);
        // The path is only needed (and copied) when path-based limits exist.
        let path = if snap.rate_limits.per_path.is_empty() {
            String::new()
        } else {
            ctx.match_path
                .clone()
                .unwrap_or_else(|| session.req_header().uri.path().to_string())
        };
        if let Err(reply) = self.rate_limit(&snap, &route, &path, ctx, false).await {
            return self.reply(session, ctx, reply).await;
        }
        if route.auth != RouteAuth::None {
            if let Some(reply) = self.auth_budget_spent(&snap, ctx) {
                return self.reply(session, ctx, reply).await;
            }
        }
        let req = session.req_header();
        if route.auth == RouteAuth::Jwt {
            let verdict = match (&snap.jwt, req.headers.get(header::AUTHORIZATION)) {
                (Some(v), Some(h)) => v
                    .verify(h.as_bytes(), crate::keys::unix_now())
                    .map_err(|r| r.0),
                (Some(_), None) => Err("a bearer token is required".to_string()),
                (None, _) => Err("JWT authentication is not configured".to_string()),
            };
            match verdict {
                Ok(verified) => {
                    ctx.consumer = Some(verified.subject.clone());
                    ctx.jwt = Some(verified);
                }
                Err(why) => {
                    self.auth_failed(&snap, &route, ctx, "jwt");
                    let challenge =
                        format!("Bearer error=\"invalid_token\", error_description=\"{why}\"");
                    let reply = GatewayReply::new(401, "unauthorized", why)
                        .header("www-authenticate", challenge);
                    return self.reply(session, ctx, reply).await;
                }
            }
        } else if route.auth != RouteAuth::None {
            let presented = snap.keys.header.as_ref().and_then(|h| req.headers.get(h));
            match presented {
                None if route.auth == RouteAuth::Optional => {}
                None => {
                    self.auth_failed(&snap, &route, ctx, "missing");
                    let reply = GatewayReply::new(401, "unauthorized", "an API key is required")
                        .header("www-authenticate", "ApiKey");
                    return self.reply(session, ctx, reply).await;
                }
                Some(key) => match snap.keys.verify(
                    key.as_bytes(),
                    &route.id,
                    &route.scopes,
                    crate::keys::unix_now(),
                ) {
                    Ok(k) => ctx.consumer = Some(k.name.clone()),
                    Err(KeyRejection::Unauthorized(why)) => {
                        self.auth_failed(&snap, &route, ctx, why);
                        let reply = GatewayReply::new(401, "unauthorized", why)
                            .header("www-authenticate", "ApiKey");
                        return self.reply(session, ctx, reply).await;
                    }
                    Err(KeyRejection::Forbidden(why)) => {
                        self.auth_failed(&snap, &route, ctx, why);
                        return self
                            .reply(session, ctx, GatewayReply::new(403, "forbidden", why))
                            .await;
                    }
                },
            }
        }
        if let Err(reply) = self.rate_limit(&snap, &route, &path, ctx, true).await {
            return self.reply(session, ctx, reply).await;
        }
        if let Some(breaker) = &route.upstream.breaker {
            match breaker.admit() {
                Admission::Allowed => {}
                Admission::Probe => ctx.breaker_probe = true,
                Admission::Rejected(wait) => {
                    self.stats
                        .breaker_rejections
                        .fetch_add(1, Ordering::Relaxed);
                    route.metrics.breaker_rejections.inc();
                    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                    let reply = GatewayReply::new(
                        503,
                        "circuit_open",
                        format!("upstream {} is failing; not contacted", route.upstream.name),
                    )
                    .header("retry-after", secs.to_string());
                    return self.reply(session, ctx, reply).await;
                }
            }
        }
        if route.retry_non_idempotent {
            session.enable_retry_buffering();
        }
        ctx.deadline = Some(ctx.start + route.total_timeout);
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.deadline.is_some_and(|d| Instant::now() > d) {
            return Error::e_explain(
                ErrorType::HTTPStatus(408),
                "request body not received within the route timeout",
            );
        }
        if let (Some(b), Some(route)) = (body.as_ref(), ctx.route.as_ref()) {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > route.max_body {
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body exceeds the route limit",
                );
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route"))?;
        let up = &route.upstream;
        ctx.attempts += 1;
        if ctx.attempts > 1 {
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            crate::metrics::metrics().retries.inc();
            // Exponential backoff with full jitter, capped at 1 s.
            let ceiling = up
                .retry_backoff
                .saturating_mul(1 << (ctx.attempts - 2).min(10))
                .min(Duration::from_secs(1));
            let pause = ceiling.mul_f64(fastrand::f64());
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        let remaining = ctx
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(up.total_timeout);
        if remaining.is_zero() {
            return Error::e_explain(
                ErrorType::HTTPStatus(504),
                "route timeout reached before the upstream answered",
            );
        }
        self.release_target(ctx);
        // Only consistent hashing reads a key; avoid building one otherwise.
        let mut ip_bytes = [0u8; 16];
        let key: &[u8] = match (&up.selector, &up.hash_key) {
            (Selector::Consistent(_), HashKey::Header(h)) => session
                .req_header()
                .headers
                .get(h)
                .map_or(&[][..], |v| v.as_bytes()),
            (Selector::Consistent(_), HashKey::ClientIp) => match ctx.client_ip {
                IpAddr::V4(v4) => {
                    ip_bytes[..4].copy_from_slice(&v4.octets());
                    &ip_bytes[..4]
                }
                IpAddr::V6(v6) => {
                    ip_bytes.copy_from_slice(&v6.octets());
                    &ip_bytes[..]
                }
            },
            _ => &[],
        };
        let idx = up
            .select(key, &ctx.tried)
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "upstream has no targets"))?;
        ctx.tried.push(idx);
        ctx.target = Some(idx);
        let target = &up.targets[idx];
        target.state.inflight.fetch_add(1, Ordering::Relaxed);
        let mut peer = Box::new(target.peer.clone());
        peer.options.read_timeout = Some(up.read_timeout.min(remaining));
        peer.options.write_timeout = Some(up.write_timeout.min(remaining));
        peer.options.connection_timeout = Some(up.connect_timeout.min(remaining));
        peer.options.total_connection_timeout = peer.options.connection_timeout;
        if ctx.upstream_started.is_none() {
            ctx.upstream_started = Some(Instant::now());
        }
        Ok(peer)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if reused {
            self.stats
                .upstream_connects_reused
                .fetch_add(1, Ordering::Relaxed);
            crate::metrics::metrics().upstream_conn_reused.inc();
        } else {
            self.stats
                .upstream_connects_new
                .fetch_add(1, Ordering::Relaxed);
            crate::metrics::metrics().upstream_conn_new.inc();
        }
        if let (Some(i), Some(route)) = (ctx.target, ctx.route.as_ref()) {
            route.upstream.targets[i].state.connected();
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(i), Some(route)) = (ctx.target, ctx.route.as_ref()) {
            let up = &route.upstream;
            if up.targets[i]
                .state
                .connect_failed(up.passive_max_failures, up.passive_eject)
            {
                self.stats.ejections.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(upstream = %up.name, target = %up.targets[i].url, "target ejected after consecutive connect failures");
                crate::events::emit(
                    crate::events::Event::UpstreamFailure,
                    serde_json::json!({"upstream": &*up.name, "target": up.targets[i].url, "reason": "ejected after consecutive connect failures"}),
                );
            }
            // Nothing was sent: a connect failure is always safe to retry.
            let within_deadline = ctx.deadline.is_none_or(|d| Instant::now() < d);
            e.set_retry(ctx.attempts <= up.retries && within_deadline);
        }
        e.more_context(format!("peer: {}", peer.address()))
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {}", peer.address()));
        let Some(route) = ctx.route.as_ref() else {
            e.set_retry(false);
            return e;
        };
        let replayable = session.req_header().method.is_idempotent()
            || (route.retry_non_idempotent && !session.as_ref().retry_buffer_truncated());
        let nothing_sent_back = session.as_ref().response_written().is_none();
        let within_deadline = ctx.deadline.is_none_or(|d| Instant::now() < d);
        if !(replayable && nothing_sent_back && within_deadline) {
            e.set_retry(false);
        } else if ctx.attempts <= route.upstream.retries {
            e.set_retry(true);
        } else {
            // A stale pooled connection may still be retried once (Pingora's policy).
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let (Some(route), Some(snap)) = (ctx.route.as_ref(), ctx.snap.as_ref()) else {
            return Ok(());
        };
        hygiene::strip_hop_by_hop(upstream_request, ctx.websocket);
        let peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_canonical());
        let trusted = peer_ip.is_some_and(|ip| snap.is_trusted(&ip));
        let peer_value = peer_ip.map_or(EMPTY, edge::ip_header_value);
        // X-Forwarded-For: append to a trusted proxy's list, else start fresh.
        let previous = upstream_request
            .headers
            .get(&X_FORWARDED_FOR)
            .filter(|_| trusted)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty());
        let xff = match previous {
            Some(prev) => {
                let peer_text = peer_value.to_str().unwrap_or("");
                let mut list = String::with_capacity(prev.len() + 2 + peer_text.len());
                list.push_str(prev);
                list.push_str(", ");
                list.push_str(peer_text);
                HeaderValue::try_from(list)
                    .explain_err(ErrorType::InvalidHTTPHeader, |_| "x-forwarded-for")?
            }
            None => peer_value.clone(),
        };
        upstream_request.insert_header(H_X_FORWARDED_FOR, xff)?;
        if !trusted || !upstream_request.headers.contains_key(&X_FORWARDED_PROTO) {
            upstream_request.insert_header(
                H_X_FORWARDED_PROTO,
                HeaderValue::from_static(if ctx.tls { "https" } else { "http" }),
            )?;
        }
        if !trusted || !upstream_request.headers.contains_key(&X_FORWARDED_HOST) {
            match session.req_header().headers.get(header::HOST).cloned() {
                Some(h) => upstream_request.insert_header(H_X_FORWARDED_HOST, h)?,
                None => {
                    upstream_request.remove_header(&X_FORWARDED_HOST);
                }
            }
        }
        let real_ip = if peer_ip == Some(ctx.client_ip) {
            peer_value
        } else {
            edge::ip_header_value(ctx.client_ip)
        };
        upstream_request.insert_header(H_X_REAL_IP, real_ip)?;
        upstream_request.remove_header(&FORWARDED);
        // Gateway-owned headers: never trust a client's copy.
        upstream_request.remove_header(&X_CONSUMER);
        if let Some(c) = &ctx.consumer {
            upstream_request.insert_header(H_X_CONSUMER, c.as_ref())?;
        }
        if let Some(v) = &snap.jwt {
            for h in v.forwarded_headers() {
                upstream_request.remove_header(h);
            }
        }
        if let Some(j) = &ctx.jwt {
            for (h, v) in j.headers.iter() {
                upstream_request.insert_header(h.clone(), v.clone())?;
            }
        }
        upstream_request.insert_header(H_X_REQUEST_ID, ctx.request_id.clone())?;
        let via = match upstream_request
            .headers
            .get(header::VIA)
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => HeaderValue::from_str(&format!(
                "{prev}, {}",
                snap.via_entry.to_str().unwrap_or("")
            ))
            .unwrap_or(snap.via_entry.clone()),
            None => snap.via_entry.clone(),
        };
        upstream_request.insert_header(header::VIA, via)?;
        if let Some(i) = ctx.target {
            if !route.upstream.host_from_client {
                upstream_request
                    .insert_header(header::HOST, route.upstream.targets[i].host_header.clone())?;
            }
        }
        rewrite_path(&route.rewrite, upstream_request);
        if !route.request_headers.is_empty() {
            apply_header_ops(upstream_request, &route.request_headers);
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if ctx.deadline.is_some_and(|d| Instant::now() > d) && !ctx.websocket {
            return Error::e_explain(
                ErrorType::ReadTimedout,
                "route total timeout reached while streaming the response",
            );
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.upstream_elapsed.is_none() {
            ctx.upstream_elapsed = ctx.upstream_started.map(|s| s.elapsed());
        }
        let switching = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
        hygiene::strip_hop_by_hop(resp, switching && ctx.websocket);
        resp.insert_header(H_X_REQUEST_ID, ctx.request_id.clone())?;
        if let Some((d, rule)) = &ctx.rate {
            resp.insert_header("ratelimit-policy", rule.policy.as_str())?;
            let mut v = String::with_capacity(48);
            v.push_str("limit=");
            push_u64(&mut v, d.limit);
            v.push_str(", remaining=");
            push_u64(&mut v, d.remaining);
            v.push_str(", reset=");
            push_u64(&mut v, d.reset_secs);
            resp.insert_header("ratelimit", v)?;
        }
        if let Some(route) = &ctx.route {
            if !route.response_headers.is_empty() {
                apply_header_ops(resp, &route.response_headers);
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let mut reply = respond::reply_for_error(e);
        // A timeout while the client has not finished sending its body is the
        // client's slowness, not the upstream's.
        if matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        ) && !session.as_downstream_mut().is_body_done()
        {
            reply = Some(GatewayReply::new(
                408,
                "request_timeout",
                "the request body was not received in time",
            ));
        }
        let code = match reply {
            Some(reply) if session.as_ref().response_written().is_none() => {
                let status = reply.status;
                if let Err(err) = respond::send(session, ctx, reply.closing(true)).await {
                    tracing::debug!("could not send error response: {err}");
                }
                status
            }
            Some(reply) => reply.status,
            None => 0,
        };
        if ctx.status == 0 {
            ctx.status = code;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // Failures are in the access log with their status; keep Pingora's log quiet.
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        self.release_target(ctx);
        if ctx.admitted {
            self.stats.inflight.fetch_sub(1, Ordering::Relaxed);
            crate::metrics::metrics().in_flight.dec();
            if let Some(route) = &ctx.route {
                route.inflight.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if let (Some(route), true) = (ctx.route.as_ref(), ctx.attempts > 0) {
            if let Some(breaker) = &route.upstream.breaker {
                let upstream_status = session
                    .as_ref()
                    .response_written()
                    .map_or(0, |r| r.status.as_u16());
                let outcome = breaker_outcome(e, ctx.error_code, upstream_status);
                let transition = match outcome {
                    Some(success) => breaker.record(success, ctx.breaker_probe),
                    // Not the upstream's doing (the client went away, its
                    // body was too slow or too big): nothing to record.
                    None => {
                        if ctx.breaker_probe {
                            breaker.cancel_probe();
                        }
                        None
                    }
                };
                match transition {
                    Some(Transition::Opened) => {
                        tracing::warn!(upstream = %route.upstream.name, "circuit breaker opened");
                        crate::metrics::metrics()
                            .breaker_transitions
                            .with_label_values(&[&route.upstream.name, "open"])
                            .inc();
                        crate::events::emit(
                            crate::events::Event::CircuitBreakerOpened,
                            serde_json::json!({"upstream": &*route.upstream.name}),
                        );
                    }
                    Some(Transition::Closed) => {
                        tracing::info!(upstream = %route.upstream.name, "circuit breaker closed");
                        crate::metrics::metrics()
                            .breaker_transitions
                            .with_label_values(&[&route.upstream.name, "closed"])
                            .inc();
                        crate::events::emit(
                            crate::events::Event::CircuitBreakerClosed,
                            serde_json::json!({"upstream": &*route.upstream.name}),
                        );
                    }
                    None => {}
                }
            }
        }
        let status = session
            .as_ref()
            .response_written()
            .map(|r| r.status.as_u16())
            .filter(|_| ctx.status == 0 || ctx.error_code.is_none())
            .unwrap_or(ctx.status);
        let m = crate::metrics::metrics();
        let (bytes_in, bytes_out) = (
            session.as_ref().body_bytes_read() as u64,
            session.as_ref().body_bytes_sent() as u64,
        );
        m.bytes_in.inc_by(bytes_in);
        m.bytes_out.inc_by(bytes_out);
        let route_metrics: &crate::metrics::RouteMetrics = match ctx.route.as_ref() {
            Some(r) => &r.metrics,
            None => crate::metrics::unrouted(),
        };
        route_metrics.record(
            &session.req_header().method,
            status,
            ctx.start.elapsed().as_secs_f64(),
            ctx.upstream_elapsed.map(|d| d.as_secs_f64()),
        );
        crate::live::stats().record(
            ctx.route.as_ref().map(|r| &r.id),
            ctx.route.as_ref().map(|r| &r.upstream.name),
            status,
            ctx.start.elapsed(),
        );
        if let Some(history) = &self.history {
            history.record(self.history_record(session, ctx, status, bytes_in, bytes_out));
        }
        let Some(snap) = ctx.snap.as_ref() else {
            return;
        };
        if !snap.access_log {
            return;
        }
        let failed = status >= 400 || status == 0 || e.is_some();
        let rate = if failed {
            snap.error_sample
        } else {
            snap.success_sample
        };
        if rate < 1.0 && fastrand::f64() >= rate {
            return;
        }
        let req = session.req_header();
        let target = match (ctx.target_logged(), ctx.route.as_ref()) {
            (Some(i), Some(r)) => r.upstream.targets.get(i).map(|t| t.url.as_str()),
            _ => None,
        };
        accesslog::write(&AccessRecord {
            request_id: ctx.request_id(),
            method: req.method.as_str(),
            path: req.uri.path(),
            host: host_of(req),
            status,
            route: ctx.route.as_ref().map(|r| &*r.id),
            upstream: ctx.route.as_ref().map(|r| &*r.upstream.name),
            target,
            client_ip: ctx.client_ip,
            duration: ctx.start.elapsed(),
            upstream_duration: ctx.upstream_elapsed,
            bytes_in,
            bytes_out,
            attempts: ctx.attempts,
            consumer: ctx.consumer.as_deref(),
            error: ctx.error_code.or(e.map(|_| "proxy_error")),
            user_agent: req
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
        });
    }
}

/// What a finished exchange says about the upstream, for its circuit breaker:
/// `Some(true)` success, `Some(false)` failure, `None` neither.
///
/// Failures are the upstream's: a connect error or timeout, a broken or
/// invalid upstream exchange, the route's deadline while waiting for it, or a
/// 5xx it answered. Errors on the client's side (it closed the connection,
/// sent a bad, slow or oversized body) and the gateway's own errors say
/// nothing about the upstream.
fn breaker_outcome(e: Option<&Error>, error_code: Option<&str>, status: u16) -> Option<bool> {
    if let Some(code) = error_code {
        // The gateway answered itself (`respond::send`); its code says why.
        return respond::blames_upstream(code).then_some(false);
    }
    match e {
        None => Some(status < 500),
        Some(e) if respond::upstream_caused(e) || status >= 500 => Some(false),
        Some(_) => None,
    }
}

impl RequestCtx {
    /// The correlation id as text (it is always plain ASCII).
    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("")
    }

    /// Last target tried (kept for the access log after release).
    fn target_logged(&self) -> Option<usize> {
        self.tried.last().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_outcome_blames_only_the_upstream() {
        let up = |t| Error::new_up(t);
        let down = |t| Error::new_down(t);
        // Clean exchanges: the upstream's status decides.
        assert_eq!(breaker_outcome(None, None, 200), Some(true));
        assert_eq!(breaker_outcome(None, None, 404), Some(true));
        assert_eq!(breaker_outcome(None, None, 503), Some(false));
        // Upstream-side errors and the gateway's replies for them.
        let refused = up(ErrorType::ConnectRefused);
        assert_eq!(breaker_outcome(Some(&refused), None, 0), Some(false));
        let read = up(ErrorType::ReadError);
        assert_eq!(breaker_outcome(Some(&read), None, 200), Some(false));
        let deadline = Error::new(ErrorType::HTTPStatus(504));
        assert_eq!(
            breaker_outcome(Some(&deadline), Some("upstream_timeout"), 504),
            Some(false)
        );
        assert_eq!(
            breaker_outcome(Some(&refused), Some("upstream_unavailable"), 502),
            Some(false)
        );
        // The client went away: neither success nor failure.
        for t in [
            ErrorType::WriteError,
            ErrorType::ReadError,
            ErrorType::ConnectionClosed,
        ] {
            assert_eq!(breaker_outcome(Some(&down(t.clone())), None, 200), None);
            assert_eq!(breaker_outcome(Some(&down(t)), None, 0), None);
        }
        // ... unless the upstream had already answered 5xx.
        let gone = down(ErrorType::WriteError);
        assert_eq!(breaker_outcome(Some(&gone), None, 502), Some(false));
        // The client's own slowness or size, and the gateway's own errors.
        let slow = up(ErrorType::ReadTimedout);
        assert_eq!(
            breaker_outcome(Some(&slow), Some("request_timeout"), 408),
            None
        );
        let big = Error::new(ErrorType::HTTPStatus(413));
        assert_eq!(
            breaker_outcome(Some(&big), Some("payload_too_large"), 413),
            None
        );
        let internal = Error::new(ErrorType::InternalError);
        assert_eq!(
            breaker_outcome(Some(&internal), Some("internal_error"), 500),
            None
        );
    }
}
