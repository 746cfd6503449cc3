//! Every response the gateway itself writes: status, headers and one JSON body
//! shape `{"error": code, "message": text, "status": n, "requestId": id}`,
//! and the single mapping from proxy errors to statuses (timeout → 504,
//! refused/reset/bad response → 502, our own rejections as they say).

use super::RequestCtx;
use bytes::Bytes;
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// A gateway decision to answer without (or instead of) the upstream.
#[derive(Debug, Clone)]
pub struct GatewayReply {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub headers: Vec<(&'static str, String)>,
    /// Close the downstream connection afterwards.
    pub close: bool,
}

impl GatewayReply {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        GatewayReply {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
            close: false,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn closing(mut self, close: bool) -> Self {
        self.close = close;
        self
    }
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

/// Writes a gateway reply (JSON) to the client.
pub async fn send(
    session: &mut Session,
    ctx: &mut RequestCtx,
    reply: GatewayReply,
) -> pingora_error::Result<()> {
    ctx.status = reply.status;
    ctx.error_code = Some(reply.code);
    let body = error_body(reply.status, reply.code, &reply.message, ctx.request_id());
    let mut resp = ResponseHeader::build(reply.status, Some(6))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("x-request-id", ctx.request_id.clone())?;
    resp.insert_header("cache-control", "no-store")?;
    for (k, v) in reply.headers {
        resp.insert_header(k, v)?;
    }
    if reply.close {
        resp.insert_header("connection", "close")?;
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == http::Method::HEAD;
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

/// Maps a proxy failure to the reply the client gets.
pub fn reply_for_error(e: &Error) -> Option<GatewayReply> {
    use ErrorType::*;
    let etype = e.etype();
    if let HTTPStatus(code) = etype {
        let (code_name, msg) = match *code {
            413 => (
                "payload_too_large",
                "request body is larger than this route accepts",
            ),
            504 => ("upstream_timeout", "the upstream did not answer in time"),
            408 => (
                "request_timeout",
                "the request body was not received in time",
            ),
            400 => ("bad_request", "malformed request"),
            _ => ("error", "request failed"),
        };
        return Some(GatewayReply::new(*code, code_name, msg));
    }
    match e.esource() {
        ErrorSource::Upstream => Some(match etype {
            ConnectTimedout => GatewayReply::new(
                504,
                "upstream_timeout",
                "connecting to the upstream timed out",
            ),
            ReadTimedout | WriteTimedout => GatewayReply::new(
                504,
                "upstream_timeout",
                "the upstream did not answer in time",
            ),
            ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure
            | TLSHandshakeFailure | TLSHandshakeTimedout => GatewayReply::new(
                502,
                "upstream_unavailable",
                "could not connect to the upstream",
            ),
            _ => GatewayReply::new(
                502,
                "bad_gateway",
                "the upstream connection failed or sent an invalid response",
            ),
        }),
        ErrorSource::Downstream => match etype {
            WriteError | ReadError | ConnectionClosed => None,
            ReadTimedout => Some(
                GatewayReply::new(
                    408,
                    "request_timeout",
                    "the request body was not received in time",
                )
                .closing(true),
            ),
            _ => Some(GatewayReply::new(400, "bad_request", "malformed request").closing(true)),
        },
        ErrorSource::Internal | ErrorSource::Unset => match etype {
            ConnectTimedout => Some(GatewayReply::new(
                504,
                "upstream_timeout",
                "connecting to the upstream timed out",
            )),
            ReadTimedout | WriteTimedout => Some(GatewayReply::new(
                504,
                "upstream_timeout",
                "the upstream did not answer in time",
            )),
            ConnectRefused | ConnectNoRoute | ConnectError => Some(GatewayReply::new(
                502,
                "upstream_unavailable",
                "could not connect to the upstream",
            )),
            _ => Some(GatewayReply::new(
                500,
                "internal_error",
                "the gateway failed to process the request",
            )),
        },
    }
}

/// Whether a reply code (from [`reply_for_error`]) puts the failure on the
/// upstream (connect error, timeout, broken exchange).
pub fn blames_upstream(code: &str) -> bool {
    matches!(
        code,
        "upstream_timeout" | "upstream_unavailable" | "bad_gateway"
    )
}

/// Whether a proxy error is the upstream's doing, by the same mapping as
/// [`reply_for_error`]. A client that went away or sent a bad, slow or
/// oversized request is not; neither is an internal error.
pub fn upstream_caused(e: &Error) -> bool {
    reply_for_error(e).is_some_and(|r| blames_upstream(r.code))
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
        let t = Error::new_up(ErrorType::ReadTimedout);
        assert_eq!(reply_for_error(&t).unwrap().status, 504);
        let r = Error::new_up(ErrorType::ConnectRefused);
        assert_eq!(reply_for_error(&r).unwrap().status, 502);
        let c = Error::new_up(ErrorType::ConnectionClosed);
        assert_eq!(reply_for_error(&c).unwrap().status, 502);
        let gone = Error::new_down(ErrorType::ConnectionClosed);
        assert!(reply_for_error(&gone).is_none());
        let big = Error::new(ErrorType::HTTPStatus(413));
        assert_eq!(reply_for_error(&big).unwrap().status, 413);
    }
}
