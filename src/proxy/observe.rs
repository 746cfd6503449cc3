//! The logging phase: what a finished exchange leaves behind. The circuit
//! breaker's verdict on the upstream, per-route metrics, the live summary,
//! the request history row, the `request.error` event for a 5xx, and the
//! sampled access log line. Nothing here waits: history rows and events go
//! to bounded queues.

use super::ctx::RequestCtx;
use super::respond;
use super::Gateway;
use crate::accesslog::{self, AccessRecord};
use crate::events::Event;
use crate::snapshot::breaker::Transition;
use crate::snapshot::Route;
use http::header;
use pingora_error::Error;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

/// Everything recorded when an exchange ends.
pub fn finished(gw: &Gateway, session: &Session, e: Option<&Error>, ctx: &RequestCtx) {
    let upstream_status = session
        .as_ref()
        .response_written()
        .map_or(0, |r| r.status.as_u16());
    if let (Some(route), true) = (ctx.route.as_ref(), ctx.upstream.count > 0) {
        record_breaker(route, e, ctx, upstream_status);
    }
    // The status the client got: the gateway's own when it refused.
    let status = match ctx.outcome.code {
        Some(_) => ctx.outcome.status,
        None if upstream_status != 0 => upstream_status,
        None => ctx.outcome.status,
    };
    let m = crate::metrics::metrics();
    let (bytes_in, bytes_out) = (
        session.as_ref().body_bytes_read() as u64,
        session.as_ref().body_bytes_sent() as u64,
    );
    m.bytes_in.inc_by(bytes_in);
    m.bytes_out.inc_by(bytes_out);
    let elapsed = ctx.timing.start.elapsed();
    let route_metrics = match ctx.route.as_ref() {
        Some(r) => &r.metrics,
        None => crate::metrics::unrouted(),
    };
    let req = session.req_header();
    route_metrics.record(
        &req.method,
        status,
        elapsed.as_secs_f64(),
        ctx.timing.upstream_elapsed.map(|d| d.as_secs_f64()),
    );
    crate::live::stats().record(
        ctx.route.as_ref().map(|r| &r.id),
        ctx.route.as_ref().map(|r| &r.upstream.name),
        status,
        elapsed,
    );
    if status >= 500 {
        request_error(req, ctx, status, e);
    }
    if let Some(history) = &gw.history {
        history.record(history_record(
            req,
            ctx,
            status,
            elapsed,
            (bytes_in, bytes_out),
        ));
    }
    let snap = &ctx.snap;
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
        client_ip: ctx.client.ip,
        duration: elapsed,
        upstream_duration: ctx.timing.upstream_elapsed,
        bytes_in,
        bytes_out,
        attempts: ctx.upstream.count,
        consumer: ctx.identity.consumer.as_deref(),
        error: ctx.outcome.code.or(e.map(|_| "proxy_error")),
        user_agent: req
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
    });
}

/// Tells the upstream's circuit breaker how the exchange went, and reports
/// a state change.
fn record_breaker(route: &Route, e: Option<&Error>, ctx: &RequestCtx, upstream_status: u16) {
    let Some(breaker) = &route.upstream.breaker else {
        return;
    };
    let probe = ctx.upstream.breaker_probe;
    let transition = match breaker_outcome(
        e,
        ctx.outcome.code.map(|_| ctx.outcome.upstream_fault),
        upstream_status,
    ) {
        Some(success) => breaker.record(success, probe),
        // Not the upstream's doing (the client went away, its body was too
        // slow or too big): nothing to record.
        None => {
            if probe {
                breaker.cancel_probe();
            }
            None
        }
    };
    let (state, event) = match transition {
        Some(Transition::Opened) => {
            tracing::warn!(upstream = %route.upstream.name, "circuit breaker opened");
            ("open", Event::CircuitBreakerOpened)
        }
        Some(Transition::Closed) => {
            tracing::info!(upstream = %route.upstream.name, "circuit breaker closed");
            ("closed", Event::CircuitBreakerClosed)
        }
        None => return,
    };
    crate::metrics::metrics()
        .breaker_transitions
        .with_label_values(&[&route.upstream.name, state])
        .inc();
    crate::events::emit(
        event,
        serde_json::json!({"upstream": &*route.upstream.name}),
    );
}

/// What a finished exchange says about the upstream, for its circuit breaker:
/// `Some(true)` success, `Some(false)` failure, `None` neither.
///
/// `refused` is `Some(blames_upstream)` when the gateway answered itself.
/// Failures are the upstream's: a connect error or timeout, a broken or
/// invalid upstream exchange, the route's deadline while waiting for it, or a
/// 5xx it answered. Errors on the client's side (it closed the connection,
/// sent a bad, slow or oversized body) and the gateway's own errors say
/// nothing about the upstream.
fn breaker_outcome(e: Option<&Error>, refused: Option<bool>, status: u16) -> Option<bool> {
    if let Some(upstream_fault) = refused {
        return upstream_fault.then_some(false);
    }
    match e {
        None => Some(status < 500),
        Some(e) if respond::upstream_caused(e) || status >= 500 => Some(false),
        Some(_) => None,
    }
}

/// Emits `request.error` for a 5xx (a few per second reach the bus; the
/// rest are counted: [`crate::events::emit_counted`]).
fn request_error(req: &RequestHeader, ctx: &RequestCtx, status: u16, e: Option<&Error>) {
    crate::events::emit_counted(Event::RequestError, true, || {
        serde_json::json!({
            "status": status,
            "error": ctx.outcome.code.or(e.map(|_| "proxy_error")),
            "route": ctx.route.as_ref().map(|r| &*r.id),
            "upstream": ctx.route.as_ref().map(|r| &*r.upstream.name),
            "method": req.method.as_str(),
            "path": req.uri.path(),
            "clientIp": ctx.client.ip.to_string(),
            "requestId": ctx.request_id(),
        })
    });
}

/// The owned request-history row of a finished request.
fn history_record(
    req: &RequestHeader,
    ctx: &RequestCtx,
    status: u16,
    duration: std::time::Duration,
    (bytes_in, bytes_out): (u64, u64),
) -> crate::history::HistoryRecord {
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
        client_ip: ctx.client.ip,
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

/// The request's host without the port (for the access log).
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

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_error::ErrorType;

    #[test]
    fn breaker_outcome_blames_only_the_upstream() {
        let up = |t| Error::new_up(t);
        let down = |t| Error::new_down(t);
        let refused = |r: respond::Reject| Some(r.blames_upstream());
        // Clean exchanges: the upstream's status decides.
        assert_eq!(breaker_outcome(None, None, 200), Some(true));
        assert_eq!(breaker_outcome(None, None, 404), Some(true));
        assert_eq!(breaker_outcome(None, None, 503), Some(false));
        // Upstream-side errors and the gateway's replies for them.
        let conn_refused = up(ErrorType::ConnectRefused);
        assert_eq!(breaker_outcome(Some(&conn_refused), None, 0), Some(false));
        let read = up(ErrorType::ReadError);
        assert_eq!(breaker_outcome(Some(&read), None, 200), Some(false));
        let deadline = Error::new(ErrorType::HTTPStatus(504));
        assert_eq!(
            breaker_outcome(
                Some(&deadline),
                refused(respond::Reject::UpstreamTimeout("t")),
                504
            ),
            Some(false)
        );
        assert_eq!(
            breaker_outcome(
                Some(&conn_refused),
                refused(respond::Reject::UpstreamUnavailable),
                502
            ),
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
            breaker_outcome(Some(&slow), refused(respond::Reject::RequestTimeout), 408),
            None
        );
        let big = Error::new(ErrorType::HTTPStatus(413));
        assert_eq!(
            breaker_outcome(
                Some(&big),
                refused(respond::Reject::PayloadTooLarge { max: None }),
                413
            ),
            None
        );
        let internal = Error::new(ErrorType::InternalError);
        assert_eq!(
            breaker_outcome(Some(&internal), refused(respond::Reject::Internal), 500),
            None
        );
    }

    #[test]
    fn host_without_port() {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.insert_header("host", "example.com:8080").unwrap();
        assert_eq!(host_of(&r), "example.com");
        r.insert_header("host", "[::1]:8080").unwrap();
        assert_eq!(host_of(&r), "::1");
    }
}
