//! Serves the admin axum app from a Pingora listening service: each accepted
//! connection (`Stream`) is driven by hyper's HTTP/1 server. Because Pingora
//! owns the socket, the admin port takes part in the listener hand-off of a
//! binary upgrade and in graceful shutdown (connections finish their
//! in-flight request, and a request arriving within 500 ms of the shutdown
//! on an open connection is still answered; then they close).

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::sync::Arc;

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
        let service = TowerToHyperService::new(self.router.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
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
