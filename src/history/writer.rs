//! The history writer: a background service that drains the history queue
//! into `flexgate_request_log`, one binary `COPY` per batch.
//!
//! A batch closes when it holds `history.batchSize` records or when its
//! first record has waited `history.flushInterval`. While a batch fills, the
//! queue is polled every [`FILL_POLL`] rather than awaited, so that the
//! request path's pushes do not wake this thread one by one. The writer owns one
//! connection (not the config store's pool). When the database does not
//! take a batch (down, slow beyond [`WRITE_TIMEOUT`], an error), the batch
//! is dropped and counted (`flexgate_history_failed_batches_total`, and its
//! rows in `flexgate_history_dropped_total{reason="write_failed"}`), the
//! connection is discarded, and reconnecting waits a backoff (250 ms
//! doubling to 10 s); batches closing meanwhile are dropped the same way, so
//! the queue keeps moving. Nothing here can reach the request path.
//!
//! On shutdown the writer keeps writing while in-flight requests drain;
//! what is still queued when the process exits is lost.

use super::{connect, HistoryRecord, Settings};
use crate::pg;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::pin::pin;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

/// Longest time one batch may take (client side), and the writer
/// connection's `statement_timeout`.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a batch being filled looks at the queue.
const FILL_POLL: Duration = Duration::from_millis(10);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

const COPY_STATEMENT: &str = "COPY flexgate_request_log (time, node_id, request_id, method, \
     path, route_id, upstream, status, duration_ms, client_ip, user_agent, bytes_in, bytes_out) \
     FROM STDIN (FORMAT binary)";
const COPY_TYPES: [Type; 13] = [
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT2,
    Type::FLOAT8,
    Type::INET,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
];

/// The writer service (`history.enabled` in database mode).
pub struct HistoryWriter {
    settings: Settings,
    /// Taken by `start` (a service starts once).
    queue: Mutex<Option<mpsc::Receiver<HistoryRecord>>>,
}

impl HistoryWriter {
    pub fn new(settings: Settings, queue: mpsc::Receiver<HistoryRecord>) -> HistoryWriter {
        HistoryWriter {
            settings,
            queue: Mutex::new(Some(queue)),
        }
    }
}

/// The writer's connection and when it may next try to connect.
struct Link {
    client: Option<tokio_postgres::Client>,
    backoff: Duration,
    next_attempt: Instant,
    /// Whether the last batch was written (state changes are logged once).
    healthy: bool,
}

impl Link {
    fn failed(&mut self, cause: &str) {
        self.client = None;
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        if self.healthy {
            tracing::warn!(
                "request history: the database did not take a batch ({cause}); dropping \
                 batches until it answers (flexgate_history_dropped_total)"
            );
            self.healthy = false;
        }
    }

    fn succeeded(&mut self) {
        self.backoff = BACKOFF_MIN;
        if !self.healthy {
            tracing::info!("request history: writing to the database again");
            self.healthy = true;
        }
    }
}

#[async_trait]
impl BackgroundService for HistoryWriter {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let queue = self.queue.lock().ok().and_then(|mut q| q.take());
        let Some(mut queue) = queue else {
            return;
        };
        let batch_size = self.settings.batch_size;
        let mut link = Link {
            client: None,
            backoff: BACKOFF_MIN,
            next_attempt: Instant::now(),
            healthy: true,
        };
        let mut batch: Vec<HistoryRecord> = Vec::with_capacity(batch_size);
        loop {
            if queue.recv_many(&mut batch, batch_size).await == 0 {
                return; // every sender is gone: the process is ending
            }
            // Fill the batch by polling: waiting on the channel would have
            // every request wake this thread; a poll every few ms is one
            // wake-up per tick whatever the request rate.
            let deadline = Instant::now() + self.settings.flush_interval;
            loop {
                while batch.len() < batch_size {
                    match queue.try_recv() {
                        Ok(record) => batch.push(record),
                        Err(_) => break,
                    }
                }
                let now = Instant::now();
                if batch.len() >= batch_size || now >= deadline {
                    break;
                }
                tokio::time::sleep_until(deadline.min(now + FILL_POLL)).await;
            }
            self.flush(&mut link, &mut batch).await;
        }
    }
}

impl HistoryWriter {
    /// Writes the batch, or drops and counts it; empties it either way.
    async fn flush(&self, link: &mut Link, batch: &mut Vec<HistoryRecord>) {
        let m = crate::metrics::metrics();
        if link.client.as_ref().is_some_and(|c| c.is_closed()) {
            link.client = None;
        }
        if link.client.is_none() && Instant::now() >= link.next_attempt {
            match connect(&self.settings, "flexgate-history-writer", WRITE_TIMEOUT).await {
                Ok(mut c) => {
                    // Today's partition before the first COPY: rows never
                    // wait in the DEFAULT partition for the maintenance run.
                    let ensured = tokio::time::timeout(
                        WRITE_TIMEOUT,
                        super::maintenance::ensure_partitions(&mut c),
                    )
                    .await;
                    match ensured {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!("request history: {e}"),
                        Err(_) => tracing::warn!(
                            "request history: creating today's partition took over {} s",
                            WRITE_TIMEOUT.as_secs()
                        ),
                    }
                    link.client = Some(c);
                }
                Err(e) => link.failed(&format!("cannot connect: {e}")),
            }
        }
        let rows = batch.len() as u64;
        let outcome = match &link.client {
            Some(client) => {
                match tokio::time::timeout(
                    WRITE_TIMEOUT,
                    copy_batch(client, batch, &self.settings.node_id),
                )
                .await
                {
                    Ok(Ok(written)) => Ok(written),
                    Ok(Err(e)) => Err(pg::message(&e)),
                    Err(_) => Err(format!("no answer within {} s", WRITE_TIMEOUT.as_secs())),
                }
            }
            None => Err("not connected".to_string()),
        };
        match outcome {
            Ok(written) => {
                m.history_written.inc_by(written);
                link.succeeded();
            }
            Err(cause) => {
                m.history_failed_batches.inc();
                m.history_dropped_write_failed.inc_by(rows);
                if link.client.is_some() {
                    link.failed(&cause);
                }
            }
        }
        batch.clear();
    }
}

/// One binary `COPY` of the batch; returns the rows the server took.
async fn copy_batch(
    client: &tokio_postgres::Client,
    batch: &[HistoryRecord],
    node_id: &str,
) -> Result<u64, tokio_postgres::Error> {
    let sink = client.copy_in(COPY_STATEMENT).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &COPY_TYPES));
    for r in batch {
        let status = i16::try_from(r.status).unwrap_or(i16::MAX);
        let duration_ms = r.duration.as_secs_f64() * 1000.0;
        let bytes_in = i64::try_from(r.bytes_in).unwrap_or(i64::MAX);
        let bytes_out = i64::try_from(r.bytes_out).unwrap_or(i64::MAX);
        let route_id = r.route_id.as_deref();
        let upstream = r.upstream.as_deref();
        let row: [&(dyn ToSql + Sync); 13] = [
            &r.time,
            &node_id,
            &r.request_id.to_str().unwrap_or(""),
            &r.method.as_str(),
            &r.path,
            &route_id,
            &upstream,
            &status,
            &duration_ms,
            &r.client_ip,
            &r.user_agent,
            &bytes_in,
            &bytes_out,
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await
}
