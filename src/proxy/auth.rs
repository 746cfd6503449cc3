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
use crate::events::Event;
use crate::keys::KeyRejection;
use crate::snapshot::{Route, Snapshot};
use http::header;
use pingora_http::RequestHeader;

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
    let now = crate::clock::unix_now();
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
///
/// The challenge follows RFC 6750 §3: a request without a bearer token gets
/// a plain `Bearer` challenge; a refused token gets `error="invalid_token"`
/// with the reason, quotes and backslashes replaced so the header stays a
/// valid quoted string.
fn bearer_token(snap: &Snapshot, req: &RequestHeader, now: u64) -> Result<Identity, Failure> {
    let Some(verifier) = &snap.jwt else {
        return Err(invalid_token("JWT authentication is not configured".into()));
    };
    let presented = req
        .headers
        .get(header::AUTHORIZATION)
        .filter(|h| h.as_bytes().len() > 7 && h.as_bytes()[..7].eq_ignore_ascii_case(b"bearer "));
    let Some(authorization) = presented else {
        return Err(Failure {
            reject: Reject::Unauthorized {
                message: "a bearer token is required".into(),
                challenge: "Bearer".into(),
            },
            reason: "jwt",
        });
    };
    match verifier.verify(authorization.as_bytes(), now) {
        Ok(verified) => Ok(Identity {
            consumer: Some(verified.subject.clone()),
            jwt: Some(verified),
        }),
        Err(why) => Err(invalid_token(why.0)),
    }
}

/// The 401 for a token that was presented and refused.
fn invalid_token(why: String) -> Failure {
    let description: String = why
        .chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    Failure {
        reject: Reject::Unauthorized {
            challenge: format!(
                "Bearer error=\"invalid_token\", error_description=\"{description}\""
            )
            .into(),
            message: why.into(),
        },
        reason: "jwt",
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
/// the one that exhausts the budget are notable; the event bus lets at
/// most a few per second through and counts the rest
/// ([`crate::events::emit_counted`]): a brute force cannot flood logs,
/// NATS or webhooks.
fn failed(snap: &Snapshot, route: &Route, client: &Client, request_id: &str, reason: &str) {
    route.metrics.auth_failures.inc();
    let (failures, notable) = match &snap.auth_failures {
        Some(budget) => {
            let n = budget.record(client.limit_ip);
            (Some(n), n == 1 || n == budget.max)
        }
        None => (None, true),
    };
    crate::events::emit_counted(
        Event::AuthFailure,
        notable,
        || serde_json::json!({"route": &*route.id, "reason": reason, "clientIp": client.ip.to_string(), "requestId": request_id, "failuresInWindow": failures}),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::test_support::{gateway, key_digest, Answer, TestGateway};
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

    const JWT_SECRET: &str = "a-shared-secret-of-32-bytes-long";

    /// Routes of every auth mode; `alice-key` carries scope `read`; bad
    /// credentials from one address are refused after `budget` failures
    /// in an hour.
    fn config(budget: u64) -> TestGateway {
        gateway(&format!(
            r#"upstreams:
  - name: app
    url: "http://127.0.0.1:9"
routes:
  - id: open
    path: /open/*
    upstream: app
  - id: keys
    path: /keys/*
    upstream: app
    auth: required
  - id: admin
    path: /admin/*
    upstream: app
    auth: required
    scopes: [admin]
  - id: maybe
    path: /maybe/*
    upstream: app
    auth: optional
  - id: token
    path: /token/*
    upstream: app
    auth: jwt
security:
  auth:
    failureLimit: {{max: {budget}, windowMs: 3600000}}
    keys:
      - key: "{alice}"
        name: alice
        scopes: [read]
  jwt:
    secret: "{JWT_SECRET}"
    forwardClaims:
      sub: X-User-Id
      email: X-User-Email
"#,
            alice = key_digest("alice-key"),
        ))
    }

    /// `GET path` with extra header lines (each ending in `\r\n`).
    fn get(path: &str, headers: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: api.test\r\n{headers}\r\n")
    }

    /// Authenticates the request; a refusal is written out and returned as
    /// the client reads it.
    async fn auth(t: &TestGateway, ip: &str, raw: &str) -> Result<Identity, Answer> {
        let mut x = t.request(ip, raw).await;
        let verdict = authenticate(
            &t.snap,
            &x.route(),
            x.session.req_header(),
            &x.ctx.client,
            x.ctx.request_id(),
        );
        match verdict {
            Ok(identity) => Ok(identity),
            Err(reject) => Err(x.refused(&t.gw, reject).await),
        }
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        let t = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("token signed");
        format!("Authorization: Bearer {t}\r\n")
    }

    fn consumer(identity: &Identity) -> Option<&str> {
        identity.consumer.as_deref()
    }

    #[tokio::test]
    async fn a_route_without_auth_reads_no_credentials() {
        // One failure would spend this budget.
        let t = config(1);
        let junk = "X-API-Key: not-a-key\r\nAuthorization: Bearer not.a.token\r\n";
        let identity = auth(&t, "10.0.0.1", &get("/open/x", junk)).await.unwrap();
        assert_eq!(consumer(&identity), None);
        assert!(identity.jwt.is_none());
        // Nothing was counted against the address: its valid key still passes.
        let alice = auth(&t, "10.0.0.1", &get("/keys/x", "X-API-Key: alice-key\r\n"))
            .await
            .expect("the budget is untouched");
        assert_eq!(consumer(&alice), Some("alice"));
    }

    #[tokio::test]
    async fn a_required_key_that_is_missing_is_401_with_an_apikey_challenge() {
        let t = config(20);
        let answer = auth(&t, "10.0.0.1", &get("/keys/x", "")).await.unwrap_err();
        assert_eq!(answer.status, 401);
        assert_eq!(answer.code(), "unauthorized");
        assert_eq!(answer.message(), "an API key is required");
        assert_eq!(answer.header("www-authenticate"), Some("ApiKey"));
        assert_eq!(answer.header("x-request-id"), Some("test-request"));
        assert!(!answer.closes(), "a refused GET keeps its connection");
    }

    #[tokio::test]
    async fn a_wrong_key_is_401() {
        let t = config(20);
        let raw = get("/keys/x", "X-API-Key: mallory-key\r\n");
        let answer = auth(&t, "10.0.0.1", &raw).await.unwrap_err();
        assert_eq!(answer.status, 401);
        assert_eq!(answer.code(), "unauthorized");
        assert_eq!(answer.message(), "the API key is not valid");
        assert_eq!(answer.header("www-authenticate"), Some("ApiKey"));
    }

    #[tokio::test]
    async fn a_valid_key_names_its_consumer() {
        let t = config(20);
        let raw = get("/keys/x", "X-API-Key: alice-key\r\n");
        let identity = auth(&t, "10.0.0.1", &raw).await.unwrap();
        assert_eq!(consumer(&identity), Some("alice"));
        assert!(identity.jwt.is_none());
    }

    #[tokio::test]
    async fn a_key_without_the_route_scope_is_403() {
        let t = config(20);
        let raw = get("/admin/x", "X-API-Key: alice-key\r\n");
        let answer = auth(&t, "10.0.0.1", &raw).await.unwrap_err();
        assert_eq!(answer.status, 403);
        assert_eq!(answer.code(), "forbidden");
        assert_eq!(
            answer.message(),
            "the API key lacks a scope this route requires"
        );
        assert_eq!(answer.header("www-authenticate"), None);
    }

    #[tokio::test]
    async fn optional_auth_lets_anonymous_clients_through_and_checks_a_key() {
        let t = config(20);
        let anonymous = auth(&t, "10.0.0.1", &get("/maybe/x", "")).await.unwrap();
        assert_eq!(consumer(&anonymous), None);
        let raw = get("/maybe/x", "X-API-Key: alice-key\r\n");
        let alice = auth(&t, "10.0.0.1", &raw).await.unwrap();
        assert_eq!(consumer(&alice), Some("alice"));
        // A key that is presented must be valid.
        let raw = get("/maybe/x", "X-API-Key: mallory-key\r\n");
        let answer = auth(&t, "10.0.0.1", &raw).await.unwrap_err();
        assert_eq!(answer.status, 401);
        assert_eq!(answer.header("www-authenticate"), Some("ApiKey"));
    }

    #[tokio::test]
    async fn a_valid_jwt_gives_its_subject_and_the_forwarded_claims() {
        let t = config(20);
        let now = crate::clock::unix_now();
        let bearer = token(
            serde_json::json!({"sub": "u-42", "email": "u42@example.com", "exp": now + 600}),
            JWT_SECRET,
        );
        let identity = auth(&t, "10.0.0.1", &get("/token/x", &bearer))
            .await
            .unwrap();
        assert_eq!(consumer(&identity), Some("u-42"));
        let jwt = identity.jwt.expect("the verified token");
        let mut forwarded: Vec<(&str, &str)> = jwt
            .headers
            .iter()
            .map(|(h, v)| (h.as_str(), v.to_str().unwrap()))
            .collect();
        forwarded.sort();
        assert_eq!(
            forwarded,
            vec![("x-user-email", "u42@example.com"), ("x-user-id", "u-42")]
        );
    }

    #[tokio::test]
    async fn refused_jwts_are_401_with_a_bearer_challenge() {
        let t = config(20);
        let now = crate::clock::unix_now();
        let expired = token(
            serde_json::json!({"sub": "u-42", "exp": now - 3600}),
            JWT_SECRET,
        );
        let forged = token(
            serde_json::json!({"sub": "u-42", "exp": now + 600}),
            "another-secret-of-32-bytes-long!",
        );
        // An API key does not stand in for the token on a JWT route.
        let key_only = "X-API-Key: alice-key\r\n".to_string();
        for (headers, message) in [
            (expired, "the token has expired"),
            (forged, "the token signature is invalid"),
            (key_only, "a bearer token is required"),
        ] {
            let raw = get("/token/x", &headers);
            let answer = auth(&t, "10.0.0.1", &raw).await.unwrap_err();
            assert_eq!(answer.status, 401, "{message}");
            assert_eq!(answer.code(), "unauthorized");
            assert_eq!(answer.message(), message);
            let challenge = answer.header("www-authenticate").unwrap_or("");
            if message == "a bearer token is required" {
                // No credentials: a plain challenge, no error code (RFC 6750 §3.1).
                assert_eq!(challenge, "Bearer");
            } else {
                assert!(
                    challenge.starts_with("Bearer error=\"invalid_token\"")
                        && challenge.contains(message),
                    "{message}: challenge {challenge:?}"
                );
            }
        }
    }

    #[test]
    fn a_refusal_reason_with_quotes_keeps_the_challenge_a_valid_quoted_string() {
        let failure = invalid_token("unknown signing key \"k1\" (a\\b)".into());
        let Reject::Unauthorized { challenge, message } = failure.reject else {
            panic!("a 401");
        };
        assert_eq!(
            challenge,
            "Bearer error=\"invalid_token\", error_description=\"unknown signing key 'k1' (a/b)\""
        );
        assert_eq!(
            message, "unknown signing key \"k1\" (a\\b)",
            "the body keeps the reason"
        );
    }

    #[tokio::test]
    async fn a_spent_failure_budget_is_429_even_for_a_valid_key() {
        let t = config(3);
        for _ in 0..3 {
            let raw = get("/keys/x", "X-API-Key: mallory-key\r\n");
            let answer = auth(&t, "10.0.0.1", &raw).await.unwrap_err();
            assert_eq!(answer.status, 401);
        }
        let valid = get("/keys/x", "X-API-Key: alice-key\r\n");
        let answer = auth(&t, "10.0.0.1", &valid).await.unwrap_err();
        assert_eq!(answer.status, 429);
        assert_eq!(answer.code(), "too_many_auth_failures");
        let retry_after: u64 = answer
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("seconds");
        assert!((1..=3600).contains(&retry_after), "{retry_after}");
        // Every authenticated route, whatever the method.
        let now = crate::clock::unix_now();
        let bearer = token(
            serde_json::json!({"sub": "u-42", "exp": now + 600}),
            JWT_SECRET,
        );
        let answer = auth(&t, "10.0.0.1", &get("/token/x", &bearer))
            .await
            .unwrap_err();
        assert_eq!(answer.code(), "too_many_auth_failures");
        // Another address is not affected.
        let alice = auth(&t, "10.0.0.2", &valid).await.unwrap();
        assert_eq!(consumer(&alice), Some("alice"));
    }

    #[tokio::test]
    async fn the_failure_budget_counts_an_ipv6_client_by_its_prefix() {
        let t = config(1);
        let bad = get("/keys/x", "X-API-Key: mallory-key\r\n");
        let valid = get("/keys/x", "X-API-Key: alice-key\r\n");
        let answer = auth(&t, "2001:db8:1:2::10", &bad).await.unwrap_err();
        assert_eq!(answer.status, 401);
        // Same /64 (the default `rateLimit.ipv6Prefix`): the same client.
        let answer = auth(&t, "2001:db8:1:2::99", &valid).await.unwrap_err();
        assert_eq!(answer.code(), "too_many_auth_failures");
        let other = auth(&t, "2001:db8:1:3::10", &valid).await.unwrap();
        assert_eq!(consumer(&other), Some("alice"));
    }
}
