//! The header work both ways, and the path rewrite.
//!
//! Upstream: hop-by-hop headers stripped, `X-Forwarded-*`/`X-Real-IP`
//! (appending to a trusted proxy's list, starting fresh otherwise),
//! gateway-owned headers (`X-Consumer-Name`, forwarded JWT claims) replaced,
//! `X-Request-Id`, `Via`, the target's `Host`, the route's rewrite and
//! header rules. Downstream: hop-by-hop stripped, `X-Request-Id`,
//! `RateLimit-*`, the route's response header rules.

use super::ctx::RequestCtx;
use super::edge;
use super::hygiene::{self, HeaderEdit};
use super::respond::push_u64;
use crate::snapshot::{HeaderOps, PathRewrite};
use http::header::{self, HeaderName, HeaderValue};
use pingora_error::{ErrorType, OrErr, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

// Header names: `HeaderName`s to look up and remove, `&'static str`s to
// insert (Pingora keeps the case of an inserted name; a `&'static str` is
// taken as is, while a non-standard `HeaderName` is copied into a new buffer).
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_CONSUMER: HeaderName = HeaderName::from_static("x-consumer-name");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const H_X_FORWARDED_FOR: &str = "x-forwarded-for";
const H_X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const H_X_FORWARDED_HOST: &str = "x-forwarded-host";
const H_X_REQUEST_ID: &str = "x-request-id";
const H_X_CONSUMER: &str = "x-consumer-name";
const H_X_REAL_IP: &str = "x-real-ip";
const EMPTY: HeaderValue = HeaderValue::from_static("");

/// Prepares the request the upstream receives.
pub fn upstream_request(
    session: &Session,
    upstream_request: &mut RequestHeader,
    ctx: &RequestCtx,
) -> Result<()> {
    let (Some(route), snap) = (ctx.route.as_ref(), &ctx.snap) else {
        return Ok(());
    };
    hygiene::strip_hop_by_hop(upstream_request, ctx.websocket, false);
    let peer_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical());
    let trusted = peer_ip.is_some_and(|ip| snap.is_trusted(&ip));
    let peer_value = peer_ip.map_or(EMPTY, |ip| edge::ip_header_value(session, ip));
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
            HeaderValue::from_static(if ctx.client.tls { "https" } else { "http" }),
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
    let real_ip = if peer_ip == Some(ctx.client.ip) {
        peer_value
    } else {
        edge::ip_header_value(session, ctx.client.ip)
    };
    upstream_request.insert_header(H_X_REAL_IP, real_ip)?;
    upstream_request.remove_header(&FORWARDED);
    // Gateway-owned headers: never trust a client's copy.
    upstream_request.remove_header(&X_CONSUMER);
    if let Some(c) = &ctx.identity.consumer {
        upstream_request.insert_header(H_X_CONSUMER, c.as_ref())?;
    }
    if let Some(v) = &snap.jwt {
        for h in v.forwarded_headers() {
            upstream_request.remove_header(h);
        }
    }
    if let Some(j) = &ctx.identity.jwt {
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
    if let Some(i) = ctx.upstream.current {
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

/// Prepares the response head the client receives.
pub fn downstream_response(resp: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    let switching = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
    hygiene::strip_hop_by_hop(resp, switching && ctx.websocket, true);
    resp.insert_header(H_X_REQUEST_ID, ctx.request_id.clone())?;
    if let Some((d, rule)) = &ctx.admission.rate {
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

fn apply_header_ops<H: HeaderEdit>(head: &mut H, ops: &HeaderOps) {
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
