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

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::sync::Arc;

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
}

#[async_trait]
impl ServerApp for AdminApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        cap_send_buffer(&stream);
        let service = TowerToHyperService::new(self.router.clone());
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
