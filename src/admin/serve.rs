//! Serves the admin axum app from a Pingora listening service: each accepted
//! connection (`Stream`) is driven by hyper's HTTP/1 server. Because Pingora
//! owns the socket, the admin port takes part in the listener hand-off of a
//! binary upgrade and in graceful shutdown (connections finish their
//! in-flight request, and a request arriving within 500 ms of the shutdown
//! on an open connection is still answered; then they close).
//!
//! Each connection buffers at most [`SEND_BUFFER`] in the kernel and
//! [`WRITE_BUFFER`] in hyper: an SSE client that stops reading holds a
//! bounded amount of memory, and falls behind its event channel (and is
//! told so) instead of the gateway queueing for it.
//!
//! At most `admin.maxConnections` connections are served at once; one more
//! is answered `503` and closed at once (no waiting in a queue). Each
//! request carries the client's address ([`PeerAddr`]) for the failed-login
//! limiter.

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// The client address of an admin request (a request extension).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::IpAddr);

/// Kernel send buffer per admin connection (the kernel doubles it).
pub const SEND_BUFFER: usize = 64 * 1024;
/// hyper's write buffer per admin connection.
pub const WRITE_BUFFER: usize = 64 * 1024;

/// Caps the kernel's send buffer of an accepted socket (no autotuning up
/// to megabytes for a client that does not read).
fn cap_send_buffer(stream: &Stream) {
    use std::os::fd::BorrowedFd;
    let fd = stream.id();
    // SAFETY: `fd` is the socket of `stream`, open for the whole call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    if let Err(e) = socket2::SockRef::from(&fd).set_send_buffer_size(SEND_BUFFER) {
        tracing::debug!("admin connection: cannot cap the send buffer: {e}");
    }
}

/// The admin app as a Pingora server app.
pub struct AdminApp {
    pub router: axum::Router,
    /// `admin.maxConnections`.
    pub max_connections: usize,
    /// Connections being served.
    pub open: AtomicUsize,
}

impl AdminApp {
    pub fn new(router: axum::Router, max_connections: usize) -> AdminApp {
        AdminApp {
            router,
            max_connections,
            open: AtomicUsize::new(0),
        }
    }
}

/// Counts a served connection for as long as it lives.
struct OpenSlot<'a>(&'a AtomicUsize);

impl Drop for OpenSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The answer to a connection over `admin.maxConnections`.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 117\r\n\r\n{\"error\":\"too_many_connections\",\"message\":\"the admin service has admin.maxConnections connections open\",\"status\":503}";

#[async_trait]
impl ServerApp for AdminApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            let mut stream = stream;
            let refuse = async {
                stream.write_all(BUSY).await?;
                stream.flush().await?;
                stream.shutdown().await
            };
            let _ = tokio::time::timeout(std::time::Duration::from_millis(200), refuse).await;
            tracing::warn!(
                max = self.max_connections,
                "admin connection refused: admin.maxConnections connections are open"
            );
            return None;
        }
        let _slot = OpenSlot(&self.open);
        cap_send_buffer(&stream);
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let router = match peer {
            Some(ip) => self.router.clone().layer(axum::Extension(PeerAddr(ip))),
            None => self.router.clone(),
        };
        let service = TowerToHyperService::new(router);
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .max_buf_size(WRITE_BUFFER)
            .header_read_timeout(std::time::Duration::from_secs(10))
            .serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let mut stopping = shutdown.clone();
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("admin connection ended: {e}");
                }
            }
            _ = stopping.changed() => {
                super::live_metrics::stop_streams();
                // A connection accepted just before the listener stopped may
                // still have its first request in transit, and hyper closes an
                // idle connection at once: give that request a moment to
                // arrive (it is then answered) before closing.
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!("admin connection ended: {e}");
                        }
                        return None;
                    }
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                }
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
        None
    }
}
