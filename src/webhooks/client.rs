//! The outbound POST of one delivery attempt, under the outbound-address
//! policy; it owns the HTTP exchange only (signing, retries and the record
//! of the attempt are the sender's).
//!
//! Decisions:
//! - The host passes `security.allowedHosts`, then EVERY address it resolves
//!   to passes the SSRF policy: one blocked address refuses the attempt (a
//!   mix of public and internal answers is a DNS-rebinding signal). The
//!   connection goes to a checked address, tried in order; never re-resolved.
//! - No redirect is followed: a 3xx is returned as it is (a failure to the
//!   sender).
//! - Only the head and the first [`SNIPPET_BYTES`] of the body are read;
//!   once the head is in, a body that stalls or breaks only cuts the snippet
//!   short (the status stands).
//! - A fresh connection per attempt, closed afterwards (never pooled), and
//!   `Connection: close` says so to the receiver.
//! - Host, Content-Type, Content-Length, User-Agent (and Connection) are set
//!   here; caller headers of those names are ignored.

use crate::config::{host_allowed, parse_endpoint_url, SsrfPolicy, TargetUrl};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use once_cell::sync::Lazy;
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use std::time::Duration;
use tokio::time::{timeout_at, Instant};

/// What the attempt is sent with.
pub struct Request<'a> {
    /// Full webhook URL (`http://` or `https://`, path and query allowed).
    pub url: &'a str,
    /// JSON body.
    pub body: &'a [u8],
    /// Every header to send besides Host, Content-Type, Content-Length and
    /// User-Agent, which [`post`] sets itself.
    pub headers: Vec<(String, String)>,
    /// Per connection attempt (TCP and TLS).
    pub connect_timeout: Duration,
    /// The whole attempt: resolve, connect, send, read the head and the
    /// (bounded) body.
    pub timeout: Duration,
    pub policy: &'a SsrfPolicy,
    /// `security.allowedHosts` (empty: any host).
    pub allowed_hosts: &'a [String],
}

/// What came back.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    /// Seconds from a `Retry-After` header (delta-seconds or HTTP-date), if any.
    pub retry_after: Option<Duration>,
    /// The start of the body, at most SNIPPET_BYTES, as UTF-8 (lossy).
    pub snippet: String,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Error {
    /// The URL or one of its resolved addresses is refused by the outbound policy (allowedHosts / SSRF). Never retried usefully; the message names the address and the block.
    #[error("{0}")]
    Refused(String),
    /// Resolution, connection, TLS, timeout, or a broken exchange: worth retrying.
    #[error("{0}")]
    Transport(String),
}

/// Most of the answer's body read (and kept as the snippet).
pub const SNIPPET_BYTES: usize = 1024;

/// Shared for its TLS setup; its keep-alive pool stays empty, as no session
/// is ever released to it.
static CONNECTOR: Lazy<Connector> = Lazy::new(|| Connector::new(None));

/// POSTs `req.body` to `req.url`; any answer (3xx, 4xx, 5xx too) is a [`Response`].
pub async fn post(req: Request<'_>) -> Result<Response, Error> {
    let (target, path) = parse_endpoint_url(req.url).map_err(Error::Refused)?;
    if !req.allowed_hosts.is_empty() && !host_allowed(req.allowed_hosts, &target.host) {
        return Err(Error::Refused(format!(
            "host {:?} is not in security.allowedHosts",
            target.host
        )));
    }
    let head = request_head(&req, &target, &path)?;
    let deadline = Instant::now() + req.timeout;
    let mut session = timeout_at(deadline, exchange(&req, &target, head))
        .await
        .map_err(|_| Error::Transport(format!("timed out after {:?}", req.timeout)))??;
    let (status, retry_after) = match session.response_header() {
        Some(h) => (h.status.as_u16(), h.headers.get(http::header::RETRY_AFTER)),
        None => return Err(Error::Transport("answer head: missing".into())),
    };
    let retry_after = retry_after
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, Utc::now()));
    let mut body = Vec::new();
    let _ = timeout_at(deadline, async {
        while body.len() < SNIPPET_BYTES {
            match session.read_response_body().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
    })
    .await;
    // Closed, never pooled: whatever body remains is not read.
    let _ = timeout_at(deadline, session.shutdown()).await;
    drop(session);
    Ok(Response {
        status,
        retry_after,
        snippet: snippet(body),
    })
}

/// The request head: path and query, our headers, then the caller's.
fn request_head(req: &Request<'_>, target: &TargetUrl, path: &str) -> Result<RequestHeader, Error> {
    let own = [
        (
            "Host",
            String::from_utf8_lossy(target.host_header().as_bytes()).into_owned(),
        ),
        ("Content-Type", "application/json".into()),
        ("Content-Length", req.body.len().to_string()),
        (
            "User-Agent",
            concat!("flexgate-webhooks/", env!("CARGO_PKG_VERSION")).into(),
        ),
        ("Connection", "close".into()),
    ];
    let bad = |e: pingora_error::BError| Error::Refused(format!("request head: {e}"));
    let mut head =
        RequestHeader::build("POST", path.as_bytes(), Some(req.headers.len() + 5)).map_err(bad)?;
    for (name, value) in &own {
        head.insert_header(*name, value.as_str()).map_err(bad)?;
    }
    for (name, value) in &req.headers {
        let ours = own.iter().any(|(n, _)| name.eq_ignore_ascii_case(n));
        if ours || name.eq_ignore_ascii_case("transfer-encoding") {
            continue;
        }
        head.append_header(name.clone(), value.as_str())
            .map_err(|_| Error::Refused(format!("header {name:?}: invalid name or value")))?;
    }
    Ok(head)
}

/// Resolves, checks every address, connects, sends, reads the answer's head.
async fn exchange(
    req: &Request<'_>,
    target: &TargetUrl,
    head: RequestHeader,
) -> Result<HttpSession, Error> {
    let host = target.host.as_str();
    let addrs: Vec<_> = tokio::net::lookup_host((host, target.port))
        .await
        .map_err(|e| Error::Transport(format!("resolve {host:?}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(Error::Transport(format!("{host:?} resolved to no address")));
    }
    for addr in &addrs {
        req.policy
            .check_ip(addr.ip())
            .map_err(|e| Error::Refused(format!("host {host:?}: {e}")))?;
    }
    let mut failures = Vec::new();
    let mut session = None;
    for addr in addrs {
        let mut peer = HttpPeer::new(addr, target.tls, host.to_string());
        peer.options.connection_timeout = Some(req.connect_timeout);
        peer.options.total_connection_timeout = Some(req.connect_timeout);
        match CONNECTOR.get_http_session(&peer).await {
            Ok((s, _)) => {
                session = Some(s);
                break;
            }
            Err(e) => failures.push(format!("connect to {addr}: {}", describe(&e))),
        }
    }
    let Some(mut session) = session else {
        return Err(Error::Transport(failures.join("; ")));
    };
    let broken = |what: &str, e: pingora_error::BError| {
        Error::Transport(format!("{what}: {}", describe(&e)))
    };
    session
        .write_request_header(Box::new(head))
        .await
        .map_err(|e| broken("send head", e))?;
    session
        .write_request_body(Bytes::copy_from_slice(req.body), true)
        .await
        .map_err(|e| broken("send body", e))?;
    session
        .finish_request_body()
        .await
        .map_err(|e| broken("send body", e))?;
    loop {
        session
            .read_response_header()
            .await
            .map_err(|e| broken("answer head", e))?;
        // Skip interim answers (100 Continue, 103 Early Hints).
        match session.response_header().map(|h| h.status.as_u16()) {
            Some(100..=199) => {}
            _ => return Ok(session),
        }
    }
}

/// A Pingora error as one line: its root cause (`Connection refused (os
/// error 111)`), else its innermost kind and context.
fn describe(e: &pingora_error::Error) -> String {
    let mut inner = e;
    while let Some(cause) = &inner.cause {
        match cause.downcast_ref::<pingora_error::BError>() {
            Some(next) => inner = next,
            None => return cause.to_string(),
        }
    }
    match &inner.context {
        Some(c) => format!("{}: {c}", inner.etype.as_str()),
        None => inner.etype.as_str().to_string(),
    }
}

/// `Retry-After` as delta-seconds or an HTTP-date (past: zero); else `None`.
fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// At most [`SNIPPET_BYTES`] as UTF-8 (lossy); a character cut at the limit is dropped.
fn snippet(mut body: Vec<u8>) -> String {
    body.truncate(SNIPPET_BYTES);
    if let Err(e) = std::str::from_utf8(&body) {
        if e.error_len().is_none() {
            body.truncate(e.valid_up_to());
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant as StdInstant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    /// A server answering one connection with `reply`, then holding it open
    /// for `hold`: its URL, and the request it received (head, body).
    async fn serve(
        reply: impl Into<Vec<u8>>,
        hold: u64,
    ) -> (String, JoinHandle<(String, Vec<u8>)>) {
        let (reply, listener) = (
            reply.into(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
            let mut need = usize::MAX;
            while buf.len() < need {
                let n = conn.read(&mut chunk).await.unwrap();
                assert!(n > 0, "request cut short");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len = head
                        .split("content-length: ")
                        .nth(1)
                        .and_then(|v| v.lines().next());
                    need = end + 4 + len.map_or(0, |v| v.parse::<usize>().unwrap());
                }
            }
            conn.write_all(&reply).await.unwrap();
            tokio::time::sleep(Duration::from_millis(hold)).await;
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            (
                String::from_utf8_lossy(&buf[..end]).into_owned(),
                buf[end..].to_vec(),
            )
        });
        (url, task)
    }

    static OPEN: SsrfPolicy = SsrfPolicy {
        blocked: Vec::new(),
        exempt: Vec::new(),
    };

    fn request<'a>(url: &'a str, policy: &'a SsrfPolicy, hosts: &'a [String]) -> Request<'a> {
        Request {
            url,
            body: br#"{"type":"test"}"#,
            headers: vec![("webhook-id".into(), "msg_1".into())],
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            policy,
            allowed_hosts: hosts,
        }
    }

    async fn send(url: &str) -> Result<Response, Error> {
        post(request(url, &OPEN, &[])).await
    }

    async fn no_connection(listener: &TcpListener) -> bool {
        let accept = tokio::time::timeout(Duration::from_millis(200), listener.accept());
        accept.await.is_err()
    }

    #[tokio::test]
    async fn posts_and_reads_the_answer() {
        let (url, server) = serve("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 0).await;
        let resp = send(&format!("{url}/hook?x=1")).await.unwrap();
        assert_eq!(
            (resp.status, resp.snippet.as_str(), resp.retry_after),
            (200, "ok", None)
        );
        let (head, body) = server.await.unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("post /hook?x=1 http/1.1\r\n"), "{head}");
        let host = format!("\r\nhost: {}\r\n", &url["http://".len()..]);
        for want in [
            "\r\nwebhook-id: msg_1\r\n",
            "\r\ncontent-type: application/json\r\n",
            &host,
        ] {
            assert!(head.contains(want), "{head}");
        }
        assert!(
            head.contains("\r\nuser-agent: flexgate-webhooks/"),
            "{head}"
        );
        assert_eq!(body, br#"{"type":"test"}"#);
    }

    #[tokio::test]
    async fn reads_at_most_the_snippet() {
        let mut reply = b"HTTP/1.1 500 Oops\r\nContent-Length: 1000000\r\n\r\n".to_vec();
        reply.extend(std::iter::repeat_n(b'x', 8192));
        let (url, _server) = serve(reply, 30_000).await;
        let started = StdInstant::now();
        let resp = send(&url).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            (resp.status, resp.snippet),
            (500, "x".repeat(SNIPPET_BYTES))
        );

        // A stalled body keeps the status and what came.
        let (url, _server) =
            serve("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 30_000).await;
        let mut req = request(&url, &OPEN, &[]);
        req.timeout = Duration::from_millis(300);
        assert_eq!(
            post(req).await.map(|r| (r.status, r.snippet)),
            Ok((200, "abc".into()))
        );
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = other.local_addr().unwrap();
        let reply =
            format!("HTTP/1.1 302 Found\r\nLocation: http://{to}/x\r\nContent-Length: 0\r\n\r\n");
        let (url, _server) = serve(reply, 0).await;
        let resp = send(&url).await.unwrap();
        assert_eq!((resp.status, resp.snippet.as_str()), (302, ""));
        assert!(no_connection(&other).await);
    }

    #[tokio::test]
    async fn retry_after_seconds_and_date() {
        let (url, _server) = serve(
            "HTTP/1.1 429 Slow\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n",
            0,
        )
        .await;
        let resp = send(&url).await.unwrap();
        assert_eq!(
            (resp.status, resp.retry_after),
            (429, Some(Duration::from_secs(7)))
        );

        let at = (Utc::now() + chrono::TimeDelta::seconds(120)).format("%a, %d %b %Y %H:%M:%S GMT");
        let (url, _server) =
            serve(format!("HTTP/1.1 503 Busy\r\nRetry-After: {at}\r\n\r\n"), 0).await;
        let wait = send(&url).await.unwrap().retry_after.unwrap().as_secs_f64();
        assert!((115.0..=121.0).contains(&wait), "{wait}");

        let now = DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let parse = |v| parse_retry_after(v, now.to_utc());
        assert_eq!(
            parse("Wed, 21 Oct 2015 07:28:30 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse("Tue, 20 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse(" 0 "), Some(Duration::ZERO));
        assert_eq!((parse("soon"), parse("-5"), parse("")), (None, None, None));
    }

    #[tokio::test]
    async fn refused_before_connecting() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let blocked = ["127.0.0.0/8", "::1/128"].map(|c| c.parse().unwrap());
        let policy = SsrfPolicy {
            blocked: blocked.to_vec(),
            exempt: vec![],
        };
        for url in [
            format!("http://127.0.0.1:{port}/"),
            format!("http://localhost:{port}/"),
        ] {
            match post(request(&url, &policy, &[])).await {
                Err(Error::Refused(m)) => {
                    assert!(m.contains("127.0.0.1") || m.contains("::1"), "{m}")
                }
                other => panic!("{other:?}"),
            }
        }
        let hosts = ["api.example.com".to_string()];
        let url = format!("http://127.0.0.1:{port}/");
        match post(request(&url, &OPEN, &hosts)).await {
            Err(Error::Refused(m)) => assert!(m.contains("security.allowedHosts"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(send("ftp://x/").await, Err(Error::Refused(_))));
        assert!(no_connection(&listener).await);
    }

    #[tokio::test]
    async fn transport_failures() {
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        match send(&format!("http://{closed}/")).await {
            Err(Error::Transport(m)) => {
                assert!(m.starts_with(&format!("connect to {closed}: ")), "{m}")
            }
            other => panic!("{other:?}"),
        }
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", silent.local_addr().unwrap());
        let mut req = request(&url, &OPEN, &[]);
        req.timeout = Duration::from_millis(300);
        let started = StdInstant::now();
        match post(req).await {
            Err(Error::Transport(m)) => assert_eq!(m, "timed out after 300ms"),
            other => panic!("{other:?}"),
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }
}
