//! Every response the gateway itself writes.
//!
//! A refusal is a [`Reject`]: one variant per reason, and one mapping here to
//! its status, code, extra headers and JSON body
//! `{"error": code, "message": text, "status": n, "requestId": id}`.
//! The proxy phases, the edge loop's connection refusal and the mapping from
//! proxy errors (timeout → 504, refused/reset/bad response → 502) all go
//! through it. [`Reject::blames_upstream`] tells the circuit breaker whose
//! fault a refusal was.

use super::ctx::{Outcome, RequestCtx};
use crate::limit::LimitRule;
use bytes::Bytes;
use http::Method;
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::borrow::Cow;
use std::sync::Arc;

/// Methods the gateway routes (the `Allow` of a refused method).
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS";

/// Why the gateway answers a request itself.
#[derive(Clone)]
pub enum Reject {
    /// 400 for a request whose framing is still sound (the connection may
    /// be reused).
    BadRequest(Cow<'static, str>),
    /// 400 for a request whose framing cannot be trusted: the connection
    /// closes.
    Malformed(&'static str),
    /// 404: no route matches.
    NotFound,
    /// 405, with the methods the path accepts.
    MethodNotAllowed {
        method: Method,
        allow: Cow<'static, str>,
    },
    /// 401 with the challenge of the authentication the route asks for.
    Unauthorized {
        message: Cow<'static, str>,
        challenge: Cow<'static, str>,
    },
    /// 403.
    Forbidden(Cow<'static, str>),
    /// 408: the request body did not arrive in time.
    RequestTimeout,
    /// 413: the declared body is over the route's limit (`None`: found while
    /// streaming it).
    PayloadTooLarge { max: Option<u64> },
    /// 414.
    UriTooLong,
    /// 431 (too many header fields, or too many bytes of them).
    HeadersTooLarge(&'static str),
    /// 429 from a rate limit.
    RateLimited {
        rule: Arc<LimitRule>,
        retry_after: u64,
    },
    /// 429: this address has used up its failed-authentication budget.
    TooManyAuthFailures { retry_after: u64 },
    /// 501: an unsupported transfer coding.
    NotImplemented(&'static str),
    /// 503: the gateway (`route: false`) or the route is at its in-flight cap.
    Overloaded { route: bool },
    /// 503 before any request is read: a connection cap.
    TooManyConnections(&'static str),
    /// 503: the upstream's circuit breaker is open.
    CircuitOpen {
        upstream: Arc<str>,
        retry_after: u64,
    },
    /// 508: the request already passed through this gateway.
    LoopDetected,
    /// 502: no connection to the upstream could be made.
    UpstreamUnavailable,
    /// 502: the upstream exchange broke or the answer was invalid.
    BadGateway,
    /// 504 (connecting, or waiting for the answer).
    UpstreamTimeout(&'static str),
    /// 500.
    Internal,
}

impl std::fmt::Debug for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status(), self.code(), self.message())
    }
}

impl Reject {
    pub fn status(&self) -> u16 {
        match self {
            Reject::BadRequest(_) | Reject::Malformed(_) => 400,
            Reject::NotFound => 404,
            Reject::MethodNotAllowed { .. } => 405,
            Reject::Unauthorized { .. } => 401,
            Reject::Forbidden(_) => 403,
            Reject::RequestTimeout => 408,
            Reject::PayloadTooLarge { .. } => 413,
            Reject::UriTooLong => 414,
            Reject::HeadersTooLarge(_) => 431,
            Reject::RateLimited { .. } | Reject::TooManyAuthFailures { .. } => 429,
            Reject::NotImplemented(_) => 501,
            Reject::Overloaded { .. }
            | Reject::TooManyConnections(_)
            | Reject::CircuitOpen { .. } => 503,
            Reject::LoopDetected => 508,
            Reject::UpstreamUnavailable | Reject::BadGateway => 502,
            Reject::UpstreamTimeout(_) => 504,
            Reject::Internal => 500,
        }
    }

    /// The machine-readable `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            Reject::BadRequest(_) | Reject::Malformed(_) => "bad_request",
            Reject::NotFound => "no_route",
            Reject::MethodNotAllowed { .. } => "method_not_allowed",
            Reject::Unauthorized { .. } => "unauthorized",
            Reject::Forbidden(_) => "forbidden",
            Reject::RequestTimeout => "request_timeout",
            Reject::PayloadTooLarge { .. } => "payload_too_large",
            Reject::UriTooLong => "uri_too_long",
            Reject::HeadersTooLarge(_) => "header_fields_too_large",
            Reject::RateLimited { .. } => "rate_limited",
            Reject::TooManyAuthFailures { .. } => "too_many_auth_failures",
            Reject::NotImplemented(_) => "not_implemented",
            Reject::Overloaded { .. } => "overloaded",
            Reject::TooManyConnections(_) => "too_many_connections",
            Reject::CircuitOpen { .. } => "circuit_open",
            Reject::LoopDetected => "loop_detected",
            Reject::UpstreamUnavailable => "upstream_unavailable",
            Reject::BadGateway => "bad_gateway",
            Reject::UpstreamTimeout(_) => "upstream_timeout",
            Reject::Internal => "internal_error",
        }
    }

    /// The human-readable `message` field.
    pub fn message(&self) -> Cow<'_, str> {
        match self {
            Reject::BadRequest(m) | Reject::Forbidden(m) => Cow::Borrowed(m),
            Reject::Unauthorized { message, .. } => Cow::Borrowed(message),
            Reject::Malformed(m)
            | Reject::HeadersTooLarge(m)
            | Reject::NotImplemented(m)
            | Reject::TooManyConnections(m)
            | Reject::UpstreamTimeout(m) => Cow::Borrowed(m),
            Reject::NotFound => "no route matches this request".into(),
            Reject::MethodNotAllowed { method, .. } if method == Method::CONNECT => {
                "CONNECT is not supported".into()
            }
            Reject::MethodNotAllowed { method, .. } => {
                format!("{method} is not allowed on this path").into()
            }
            Reject::RequestTimeout => "the request body was not received in time".into(),
            Reject::PayloadTooLarge { max: Some(max) } => {
                format!("request body is larger than {max} bytes").into()
            }
            Reject::PayloadTooLarge { max: None } => {
                "request body is larger than this route accepts".into()
            }
            Reject::UriTooLong => "request target is too long".into(),
            Reject::RateLimited { rule, .. } => rule
                .message
                .as_deref()
                .unwrap_or("too many requests")
                .into(),
            Reject::TooManyAuthFailures { .. } => {
                "too many failed authentications from this address; try again later".into()
            }
            Reject::Overloaded { route: true } => "this route is at its concurrency limit".into(),
            Reject::Overloaded { route: false } => "the gateway is overloaded".into(),
            Reject::CircuitOpen { upstream, .. } => {
                format!("upstream {upstream} is failing; not contacted").into()
            }
            Reject::LoopDetected => "request already passed through this gateway".into(),
            Reject::UpstreamUnavailable => "could not connect to the upstream".into(),
            Reject::BadGateway => {
                "the upstream connection failed or sent an invalid response".into()
            }
            Reject::Internal => "the gateway failed to process the request".into(),
        }
    }

    /// Headers beyond the common ones, in order.
    pub fn extra_headers(&self, mut add: impl FnMut(&'static str, Cow<'_, str>)) {
        match self {
            Reject::MethodNotAllowed { allow, .. } => add("allow", Cow::Borrowed(allow)),
            Reject::Unauthorized { challenge, .. } => {
                add("www-authenticate", Cow::Borrowed(challenge))
            }
            Reject::RateLimited { rule, retry_after } => {
                add("retry-after", retry_after.to_string().into());
                add("ratelimit-policy", Cow::Borrowed(&rule.policy));
                add(
                    "ratelimit",
                    format!("limit={}, remaining=0, reset={retry_after}", rule.max).into(),
                );
            }
            Reject::TooManyAuthFailures { retry_after }
            | Reject::CircuitOpen { retry_after, .. } => {
                add("retry-after", retry_after.to_string().into())
            }
            Reject::Overloaded { .. } | Reject::TooManyConnections(_) => {
                add("retry-after", "1".into())
            }
            _ => {}
        }
    }

    /// True when the connection cannot be reused after this answer (the
    /// request's framing is unknown or the client is being pushed away).
    pub fn closes(&self) -> bool {
        if let Reject::MethodNotAllowed { method, .. } = self {
            return method == Method::CONNECT;
        }
        matches!(
            self,
            Reject::Malformed(_)
                | Reject::UriTooLong
                | Reject::HeadersTooLarge(_)
                | Reject::NotImplemented(_)
                | Reject::LoopDetected
                | Reject::PayloadTooLarge { .. }
                | Reject::TooManyConnections(_)
        )
    }

    /// True when the refusal puts the failure on the upstream (connect
    /// error, timeout, broken exchange): what the circuit breaker counts.
    pub fn blames_upstream(&self) -> bool {
        matches!(
            self,
            Reject::UpstreamUnavailable | Reject::BadGateway | Reject::UpstreamTimeout(_)
        )
    }

    /// The refusal for a proxy error, `None` when there is nobody to answer
    /// (the client went away).
    pub fn for_error(e: &Error) -> Option<Reject> {
        use ErrorType::*;
        let etype = e.etype();
        if let HTTPStatus(code) = etype {
            return Some(match *code {
                413 => Reject::PayloadTooLarge { max: None },
                504 => Reject::UpstreamTimeout("the upstream did not answer in time"),
                408 => Reject::RequestTimeout,
                400 => Reject::Malformed("malformed request"),
                _ => Reject::Internal,
            });
        }
        let upstream_side = match e.esource() {
            ErrorSource::Upstream => true,
            ErrorSource::Downstream => {
                return match etype {
                    WriteError | ReadError | ConnectionClosed => None,
                    ReadTimedout => Some(Reject::RequestTimeout),
                    _ => Some(Reject::Malformed("malformed request")),
                }
            }
            ErrorSource::Internal | ErrorSource::Unset => false,
        };
        Some(match etype {
            ConnectTimedout => Reject::UpstreamTimeout("connecting to the upstream timed out"),
            ReadTimedout | WriteTimedout => {
                Reject::UpstreamTimeout("the upstream did not answer in time")
            }
            ConnectRefused | ConnectNoRoute | ConnectError => Reject::UpstreamUnavailable,
            ConnectProxyFailure | TLSHandshakeFailure | TLSHandshakeTimedout if upstream_side => {
                Reject::UpstreamUnavailable
            }
            _ if upstream_side => Reject::BadGateway,
            _ => Reject::Internal,
        })
    }

    /// The whole answer as raw HTTP/1.1 bytes, for the edge loop, which
    /// refuses a connection before any session exists.
    pub fn raw_response(&self) -> Vec<u8> {
        let body = error_body(self.status(), self.code(), &self.message(), "");
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.status(),
            http::StatusCode::from_u16(self.status())
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or(""),
            body.len()
        );
        self.extra_headers(|name, value| {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(&value);
            head.push_str("\r\n");
        });
        head.push_str("Connection: close\r\n\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    }
}

/// Whether a proxy error is the upstream's doing. A client that went away
/// or sent a bad, slow or oversized request is not; neither is an internal
/// error.
pub fn upstream_caused(e: &Error) -> bool {
    Reject::for_error(e).is_some_and(|r| r.blames_upstream())
}

fn json_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

/// The JSON error body.
pub fn error_body(status: u16, code: &str, message: &str, request_id: &str) -> String {
    let mut b = String::with_capacity(96 + message.len());
    b.push_str("{\"error\":\"");
    json_escape(code, &mut b);
    b.push_str("\",\"message\":\"");
    json_escape(message, &mut b);
    b.push_str("\",\"status\":");
    b.push_str(&status.to_string());
    b.push_str(",\"requestId\":\"");
    json_escape(request_id, &mut b);
    b.push_str("\"}");
    b
}

/// Writes a refusal to the client. `close` forces `Connection: close` even
/// when the refusal itself would keep the connection (an unread body).
pub async fn send_reject(
    session: &mut Session,
    ctx: &mut RequestCtx,
    reject: &Reject,
    close: bool,
) -> pingora_error::Result<()> {
    let status = reject.status();
    ctx.outcome = Outcome {
        status,
        code: Some(reject.code()),
        upstream_fault: reject.blames_upstream(),
    };
    let body = error_body(status, reject.code(), &reject.message(), ctx.request_id());
    let mut resp = ResponseHeader::build(status, Some(6))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("x-request-id", ctx.request_id.clone())?;
    resp.insert_header("cache-control", "no-store")?;
    let mut bad_header = None;
    reject.extra_headers(|name, value| {
        if let Err(e) = resp.insert_header(name, value.as_ref()) {
            bad_header = Some(e);
        }
    });
    if let Some(e) = bad_header {
        return Err(e);
    }
    if close || reject.closes() {
        resp.insert_header("connection", "close")?;
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
    }
    Ok(())
}

/// Writes a small JSON answer of the gateway's own that is not a refusal
/// (the health probes).
pub async fn send_json(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    body: String,
) -> pingora_error::Result<()> {
    ctx.outcome.status = status;
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("x-request-id", ctx.request_id.clone())?;
    resp.insert_header("cache-control", "no-store")?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

/// Answers `OPTIONS *` (RFC 9110 §9.3.7): the methods, no body.
pub async fn send_options_asterisk(
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> pingora_error::Result<()> {
    ctx.outcome.status = 200;
    let mut resp = ResponseHeader::build(200, Some(3))?;
    resp.insert_header("allow", ALLOWED_METHODS)?;
    resp.insert_header("content-length", "0")?;
    resp.insert_header("x-request-id", ctx.request_id.clone())?;
    session.write_response_header(Box::new(resp), true).await
}

/// Appends `n` in decimal (no formatting machinery on the request path).
pub fn push_u64(out: &mut String, mut n: u64) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_escaped_json() {
        let b = error_body(502, "bad_gateway", "say \"hi\"\n", "abc");
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["error"], "bad_gateway");
        assert_eq!(v["message"], "say \"hi\"\n");
        assert_eq!(v["status"], 502);
        assert_eq!(v["requestId"], "abc");
    }

    #[test]
    fn error_mapping() {
        let status = |e: Error| Reject::for_error(&e).map(|r| r.status());
        assert_eq!(status(*Error::new_up(ErrorType::ReadTimedout)), Some(504));
        assert_eq!(status(*Error::new_up(ErrorType::ConnectRefused)), Some(502));
        assert_eq!(
            status(*Error::new_up(ErrorType::ConnectionClosed)),
            Some(502)
        );
        assert_eq!(status(*Error::new_down(ErrorType::ConnectionClosed)), None);
        assert_eq!(status(*Error::new(ErrorType::HTTPStatus(413))), Some(413));
        assert_eq!(status(*Error::new(ErrorType::InternalError)), Some(500));
        assert_eq!(
            status(*Error::new(ErrorType::ConnectRefused)),
            Some(502),
            "an internal connect error is still the upstream's"
        );
    }

    #[test]
    fn only_upstream_failures_blame_the_upstream() {
        assert!(Reject::BadGateway.blames_upstream());
        assert!(Reject::UpstreamTimeout("t").blames_upstream());
        assert!(Reject::UpstreamUnavailable.blames_upstream());
        assert!(!Reject::RequestTimeout.blames_upstream());
        assert!(!Reject::Internal.blames_upstream());
        assert!(!Reject::PayloadTooLarge { max: None }.blames_upstream());
        assert!(!Reject::NotFound.blames_upstream());
    }

    #[test]
    fn connection_refusal_is_a_complete_response() {
        let raw = Reject::TooManyConnections("too many connections from this address");
        let text = String::from_utf8(raw.raw_response()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(head.contains("\r\nRetry-After: 1") || head.contains("\r\nretry-after: 1"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "too_many_connections");
        assert_eq!(v["status"], 503);
    }

    #[test]
    fn rate_limited_headers() {
        let rule = LimitRule::new(
            "global".into(),
            10,
            std::time::Duration::from_secs(60),
            crate::limit::LimitBy::Ip,
            None,
        );
        let r = Reject::RateLimited {
            rule: Arc::new(rule),
            retry_after: 7,
        };
        let mut seen = Vec::new();
        r.extra_headers(|n, v| seen.push((n, v.into_owned())));
        assert_eq!(
            seen,
            vec![
                ("retry-after", "7".to_string()),
                ("ratelimit-policy", "10;w=60".to_string()),
                ("ratelimit", "limit=10, remaining=0, reset=7".to_string()),
            ]
        );
        assert_eq!(r.message(), "too many requests");
    }
}
