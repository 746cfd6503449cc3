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
//!   The connection's stream is wrapped in an [`EdgeStream`] that notes when
//!   bytes arrive; the proxy marks the head as received from
//!   `early_request_filter`. The deadline timer only exists while a head is
//!   partly in: a head that arrives whole costs no timer at all.
//! - **Idle keep-alive**: between requests the loop itself waits for the
//!   next request's first bytes (they are handed to Pingora's first read),
//!   so an idle connection holds no session, no exchange state and no
//!   buffer beyond the stream's own. The wait ends at the keep-alive timeout
//!   and at the start of a shutdown. When Pingora already holds the next
//!   request's bytes (pipelining), there is no wait.
//! - **Keep-alive**: idle timeout and requests-per-connection limit.
//!
//! HTTP/2 connections (TLS ALPN `h2`) are handed to Pingora unchanged after
//! the caps: the h2 layer has its own stream and header limits.

use crate::config::BootConfig;
use async_trait::async_trait;
use http::HeaderValue;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
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

/// Per-connection state, shared by the edge loop, the stream wrapper and
/// the proxy phases (one thread touches it at a time: relaxed atomics).
#[derive(Debug, Default)]
struct ConnState {
    /// Bytes arrived since the current request began (its head is coming).
    bytes_arrived: AtomicBool,
    /// Set by the proxy once the current request's head has been parsed.
    head_received: AtomicBool,
    /// Bytes handed to Pingora on this connection.
    delivered: AtomicU64,
    /// Bytes of requests (heads and bodies) Pingora has finished with.
    consumed: AtomicU64,
    /// The last exchange left bytes of the next request in Pingora's
    /// buffer (HTTP/1.1 pipelining): no idle wait before it.
    pipelined: AtomicBool,
    /// The peer address as a header value, formatted once per connection.
    peer_text: OnceLock<(IpAddr, HeaderValue)>,
}

/// The client connection as Pingora sees it: the accepted stream, noting
/// when bytes arrive. Between requests the edge loop reads the next
/// request's first bytes itself ([`EdgeStream::poll_idle`]), with no
/// session allocated, and hands them to Pingora's first read.
/// Everything else is the inner stream's.
#[derive(Debug)]
pub struct EdgeStream {
    inner: Stream,
    state: Arc<ConnState>,
    /// Bytes read while idle, not yet handed to Pingora.
    replay: Vec<u8>,
    replay_from: usize,
}

/// Bytes read at most by one idle wait (the rest stays in the stream's
/// own buffer).
const IDLE_READ: usize = 2048;

impl EdgeStream {
    /// Waits for the next request's first bytes; `Ok(false)` when the
    /// client closed the connection.
    fn poll_idle(&mut self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<bool>> {
        let mut bytes = [std::mem::MaybeUninit::<u8>::uninit(); IDLE_READ];
        let mut buf = tokio::io::ReadBuf::uninit(&mut bytes);
        match tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut self.inner), cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Ok(false)),
            Poll::Ready(Ok(())) => {
                self.replay.clear();
                self.replay.extend_from_slice(buf.filled());
                self.replay_from = 0;
                Poll::Ready(Ok(true))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncRead for EdgeStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = if this.replay_from < this.replay.len() {
            let n = buf.remaining().min(this.replay.len() - this.replay_from);
            buf.put_slice(&this.replay[this.replay_from..this.replay_from + n]);
            this.replay_from += n;
            if this.replay_from == this.replay.len() && this.replay.capacity() > IDLE_READ {
                this.replay = Vec::new();
                this.replay_from = 0;
            }
            Poll::Ready(Ok(()))
        } else {
            std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
        };
        let n = buf.filled().len() - before;
        if n > 0 {
            this.state.bytes_arrived.store(true, Ordering::Relaxed);
            this.state.delivered.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl tokio::io::AsyncWrite for EdgeStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for EdgeStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(self.inner.as_mut()).await
    }
}

impl UniqueID for EdgeStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for EdgeStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for EdgeStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for EdgeStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for EdgeStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for EdgeStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// The connection state behind a proxied session, when it came through
/// the edge loop (HTTP/1; HTTP/2 sessions are not wrapped).
fn conn_state(session: &pingora_proxy::Session) -> Option<&ConnState> {
    let stream = session.as_downstream().stream()?;
    let edge = stream.as_any().downcast_ref::<EdgeStream>()?;
    Some(&edge.state)
}

/// Called by the proxy once a request head has been parsed.
pub fn mark_head_received(session: &pingora_proxy::Session) {
    if let Some(state) = conn_state(session) {
        state.head_received.store(true, Ordering::Relaxed);
    }
}

/// Called by the proxy when an exchange ends: notes whether Pingora has
/// read past the requests it finished (the start of a pipelined one is
/// waiting in its buffer). Chunked framing is not counted as consumed, so
/// after a chunked request the connection's idle waits happen inside
/// Pingora: correct, only less frugal with memory.
pub fn mark_exchange_end(session: &pingora_proxy::Session) {
    let Some(state) = conn_state(session) else {
        return;
    };
    let this_request = session
        .as_downstream()
        .as_http1()
        .map_or(0, |h1| h1.get_headers_raw_bytes().len() as u64)
        + session.as_ref().body_bytes_read() as u64;
    let consumed = state.consumed.fetch_add(this_request, Ordering::Relaxed) + this_request;
    let delivered = state.delivered.load(Ordering::Relaxed);
    state
        .pipelined
        .store(delivered > consumed, Ordering::Relaxed);
}

/// `ip` as a header value (`X-Forwarded-For`, `X-Real-IP`). The
/// connection's peer address is formatted once per connection, not once
/// per request.
pub fn ip_header_value(session: &pingora_proxy::Session, ip: IpAddr) -> HeaderValue {
    conn_state(session)
        .and_then(|c| {
            let (peer, text) = c.peer_text.get_or_init(|| (ip, format_ip(ip)));
            (*peer == ip).then(|| text.clone())
        })
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

#[async_trait]
impl ServerApp for EdgeApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
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

        let state = Arc::new(ConnState::default());
        let mut edge = Box::new(EdgeStream {
            inner: stream,
            state: state.clone(),
            replay: Vec::new(),
            replay_from: 0,
        });
        let keepalive_secs = self.keepalive_timeout.as_secs().max(1);
        let reuse_limit = self
            .proxy
            .server_options()
            .and_then(|o| o.keepalive_request_limit);
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            if !first && !state.pipelined.load(Ordering::Relaxed) {
                // Idle keep-alive: wait for the next request's first bytes
                // here, holding no session, up to the keep-alive timeout and
                // not past the start of a shutdown.
                let mut stopping = shutdown.clone();
                if *stopping.borrow_and_update() {
                    return None;
                }
                tokio::select! {
                    biased;
                    r = std::future::poll_fn(|cx| edge.poll_idle(cx)) => match r {
                        Ok(true) => {}
                        _ => return None, // closed or broken
                    },
                    _ = tokio::time::sleep(self.keepalive_timeout) => return None,
                    _ = stopping.changed() => return None,
                }
            }
            let mut session = ServerSession::new_http1(edge);
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
            state.head_received.store(false, Ordering::Relaxed);
            state.bytes_arrived.store(first, Ordering::Relaxed);
            state.pipelined.store(false, Ordering::Relaxed);
            // Boxed: an idle connection's task then holds no exchange state.
            let mut fut = Box::pin(self.proxy.process_new_http(session, shutdown));
            // The exchange, raced against the header deadline while a head
            // is coming in (from the accept, for the first request; from its
            // first bytes, after an idle wait). The timer only exists while
            // a head is partly in: a head that is already complete costs none.
            let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
            let result = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                if state.head_received.load(Ordering::Relaxed)
                    || !state.bytes_arrived.load(Ordering::Relaxed)
                {
                    // Served, or a pipelined request's head is not in yet
                    // (Pingora's keep-alive timeout bounds that wait).
                    timer = None;
                    return Poll::Pending;
                }
                let t =
                    timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(self.header_timeout)));
                match t.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.counters
                            .header_timeouts
                            .fetch_add(1, Ordering::Relaxed);
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            drop(fut);
            // `None`: the header deadline; dropping the session closes the
            // connection.
            let (next, persisted) = result??.consume();
            edge = next.into_any().downcast::<EdgeStream>().ok()?;
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
