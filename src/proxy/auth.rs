//! Authentication: who the client is, or why not.
//!
//! [`authenticate`] is the one entry: it looks at the route's `auth` mode,
//! runs the matching method (API key, JWT bearer token) and returns the
//! client's [`Identity`] or the [`Reject`] to send. Failures count against
//! the address's failed-authentication budget (`security.auth.failureLimit`)
//! and are reported as `auth.failure` events, coalesced.
//!
//! Adding a method: a variant of `config::RouteAuth`, a function here that
//! turns the request into `Result<Identity, Failure>`, and one arm in
//! [`authenticate`]'s `match`.

use super::ctx::{Client, Identity};
use super::respond::Reject;
use crate::config::RouteAuth;
use crate::events::{Event, Gate};
use crate::keys::KeyRejection;
use crate::snapshot::{Route, Snapshot};
use http::header;
use pingora_http::RequestHeader;

/// Process-wide cap on `auth.failure` events per second.
static AUTH_EVENTS: Gate = Gate::new(10);

/// A failed authentication: what the client is told, and the short reason
/// reported in the event.
struct Failure {
    reject: Reject,
    reason: &'static str,
}

/// Authenticates a request for `route`. Routes without authentication get
/// an empty identity without looking at any header.
pub fn authenticate(
    snap: &Snapshot,
    route: &Route,
    req: &RequestHeader,
    client: &Client,
    request_id: &str,
) -> Result<Identity, Reject> {
    if route.auth == RouteAuth::None {
        return Ok(Identity::default());
    }
    if let Some(reject) = budget_spent(snap, client) {
        return Err(reject);
    }
    let now = crate::keys::unix_now();
    let verdict = match route.auth {
        RouteAuth::None => Ok(Identity::default()),
        RouteAuth::Jwt => bearer_token(snap, req, now),
        RouteAuth::Required | RouteAuth::Optional => api_key(snap, route, req, now),
    };
    verdict.map_err(|failure| {
        failed(snap, route, client, request_id, failure.reason);
        failure.reject
    })
}

/// `auth: jwt`: a valid bearer token (`security.jwt`).
fn bearer_token(snap: &Snapshot, req: &RequestHeader, now: u64) -> Result<Identity, Failure> {
    let verdict = match (&snap.jwt, req.headers.get(header::AUTHORIZATION)) {
        (Some(v), Some(h)) => v.verify(h.as_bytes(), now).map_err(|r| r.0),
        (Some(_), None) => Err("a bearer token is required".to_string()),
        (None, _) => Err("JWT authentication is not configured".to_string()),
    };
    match verdict {
        Ok(verified) => Ok(Identity {
            consumer: Some(verified.subject.clone()),
            jwt: Some(verified),
        }),
        Err(why) => Err(Failure {
            reject: Reject::Unauthorized {
                challenge: format!("Bearer error=\"invalid_token\", error_description=\"{why}\"")
                    .into(),
                message: why.into(),
            },
            reason: "jwt",
        }),
    }
}

/// `auth: required | optional`: an API key in the configured header.
fn api_key(
    snap: &Snapshot,
    route: &Route,
    req: &RequestHeader,
    now: u64,
) -> Result<Identity, Failure> {
    let presented = snap.keys.header.as_ref().and_then(|h| req.headers.get(h));
    let Some(key) = presented else {
        if route.auth == RouteAuth::Optional {
            return Ok(Identity::default());
        }
        return Err(Failure {
            reject: Reject::Unauthorized {
                message: "an API key is required".into(),
                challenge: "ApiKey".into(),
            },
            reason: "missing",
        });
    };
    match snap
        .keys
        .verify(key.as_bytes(), &route.id, &route.scopes, now)
    {
        Ok(k) => Ok(Identity {
            consumer: Some(k.name.clone()),
            jwt: None,
        }),
        Err(KeyRejection::Unauthorized(why)) => Err(Failure {
            reject: Reject::Unauthorized {
                message: why.into(),
                challenge: "ApiKey".into(),
            },
            reason: why,
        }),
        Err(KeyRejection::Forbidden(why)) => Err(Failure {
            reject: Reject::Forbidden(why.into()),
            reason: why,
        }),
    }
}

/// 429 when the client's address has used up its failed-authentication
/// budget (checked before any credential is looked at).
fn budget_spent(snap: &Snapshot, client: &Client) -> Option<Reject> {
    let budget = snap.auth_failures.as_ref()?;
    if !budget.exhausted(client.limit_ip) {
        return None;
    }
    Some(Reject::TooManyAuthFailures {
        retry_after: budget.window.as_secs().max(1),
    })
}

/// Counts a failed authentication against the address's budget and
/// reports it. Per address and budget window, only the first failure and
/// the one that exhausts the budget are reported, and at most
/// [`AUTH_EVENTS`] per second in all (the next event says how many were
/// left out): a brute force cannot flood logs, NATS or webhooks.
fn failed(snap: &Snapshot, route: &Route, client: &Client, request_id: &str, reason: &str) {
    route.metrics.auth_failures.inc();
    let (failures, notable) = match &snap.auth_failures {
        Some(budget) => {
            let n = budget.record(client.limit_ip);
            (Some(n), n == 1 || n == budget.max)
        }
        None => (None, true),
    };
    if !notable {
        return;
    }
    if let Some(left_out) = AUTH_EVENTS.pass(crate::keys::unix_now()) {
        crate::events::emit(
            Event::AuthFailure,
            serde_json::json!({"route": &*route.id, "reason": reason, "clientIp": client.ip.to_string(), "requestId": request_id, "failuresInWindow": failures, "eventsLeftOut": left_out}),
        );
    }
}
