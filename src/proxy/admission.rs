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
            if decision.first_over {
                crate::events::emit(
                    Event::RateLimitExceeded,
                    serde_json::json!({"rule": rule.id, "route": &*route.id, "key": rule.key_text(ip, consumer)}),
                );
            }
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
