//! The downstream connection layer around Pingora's HTTP proxy app: what
//! Pingora does not enforce per connection.
//!
//! - **Connection caps**: a global and a per-client-IP limit on open
//!   connections; beyond them the client gets `503` + `Retry-After` and the
//!   connection is closed (graceful refusal, no request is read).
//! - **Header deadline**: Pingora's read timeout restarts on every read, so a
//!   client dripping a byte at a time would stay forever. Here each request
//!   head must arrive completely within `headerTimeout` of its first byte
//!   (of the accept, for the first request); otherwise the connection closes.
//!   The proxy marks the head as received from `early_request_filter`
//!   through a task-local flag. The deadline timer is only created when the
//!   exchange is still waiting for its head after its first poll; a head that
//!   is already there (the usual case on a kept-alive connection, whose first
//!   byte the idle wait has seen) costs no timer at all.
//! - **Keep-alive**: idle timeout and requests-per-connection limit.
//!
//! HTTP/2 connections (TLS ALPN `h2`) are handed to Pingora unchanged after
//! the caps: the h2 layer has its own stream and header limits.

use crate::config::BootConfig;
use async_trait::async_trait;
use http::HeaderValue;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

use super::respond::Reject;
use super::Gateway;

/// Per-connection state shared with the proxy phases through a task-local.
struct ConnState {
    /// Set by the proxy once the current request's head has been parsed.
    head_received: AtomicBool,
    /// The peer address as a header value, formatted once per connection.
    peer_text: OnceLock<(IpAddr, HeaderValue)>,
}

tokio::task_local! {
    static CONN: Arc<ConnState>;
}

/// Called by the proxy once a request head has been parsed.
pub fn mark_head_received() {
    let _ = CONN.try_with(|c| c.head_received.store(true, Ordering::Relaxed));
}

/// `ip` as a header value (`X-Forwarded-For`, `X-Real-IP`). The connection's
/// peer address is formatted once per connection, not once per request.
pub fn ip_header_value(ip: IpAddr) -> HeaderValue {
    CONN.try_with(|c| {
        let (peer, text) = c.peer_text.get_or_init(|| (ip, format_ip(ip)));
        (*peer == ip).then(|| text.clone())
    })
    .ok()
    .flatten()
    .unwrap_or_else(|| format_ip(ip))
}

fn format_ip(ip: IpAddr) -> HeaderValue {
    use std::io::Write;
    let mut buf = [0u8; 48];
    let mut w = &mut buf[..];
    let _ = write!(w, "{ip}");
    let len = 48 - w.len();
    HeaderValue::from_bytes(&buf[..len]).expect("an IP address is a valid header value")
}

const SHARDS: usize = 32;

/// Open-connection accounting.
pub struct ConnCounters {
    total: AtomicUsize,
    per_ip: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
    pub refused: AtomicU64,
    pub header_timeouts: AtomicU64,
}

impl Default for ConnCounters {
    fn default() -> Self {
        ConnCounters {
            total: AtomicUsize::new(0),
            per_ip: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            refused: AtomicU64::new(0),
            header_timeouts: AtomicU64::new(0),
        }
    }
}

/// Releases a connection slot on drop.
pub struct ConnSlot {
    counters: Arc<ConnCounters>,
    ip: Option<IpAddr>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.counters.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let mut map = self
                .counters
                .shard(&ip)
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

impl ConnCounters {
    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        let h = match ip {
            IpAddr::V4(v) => u32::from(*v) as usize,
            IpAddr::V6(v) => (u128::from(*v) as usize) ^ ((u128::from(*v) >> 64) as usize),
        };
        &self.per_ip[h.wrapping_mul(0x9E37_79B9) % SHARDS]
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Takes a slot or says which cap refused it.
    pub fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<ConnSlot, &'static str> {
        if self.total.fetch_add(1, Ordering::Relaxed) >= max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err("the gateway is at its connection limit");
        }
        if let Some(ip) = ip {
            let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n as usize >= max_per_ip {
                drop(map);
                self.total.fetch_sub(1, Ordering::Relaxed);
                return Err("too many connections from this address");
            }
            *n += 1;
        }
        Ok(ConnSlot {
            counters: self.clone(),
            ip,
        })
    }
}

/// Pingora listening app: caps + header deadline around the HTTP proxy.
pub struct EdgeApp {
    pub proxy: Arc<HttpProxy<Gateway>>,
    pub counters: Arc<ConnCounters>,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// IPv6 clients share a per-address cap by this prefix.
    pub ipv6_prefix: u8,
}

impl EdgeApp {
    pub fn new(
        proxy: HttpProxy<Gateway>,
        boot: &BootConfig,
        counters: Arc<ConnCounters>,
    ) -> EdgeApp {
        EdgeApp {
            proxy: Arc::new(proxy),
            counters,
            header_timeout: boot.header_timeout,
            keepalive_timeout: boot.keepalive_timeout,
            max_connections: boot.max_connections,
            max_connections_per_ip: boot.max_connections_per_ip,
            ipv6_prefix: boot.ipv6_prefix,
        }
    }
}

/// Answers a refused connection (a cap) with the gateway's 503 and closes it.
async fn refuse(mut stream: Stream, reason: &'static str) {
    let response = Reject::TooManyConnections(reason).raw_response();
    let write = async {
        stream.write_all(&response).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// True when the previous exchange left the first bytes of a pipelined
/// request in `settings` (the next request is already here: no idle wait).
/// Pingora keeps that field private; its `Debug` output names it, and is
/// scanned here without allocating.
fn has_pipelined_request(settings: &HttpPersistentSettings) -> bool {
    use std::fmt::Write;
    const NEEDLE: &[u8] = b"pipelined_prefix: Some";
    struct Scan {
        matched: usize,
        found: bool,
    }
    impl Write for Scan {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            for &b in s.as_bytes() {
                if self.found {
                    return Err(std::fmt::Error); // stop formatting early
                }
                if b == NEEDLE[self.matched] {
                    self.matched += 1;
                    if self.matched == NEEDLE.len() {
                        self.found = true;
                    }
                } else {
                    self.matched = usize::from(b == NEEDLE[0]);
                }
            }
            Ok(())
        }
    }
    let mut scan = Scan {
        matched: 0,
        found: false,
    };
    let _ = write!(scan, "{settings:?}");
    scan.found
}

#[async_trait]
impl ServerApp for EdgeApp {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer_ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
            .map(|ip| crate::limit::address_key(ip, self.ipv6_prefix));
        let _slot =
            match self
                .counters
                .admit(peer_ip, self.max_connections, self.max_connections_per_ip)
            {
                Ok(slot) => slot,
                Err(reason) => {
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    refuse(stream, reason).await;
                    return None;
                }
            };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }

        let conn = Arc::new(ConnState {
            head_received: AtomicBool::new(false),
            peer_text: OnceLock::new(),
        });
        let keepalive_secs = self.keepalive_timeout.as_secs().max(1);
        let reuse_limit = self
            .proxy
            .server_options()
            .and_then(|o| o.keepalive_request_limit);
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            let mut deadline = self.header_timeout;
            let pipelined = settings.as_ref().is_some_and(has_pipelined_request);
            if !first && !pipelined {
                // Idle keep-alive: wait for the next request's first byte,
                // but not past the start of a shutdown.
                if *shutdown.borrow() {
                    return None;
                }
                let mut byte = [0u8; 1];
                let mut stopping = shutdown.clone();
                tokio::select! {
                    r = tokio::time::timeout(self.keepalive_timeout, stream.try_peek(&mut byte)) => match r {
                        Ok(Ok(true)) => {}
                        Ok(Ok(false)) => deadline += self.keepalive_timeout, // cannot peek: count idle time too
                        _ => return None,                                    // idle timeout or closed
                    },
                    _ = stopping.changed() => return None,
                }
            }
            let mut session = ServerSession::new_http1(stream);
            // Pipelined requests are answered in order, each through the
            // whole chain (RFC 9112 §9.3.2), as nginx does.
            session.set_pipelining_enabled(true);
            if *shutdown.borrow() {
                session.set_keepalive(None);
            } else {
                session.set_keepalive(Some(keepalive_secs));
            }
            match settings.take() {
                Some(s) => s.apply_to_session(&mut session),
                None => session.set_keepalive_reuses_remaining(reuse_limit),
            }
            conn.head_received.store(false, Ordering::Relaxed);
            let fut = CONN.scope(conn.clone(), self.proxy.process_new_http(session, shutdown));
            tokio::pin!(fut);
            // The exchange, raced against the header deadline until its head
            // is in. The timer only exists while the head is awaited.
            let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
            let result = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                if conn.head_received.load(Ordering::Relaxed) {
                    timer = None;
                    return Poll::Pending;
                }
                let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(deadline)));
                match t.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            let Some(result) = result else {
                self.counters
                    .header_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                return None; // dropping the session closes the connection
            };
            let (next, persisted) = result?.consume();
            stream = next;
            settings = persisted;
            first = false;
        }
    }

    /// Deliberately not Pingora's `http_cleanup`: that aborts connections
    /// still waiting for their first request head when the listener stops
    /// (during an upgrade those were accepted a moment earlier and their
    /// request is in transit). They are bounded by the header deadline and
    /// the grace period instead; idle keep-alive connections end at
    /// shutdown in `process_new`.
    async fn cleanup(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipelined_request_is_seen_in_the_settings() {
        use bytes::BytesMut;
        let session = ServerSession::new_http1(Box::new(tokio_test_stream()));
        let mut settings = HttpPersistentSettings::for_session(&session);
        assert!(!has_pipelined_request(&settings));
        settings.set_pipelined_prefix(BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]));
        assert!(has_pipelined_request(&settings));
    }

    fn tokio_test_stream() -> tokio::net::UnixStream {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (a, _b) = rt.block_on(async { tokio::net::UnixStream::pair().unwrap() });
        std::mem::forget(rt);
        a
    }

    #[test]
    fn caps_are_enforced_and_released() {
        let c = Arc::new(ConnCounters::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = c.admit(Some(a), 3, 2).unwrap();
        let _s2 = c.admit(Some(a), 3, 2).unwrap();
        assert!(c.admit(Some(a), 3, 2).is_err(), "per-IP cap");
        let _s3 = c.admit(Some(b), 3, 2).unwrap();
        assert!(c.admit(Some(b), 3, 2).is_err(), "global cap");
        drop(s1);
        assert_eq!(c.open(), 2);
        assert!(c.admit(Some(a), 3, 2).is_ok());
    }
}
