//! The upstream side of a request: the circuit breaker's admission, target
//! selection and the peer handed to Pingora (timeouts cut to the route's
//! deadline), backoff between attempts, passive ejection, and the retry
//! policy for connect failures and broken exchanges.

use super::ctx::RequestCtx;
use super::respond::Reject;
use crate::events::Event;
use crate::snapshot::breaker::Admission;
use crate::snapshot::upstream::{HashKey, Selector};
use crate::snapshot::Route;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{Error, ErrorType, Result};
use pingora_proxy::Session;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Asks the upstream's circuit breaker whether to try it at all.
pub fn breaker_admits(route: &Route, ctx: &mut RequestCtx) -> Result<(), Reject> {
    let Some(breaker) = &route.upstream.breaker else {
        return Ok(());
    };
    match breaker.admit() {
        Admission::Allowed => Ok(()),
        Admission::Probe => {
            ctx.upstream.breaker_probe = true;
            Ok(())
        }
        Admission::Rejected(wait) => {
            route.metrics.breaker_rejections.inc();
            Err(Reject::CircuitOpen {
                upstream: route.upstream.name.clone(),
                retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
            })
        }
    }
}

/// The peer for the next attempt: waits out the backoff before a retry,
/// picks a target not tried yet, and bounds every timeout by what is left
/// of the route's deadline.
pub async fn next_peer(session: &Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    let route = ctx
        .route
        .clone()
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route"))?;
    let up = &route.upstream;
    ctx.upstream.count += 1;
    if ctx.upstream.count > 1 {
        crate::metrics::metrics().retries.inc();
        // Exponential backoff with full jitter, capped at 1 s.
        let ceiling = up
            .retry_backoff
            .saturating_mul(1 << (ctx.upstream.count - 2).min(10))
            .min(Duration::from_secs(1));
        let pause = ceiling.mul_f64(fastrand::f64());
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    let remaining = ctx
        .timing
        .deadline
        .map(|d| d.saturating_duration_since(Instant::now()))
        .unwrap_or(up.total_timeout);
    if remaining.is_zero() {
        return Error::e_explain(
            ErrorType::HTTPStatus(504),
            "route timeout reached before the upstream answered",
        );
    }
    release_target(ctx);
    // Only consistent hashing reads a key; avoid building one otherwise.
    let mut ip_bytes = [0u8; 16];
    let key: &[u8] = match (&up.selector, &up.hash_key) {
        (Selector::Consistent(_), HashKey::Header(h)) => session
            .req_header()
            .headers
            .get(h)
            .map_or(&[][..], |v| v.as_bytes()),
        (Selector::Consistent(_), HashKey::ClientIp) => match ctx.client.ip {
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
        .select(key, &ctx.upstream.tried)
        .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "upstream has no targets"))?;
    ctx.upstream.tried.push(idx);
    ctx.upstream.current = Some(idx);
    let target = &up.targets[idx];
    target.state.inflight.fetch_add(1, Ordering::Relaxed);
    let mut peer = Box::new(target.peer.clone());
    peer.options.read_timeout = Some(up.read_timeout.min(remaining));
    peer.options.write_timeout = Some(up.write_timeout.min(remaining));
    peer.options.connection_timeout = Some(up.connect_timeout.min(remaining));
    peer.options.total_connection_timeout = peer.options.connection_timeout;
    if ctx.timing.upstream_started.is_none() {
        ctx.timing.upstream_started = Some(Instant::now());
    }
    Ok(peer)
}

/// Releases the current attempt's target (its in-flight count).
pub fn release_target(ctx: &mut RequestCtx) {
    if let (Some(i), Some(route)) = (ctx.upstream.current.take(), ctx.route.as_ref()) {
        if let Some(t) = route.upstream.targets.get(i) {
            t.state.inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A connection to the current target is up (new or reused).
pub fn connected(ctx: &RequestCtx, reused: bool) {
    let m = crate::metrics::metrics();
    if reused {
        m.upstream_conn_reused.inc();
    } else {
        m.upstream_conn_new.inc();
    }
    if let (Some(i), Some(route)) = (ctx.upstream.current, ctx.route.as_ref()) {
        route.upstream.targets[i].state.connected();
    }
}

/// A connect failure: counts toward passive ejection, and is retried while
/// attempts and the deadline allow (nothing was sent, so it is always safe).
pub fn connect_failed(peer: &HttpPeer, ctx: &RequestCtx, mut e: Box<Error>) -> Box<Error> {
    if let (Some(i), Some(route)) = (ctx.upstream.current, ctx.route.as_ref()) {
        let up = &route.upstream;
        if up.targets[i]
            .state
            .connect_failed(up.passive_max_failures, up.passive_eject)
        {
            tracing::warn!(upstream = %up.name, target = %up.targets[i].url, "target ejected after consecutive connect failures");
            crate::events::emit(
                Event::UpstreamFailure,
                serde_json::json!({"upstream": &*up.name, "target": up.targets[i].url, "reason": "ejected after consecutive connect failures"}),
            );
        }
        e.set_retry(ctx.upstream.count <= up.retries && !ctx.past_deadline());
    }
    e.more_context(format!("peer: {}", peer.address()))
}

/// A broken exchange: retried only when the request can be replayed
/// (idempotent, or buffered for `retryNonIdempotent`), nothing reached the
/// client yet, and attempts and the deadline allow.
pub fn exchange_failed(
    peer: &HttpPeer,
    session: &Session,
    e: Box<Error>,
    ctx: &RequestCtx,
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
    if !(replayable && nothing_sent_back && !ctx.past_deadline()) {
        e.set_retry(false);
    } else if ctx.upstream.count <= route.upstream.retries {
        e.set_retry(true);
    } else {
        // A stale pooled connection may still be retried once (Pingora's policy).
        e.retry.decide_reuse(client_reused);
    }
    e
}
