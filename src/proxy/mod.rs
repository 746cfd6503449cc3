//! The data plane: FlexGate's Pingora `ProxyHttp`, one file per concern.
//!
//! A request's way through the phases:
//! - `request_filter`: correlation id and hygiene (`hygiene.rs`), the
//!   canonical target (`canonical.rs`), the client address, health probes,
//!   IP rules, the route (404/405), then admission (`admission.rs`: in-flight
//!   caps, the body size, rate limits), authentication (`auth.rs`) and the
//!   circuit breaker (`upstream.rs`). A refusal is a `respond::Reject`,
//!   written by `respond.rs`, and ends the request there.
//! - `upstream_peer` and the failure hooks (`upstream.rs`): backoff, target
//!   selection, peer timeouts, passive ejection, retry policy.
//! - `upstream_request_filter` / `response_filter` (`forward.rs`): header
//!   work both ways and the path rewrite.
//! - `fail_to_proxy`: a proxy error as a `Reject`; `logging` (`observe.rs`):
//!   breaker verdict, metrics, live stats, history, events, access log.
//!
//! The per-request state is `ctx::RequestCtx`. Around the proxy,
//! `edge.rs` owns the connection (caps, header deadline, keep-alive).
//! Nothing here blocks, locks or does I/O besides the proxied exchange.

pub mod admission;
pub mod auth;
pub mod canonical;
pub mod ctx;
pub mod edge;
pub mod forward;
pub mod hygiene;
pub mod observe;
pub mod respond;
#[cfg(test)]
mod test_support;
pub mod upstream;

use crate::limit::redis::RedisLimiter;
use crate::reload::ConfigHandle;
use crate::snapshot::router::Match;
use crate::snapshot::Snapshot;
use admission::LimitPhase;
use async_trait::async_trait;
use bytes::Bytes;
use ctx::RequestCtx;
use http::header::{self, HeaderName};
use pingora_core::protocols::Digest;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use respond::Reject;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

/// The gateway service.
pub struct Gateway {
    pub config: Arc<ConfigHandle>,
    /// Shared counters when `rateLimit.backend: redis`.
    pub redis: Option<Arc<RedisLimiter>>,
    /// True on the TLS listener's instance (sets `X-Forwarded-Proto`).
    pub tls: bool,
    /// The request-history queue (database mode with `history.enabled`).
    pub history: Option<crate::history::HistorySink>,
    /// Requests between admission and logging, over all routes and both
    /// listeners.
    pub in_flight: Arc<AtomicUsize>,
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl Gateway {
    /// Sends a refusal and ends the request. A refused request's body is
    /// never read, so a request that has one loses its connection.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reject: Reject,
    ) -> Result<bool> {
        let req = session.req_header();
        let unread_body = hygiene::content_length(req).is_some_and(|n| n > 0)
            || req.headers.contains_key(header::TRANSFER_ENCODING);
        respond::send_reject(session, ctx, &reject, unread_body).await?;
        Ok(true)
    }

    /// Everything before the upstream; `Err` is the refusal to send, and
    /// `Ok(true)` a request answered here (probes, `OPTIONS *`).
    async fn admit_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snap: &Snapshot,
    ) -> Result<Result<bool, Reject>> {
        let req = session.req_header();
        ctx.request_id = match req.headers.get(&X_REQUEST_ID) {
            Some(v) if hygiene::valid_request_id(v.as_bytes()) => v.clone(),
            _ => hygiene::new_request_id(),
        };
        if let Some(reject) = hygiene::check_request(req, &snap.limits, &snap.via_name) {
            return Ok(Err(reject));
        }
        if req.headers.contains_key(header::TRANSFER_ENCODING) {
            let raw_cl = session.as_downstream().as_http1().is_some_and(|h1| {
                hygiene::raw_head_has_content_length(&h1.get_headers_raw_bytes())
            });
            if raw_cl {
                return Ok(Err(Reject::Malformed(
                    "Content-Length and Transfer-Encoding together",
                )));
            }
        }
        match canonical::apply(session, ctx, &snap.paths) {
            Ok(canonical::Applied::Routed) => {}
            Ok(canonical::Applied::Asterisk) => {
                respond::send_options_asterisk(session, ctx).await?;
                return Ok(Ok(true));
            }
            Err(reject) => return Ok(Err(reject)),
        }
        let req = session.req_header();
        let peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_canonical())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        ctx.client.ip = hygiene::client_ip(snap, peer_ip, req);
        ctx.client.limit_ip = crate::limit::address_key(ctx.client.ip, snap.ipv6_prefix);
        if snap.health_endpoints {
            if let Some(body) = health_probe(req.uri.path(), snap) {
                respond::send_json(session, ctx, 200, body).await?;
                return Ok(Ok(true));
            }
        }
        if let Err(reject) = admission::ip_allowed(snap.ip_rules.as_ref(), &ctx.client.ip, false) {
            return Ok(Err(reject));
        }
        let host = match canonical::request_host(req) {
            Ok(h) => h,
            Err(reject) => return Ok(Err(reject)),
        };
        let match_path = ctx.match_path.as_deref().unwrap_or(req.uri.path());
        let route = match snap.router.find(&host, &req.method, match_path) {
            Match::Found(r) => r.clone(),
            Match::MethodNotAllowed(allow) => {
                return Ok(Err(Reject::MethodNotAllowed {
                    method: req.method.clone(),
                    allow: allow.to_string().into(),
                }))
            }
            Match::NotFound => return Ok(Err(Reject::NotFound)),
        };
        ctx.route = Some(route.clone());
        let admitted = admission::admit(self, snap, &route, ctx)
            .and_then(|()| admission::ip_allowed(route.ip_rules.as_ref(), &ctx.client.ip, true))
            .and_then(|()| admission::body_size(&route, req));
        if let Err(reject) = admitted {
            return Ok(Err(reject));
        }
        ctx.websocket = route.websocket && hygiene::is_websocket_upgrade(req);
        // The path is only needed (and copied) when path-based limits exist.
        let path = if snap.rate_limits.per_path.is_empty() {
            String::new()
        } else {
            ctx.match_path
                .clone()
                .unwrap_or_else(|| req.uri.path().to_string())
        };
        let limited =
            admission::rate_limit(self, snap, &route, &path, ctx, LimitPhase::BeforeAuth).await;
        if let Err(reject) = limited {
            return Ok(Err(reject));
        }
        let req = session.req_header();
        match auth::authenticate(snap, &route, req, &ctx.client, ctx.request_id()) {
            Ok(identity) => ctx.identity = identity,
            Err(reject) => return Ok(Err(reject)),
        }
        let limited =
            admission::rate_limit(self, snap, &route, &path, ctx, LimitPhase::AfterAuth).await;
        if let Err(reject) = limited.and_then(|()| upstream::breaker_admits(&route, ctx)) {
            return Ok(Err(reject));
        }
        if route.retry_non_idempotent {
            session.enable_retry_buffering();
        }
        ctx.timing.deadline = Some(ctx.timing.start + route.total_timeout);
        Ok(Ok(false))
    }
}

/// The body of a health probe on `path`, if it is one.
fn health_probe(path: &str, snap: &Snapshot) -> Option<String> {
    match path {
        "/health/live" => Some("{\"status\":\"UP\"}".to_string()),
        "/health/ready" => Some(format!(
            "{{\"status\":\"UP\",\"checks\":{{\"config\":{{\"status\":\"UP\",\"version\":{}}}}}}}",
            snap.version
        )),
        _ => None,
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.config.current(), self.tls)
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        edge::mark_head_received(session);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let snap = ctx.snap.clone();
        match self.admit_request(session, ctx, &snap).await? {
            Ok(answered) => Ok(answered),
            Err(reject) => self.refuse(session, ctx, reject).await,
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.past_deadline() {
            return Error::e_explain(
                ErrorType::HTTPStatus(408),
                "request body not received within the route timeout",
            );
        }
        if let (Some(b), Some(route)) = (body.as_ref(), ctx.route.as_ref()) {
            ctx.admission.body_bytes += b.len() as u64;
            if ctx.admission.body_bytes > route.max_body {
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
        upstream::next_peer(session, ctx).await
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
        upstream::connected(ctx, reused);
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        upstream::connect_failed(peer, ctx, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        upstream::exchange_failed(peer, session, e, ctx, client_reused)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        forward::upstream_request(session, upstream_request, ctx)
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if ctx.past_deadline() && !ctx.websocket {
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
        if ctx.timing.upstream_elapsed.is_none() {
            ctx.timing.upstream_elapsed = ctx.timing.upstream_started.map(|s| s.elapsed());
        }
        forward::downstream_response(resp, ctx)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let mut reject = Reject::for_error(e);
        // A timeout while the client has not finished sending its body is the
        // client's slowness, not the upstream's.
        if matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        ) && !session.as_downstream_mut().is_body_done()
        {
            reject = Some(Reject::RequestTimeout);
        }
        let code = match reject {
            Some(reject) if session.as_ref().response_written().is_none() => {
                if let Err(err) = respond::send_reject(session, ctx, &reject, true).await {
                    tracing::debug!("could not send error response: {err}");
                }
                reject.status()
            }
            Some(reject) => reject.status(),
            None => 0,
        };
        if ctx.outcome.status == 0 {
            ctx.outcome.status = code;
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
        edge::mark_exchange_end(session);
        upstream::release_target(ctx);
        admission::release(self, ctx);
        observe::finished(self, session, e, ctx);
    }
}
