//! Browser sessions: `POST /api/session` exchanges the admin token for a
//! session cookie, because `EventSource` and plain page loads cannot send
//! an `Authorization` header.
//!
//! The cookie (`flexgate_session`) is random (256 bits), `HttpOnly` (no
//! script can read it), `SameSite=Strict` (never sent on cross-site
//! requests), `Path=/api`, valid 12 hours; `Secure` is set when the admin
//! listener itself is TLS — never from a client header such as
//! `X-Forwarded-Proto`, which any client can send.
//! The sign-in body is at most [`MAX_SESSION_BODY`] bytes.
//! Only its SHA-256 is kept, in memory: a restart ends every session.
//! CSRF: besides `SameSite=Strict`, a cookie-authenticated write is refused
//! (403) when `Sec-Fetch-Site` says cross-site or `Origin` names another
//! host, and writes only take JSON/YAML bodies, which a cross-site form
//! cannot send.

use super::api::{media_type, read_body_limited, ApiError};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;

/// Cookie name.
pub const COOKIE: &str = "flexgate_session";
/// Session lifetime.
pub const TTL_SECS: u64 = 12 * 3600;
/// Largest `POST /api/session` body.
pub const MAX_SESSION_BODY: usize = 1024;
/// Sessions kept at most (the oldest is dropped beyond).
const MAX_SESSIONS: usize = 10_000;

/// Live sessions by SHA-256 of the cookie value → expiry (Unix seconds).
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<[u8; 32], u64>>,
}

impl Sessions {
    /// A new session: (cookie value, expiry).
    pub fn create(&self) -> (String, u64) {
        use ring::rand::SecureRandom;
        let mut raw = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut raw)
            .expect("system randomness");
        let value = crate::keys::to_hex(&raw);
        let now = crate::clock::unix_now();
        let expires = now + TTL_SECS;
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|_, exp| *exp > now);
        if live.len() >= MAX_SESSIONS {
            if let Some(oldest) = live.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k) {
                live.remove(&oldest);
            }
        }
        live.insert(crate::keys::digest(value.as_bytes()), expires);
        (value, expires)
    }

    /// Whether `value` is a live session.
    pub fn check(&self, value: &str) -> bool {
        let d = crate::keys::digest(value.as_bytes());
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.get(&d)
            .is_some_and(|exp| *exp > crate::clock::unix_now())
    }

    /// Ends a session.
    pub fn remove(&self, value: &str) {
        let d = crate::keys::digest(value.as_bytes());
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&d);
    }
}

/// The session cookie of a request, if any.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// CSRF check of a cookie-authenticated request (see the module docs).
pub fn csrf_check(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let refuse = |why: &str| {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site_request",
            format!("refused a cookie-authenticated write: {why}"),
        ))
    };
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return refuse("Sec-Fetch-Site is not same-origin");
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let origin_host = origin.split_once("://").map_or("", |(_, h)| h);
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if origin_host != host {
            return refuse("Origin is another site");
        }
    }
    Ok(())
}

/// `POST /api/session` body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// The admin token (or send it as `Authorization: Bearer …`).
    pub token: String,
}

/// A created session.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionCreated {
    /// Unix time the session ends.
    pub expires_at: u64,
}

/// The token presented to `POST /api/session`: the bearer header, or the
/// JSON body's `token`.
pub async fn presented_token(req: axum::extract::Request) -> Result<String, ApiError> {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let has_body = media_type(req.headers()).is_some()
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if let (Some(b), false) = (&bearer, has_body) {
        return Ok(b.clone());
    }
    if media_type(req.headers()).as_deref() != Some("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send {\"token\": \"…\"} as application/json, or Authorization: Bearer <token>",
        ));
    }
    let body = read_body_limited(req, MAX_SESSION_BODY).await?;
    // `null` (or an empty body) leaves the token to the bearer header.
    let r: Option<SessionRequest> = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        super::api::parse_json(&body)?
    };
    r.map(|r| r.token).or(bearer).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send {\"token\": \"…\"} or Authorization: Bearer <token>",
        )
    })
}

/// `Set-Cookie` for a new session (or, with `None`, one that clears it).
pub fn set_cookie(value: Option<&str>, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = match value {
        Some(v) => format!(
            "{COOKIE}={v}; Path=/api; HttpOnly; SameSite=Strict; Max-Age={TTL_SECS}{secure}"
        ),
        None => format!("{COOKIE}=; Path=/api; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&text).expect("cookie is ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_live_and_end() {
        let s = Sessions::default();
        let (v, exp) = s.create();
        assert_eq!(v.len(), 64);
        assert!(exp > crate::clock::unix_now());
        assert!(s.check(&v));
        assert!(!s.check("nope"));
        s.remove(&v);
        assert!(!s.check(&v));
    }

    #[test]
    fn csrf_refuses_cross_site_writes_only() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9180"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(csrf_check(&Method::GET, &h).is_ok());
        assert!(csrf_check(&Method::POST, &h).is_err());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9180"),
        );
        assert!(csrf_check(&Method::POST, &h).is_ok());
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(csrf_check(&Method::DELETE, &h).is_err());
    }
}
