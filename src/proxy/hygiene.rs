//! Request hygiene: the edge checks Pingora does not make, and the header
//! rewriting between client and upstream (hop-by-hop stripping, forwarding
//! headers, `Via`, correlation id).
//!
//! Pure functions over headers: no I/O, unit-tested here, black-box tested in
//! `tests/hygiene.rs`.

use super::respond::{Reject, ALLOWED_METHODS};
use crate::snapshot::{EdgeLimits, Snapshot};
use http::header::{self, HeaderName, HeaderValue};
use http::Method;
use pingora_http::RequestHeader;
use std::net::IpAddr;

/// Checks framing, sizes and header syntax. `None` = acceptable.
pub fn check_request(req: &RequestHeader, limits: &EdgeLimits, via_name: &str) -> Option<Reject> {
    if req.method == Method::CONNECT {
        return Some(Reject::MethodNotAllowed {
            method: Method::CONNECT,
            allow: ALLOWED_METHODS.into(),
        });
    }
    let uri_len = req
        .uri
        .path_and_query()
        .map_or(req.uri.path().len(), |p| p.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return Some(Reject::UriTooLong);
    }
    let headers = &req.headers;
    if headers.len() > limits.max_headers {
        return Some(Reject::HeadersTooLarge("too many request header fields"));
    }
    let mut total = 0usize;
    for (name, value) in headers.iter() {
        total += name.as_str().len() + value.len() + 4;
        if name.as_str().contains('_') {
            return Some(Reject::Malformed("header names with '_' are not accepted"));
        }
    }
    if total > limits.max_header_bytes {
        return Some(Reject::HeadersTooLarge("request headers are too large"));
    }
    if headers.get_all(header::HOST).iter().count() > 1 {
        return Some(Reject::Malformed("duplicate Host header"));
    }
    let te_count = headers.get_all(header::TRANSFER_ENCODING).iter().count();
    let cl_values: Vec<&HeaderValue> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    if te_count > 0 && !cl_values.is_empty() {
        return Some(Reject::Malformed(
            "Content-Length and Transfer-Encoding together",
        ));
    }
    if te_count > 1 {
        return Some(Reject::Malformed("more than one Transfer-Encoding header"));
    }
    if let Some(te) = headers.get(header::TRANSFER_ENCODING) {
        if !te.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Some(Reject::NotImplemented(
                "only Transfer-Encoding: chunked is supported",
            ));
        }
    }
    if cl_values.len() > 1 {
        return Some(Reject::Malformed("more than one Content-Length header"));
    }
    if let Some(cl) = cl_values.first() {
        let b = cl.as_bytes();
        if b.is_empty() || b.len() > 19 || !b.iter().all(u8::is_ascii_digit) {
            return Some(Reject::Malformed("malformed Content-Length"));
        }
    }
    for via in headers.get_all(header::VIA) {
        if via_contains(via.as_bytes(), via_name.as_bytes()) {
            return Some(Reject::LoopDetected);
        }
    }
    None
}

/// True when a raw request head carries a `Content-Length` line. Pingora
/// drops `Content-Length` from the parsed head when `Transfer-Encoding` is
/// present, so the CL+TE conflict can only be seen in the raw bytes.
pub fn raw_head_has_content_length(raw: &[u8]) -> bool {
    raw.split(|&b| b == b'\n')
        .skip(1)
        .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

/// True when a `Via` value lists `name` as a received-by pseudonym.
fn via_contains(via: &[u8], name: &[u8]) -> bool {
    via.split(|&b| b == b',').any(|entry| {
        let mut parts = entry.split(|&b| b == b' ').filter(|p| !p.is_empty());
        let _protocol = parts.next();
        parts.next().is_some_and(|by| by.eq_ignore_ascii_case(name))
    })
}

/// Declared body length, when valid (checked by [`check_request`]).
pub fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|s| s.parse().ok())
}

/// The client address used for limits and logs: the peer, or — when the peer
/// is a trusted proxy — the right-most untrusted address in `X-Forwarded-For`.
/// `peer` is canonical (an IPv4-mapped address as IPv4); so are the
/// addresses taken from the header.
pub fn client_ip(snap: &Snapshot, peer: IpAddr, req: &RequestHeader) -> IpAddr {
    if !snap.is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for v in req.headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(s) = v.to_str() else { break };
        for part in s.rsplit(',') {
            match part.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()) {
                Ok(ip) => {
                    client = ip;
                    if !snap.is_trusted(&ip) {
                        return ip;
                    }
                }
                Err(_) => return client,
            }
        }
    }
    client
}

/// A client-supplied correlation id is kept when it is short and plain.
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// A new random correlation id (32 lowercase hex characters).
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    let random = (u128::from(fastrand::u64(..)) << 64) | u128::from(fastrand::u64(..));
    for (i, c) in text.iter_mut().enumerate() {
        *c = HEX[((random >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&text).expect("hex digits are a valid header value")
}

static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRAILER,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Header editing shared by request and response heads (Pingora keeps a
/// case map beside the `HeaderMap`, so edits go through its methods).
pub trait HeaderEdit {
    fn header_map(&self) -> &http::HeaderMap;
    fn remove(&mut self, name: &HeaderName);
    fn set(&mut self, name: HeaderName, value: HeaderValue);
}

impl HeaderEdit for RequestHeader {
    fn header_map(&self) -> &http::HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        let _ = self.insert_header(name, value);
    }
}

impl HeaderEdit for pingora_http::ResponseHeader {
    fn header_map(&self) -> &http::HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        let _ = self.insert_header(name, value);
    }
}

/// Removes hop-by-hop headers (and those listed in `Connection`). `TE` is
/// kept only as `trailers`; `Upgrade`/`Connection: upgrade` only when
/// `keep_upgrade` (a WebSocket route with an upgrade request, or a 101).
///
/// `connection_replaced`: the head is a response Pingora writes to the
/// client, and Pingora sets `Connection` itself there; a `Connection`
/// header that lists nothing but `keep-alive`/`close` is then left for it
/// to replace (the common upstream response costs no removal).
pub fn strip_hop_by_hop<H: HeaderEdit>(
    head: &mut H,
    keep_upgrade: bool,
    connection_replaced: bool,
) {
    let headers = head.header_map();
    // One pass over the (few) names finds which hop-by-hop headers are
    // present, instead of a hash lookup per hop-by-hop name.
    let mut present = [false; 6]; // one per HOP_BY_HOP name
    let mut concerned = false;
    for n in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == n) {
            present[i] = true;
            concerned = true;
        } else if n == header::TE || n == header::UPGRADE {
            concerned = true;
        }
    }
    let only_plain_connection = || {
        present[1..].iter().all(|p| !p)
            && !headers.contains_key(header::TE)
            && !headers.contains_key(header::UPGRADE)
            && headers.get_all(header::CONNECTION).iter().all(|v| {
                v.as_bytes().split(|b| *b == b',').all(|t| {
                    let t = t.trim_ascii();
                    t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"close")
                })
            })
    };
    if !concerned || (connection_replaced && !keep_upgrade && only_plain_connection()) {
        if keep_upgrade {
            head.set(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        return;
    }
    let has_connection = present[0];
    // Only names actually present are collected (`Connection: keep-alive`
    // or `close` then costs no allocation).
    let listed: Vec<HeaderName> = if has_connection {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty() && headers.contains_key(*t))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| {
                // Never let a client delete framing or routing headers this way.
                n != header::CONTENT_LENGTH && n != header::TRANSFER_ENCODING && n != header::HOST
            })
            .collect()
    } else {
        Vec::new()
    };
    let drop_te = headers
        .get(header::TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let has_upgrade = headers.contains_key(header::UPGRADE);
    for n in listed {
        if keep_upgrade && n == header::UPGRADE {
            continue;
        }
        head.remove(&n);
    }
    for (n, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            head.remove(n);
        }
    }
    if drop_te {
        head.remove(&header::TE);
    }
    if keep_upgrade {
        head.set(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if has_upgrade {
        head.remove(&header::UPGRADE);
    }
}

/// True for a WebSocket upgrade request.
pub fn is_websocket_upgrade(req: &RequestHeader) -> bool {
    req.headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> EdgeLimits {
        EdgeLimits {
            max_header_bytes: 1024,
            max_headers: 10,
            max_uri_bytes: 64,
        }
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/x", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn framing_rules() {
        let l = limits();
        assert!(check_request(&req(&[("content-length", "5")]), &l, "fg").is_none());
        for bad in ["+5", "-0", "5, 5", " 5", "0x5", ""] {
            let r = check_request(&req(&[("content-length", bad)]), &l, "fg");
            assert_eq!(r.map(|r| r.status()), Some(400), "{bad:?}");
        }
        let both = req(&[("content-length", "5"), ("transfer-encoding", "chunked")]);
        assert_eq!(check_request(&both, &l, "fg").unwrap().status(), 400);
        let gzip = req(&[("transfer-encoding", "gzip, chunked")]);
        assert_eq!(check_request(&gzip, &l, "fg").unwrap().status(), 501);
        let twice = req(&[
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked"),
        ]);
        assert_eq!(check_request(&twice, &l, "fg").unwrap().status(), 400);
        let underscore = req(&[("x_user", "a")]);
        assert_eq!(check_request(&underscore, &l, "fg").unwrap().status(), 400);
        let hosts = req(&[("host", "a"), ("host", "b")]);
        assert_eq!(check_request(&hosts, &l, "fg").unwrap().status(), 400);
    }

    #[test]
    fn size_limits() {
        let l = limits();
        let many: Vec<(String, String)> =
            (0..11).map(|i| (format!("x-h{i}"), "v".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(check_request(&req(&many), &l, "fg").unwrap().status(), 431);
        let big = "v".repeat(2000);
        assert_eq!(
            check_request(&req(&[("x-big", &big)]), &l, "fg")
                .unwrap()
                .status(),
            431
        );
        let long =
            RequestHeader::build("GET", format!("/{}", "a".repeat(100)).as_bytes(), None).unwrap();
        assert_eq!(check_request(&long, &l, "fg").unwrap().status(), 414);
    }

    #[test]
    fn raw_content_length_detection() {
        assert!(raw_head_has_content_length(b"POST / HTTP/1.1\r\nHost: a\r\nContent-length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(!raw_head_has_content_length(
            b"POST /content-length: HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(!raw_head_has_content_length(
            b"POST / HTTP/1.1\r\nX-Content-Length: 5\r\n\r\n"
        ));
    }

    #[test]
    fn via_loop() {
        let l = limits();
        let r = req(&[("via", "1.1 edge-a, 1.1 fg-node1")]);
        assert_eq!(check_request(&r, &l, "fg-node1").unwrap().status(), 508);
        assert!(check_request(&r, &l, "fg-node2").is_none());
    }

    #[test]
    fn hop_by_hop() {
        let mut r = req(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "gzip"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("x-keep", "1"),
        ]);
        strip_hop_by_hop(&mut r, false, false);
        let names: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-keep"]);
        let mut ws = req(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
        ]);
        strip_hop_by_hop(&mut ws, true, false);
        assert_eq!(ws.headers.get("upgrade").unwrap(), "websocket");
        assert_eq!(ws.headers.get("connection").unwrap(), "upgrade");
        assert_eq!(ws.headers.get("te").unwrap(), "trailers");
    }

    #[test]
    fn a_plain_connection_header_is_left_for_pingora_to_replace_on_responses() {
        let mut resp = pingora_http::ResponseHeader::build(200, None).unwrap();
        resp.insert_header("connection", "keep-alive").unwrap();
        resp.insert_header("x-keep", "1").unwrap();
        strip_hop_by_hop(&mut resp, false, true);
        assert!(resp.headers.contains_key("connection"));
        // A listed header is still removed, and Connection with it.
        resp.insert_header("connection", "keep-alive, x-keep")
            .unwrap();
        strip_hop_by_hop(&mut resp, false, true);
        assert!(!resp.headers.contains_key("x-keep"));
        assert!(!resp.headers.contains_key("connection"));
        // Requests: always removed (a client's `close` must not reach the pool).
        let mut r = req(&[("connection", "close")]);
        strip_hop_by_hop(&mut r, false, false);
        assert!(!r.headers.contains_key("connection"));
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-123_x.y:z"));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(&[b'a'; 129]));
        assert_eq!(new_request_id().len(), 32);
    }
}
