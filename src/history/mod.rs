//! Request history (database mode): every proxied request becomes one row
//! of `flexgate_request_log` in PostgreSQL, with hourly and daily roll-ups.
//!
//! # Parts
//!
//! - This file: the settings (`history:` resolved at start — a boot
//!   setting), the owned [`HistoryRecord`] built in the proxy's `logging`
//!   phase, and the [`HistorySink`] that takes it off the request path.
//! - `writer.rs`: the background service draining the queue into the
//!   database in batches (binary `COPY`), on a connection of its own.
//! - `maintenance.rs`: the background service creating day partitions,
//!   recomputing roll-ups and applying retention, once per interval on one
//!   node at a time (advisory lock).
//! - `rollups.rs`: reading the roll-ups back (`GET /api/metrics/history`),
//!   on the database's shared pool ([`rollups::RollupReader`]).
//!
//! # What must not happen here
//!
//! The request path only calls [`HistorySink::record`]: a non-blocking
//! `try_send` on a bounded channel. A full queue drops the record and
//! counts it (`flexgate_history_dropped_total{reason="queue_full"}`); no
//! request ever waits for, or fails because of, the database.

pub mod maintenance;
pub mod rollups;
pub mod writer;

use crate::config::FileConfig;
use http::HeaderValue;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Default `history.queueSize`.
pub const DEFAULT_QUEUE_SIZE: usize = 50_000;
/// Default `history.batchSize`.
pub const DEFAULT_BATCH_SIZE: usize = 1_000;
/// Default `history.flushInterval`.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// Default `history.retentionDays`.
pub const DEFAULT_RETENTION_DAYS: u32 = 7;
/// Default `history.rollupRetentionDays`.
pub const DEFAULT_ROLLUP_RETENTION_DAYS: u32 = 90;
/// Default `history.maintenanceInterval`.
pub const DEFAULT_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);
/// Longest path stored (longer ones are cut at a character boundary).
const MAX_PATH_CHARS: usize = 2_048;
/// Longest user agent stored.
const MAX_USER_AGENT_CHARS: usize = 512;

/// The resolved `history:` section of a node in database mode.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The same database as the config store.
    pub database_url: String,
    /// `database.caFile` (the config store's CA, for `sslmode=verify-*`).
    pub database_ca_file: Option<String>,
    pub queue_size: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub retention_days: u32,
    pub rollup_retention_days: u32,
    pub maintenance_interval: Duration,
    /// This node's name in the rows.
    pub node_id: Arc<str>,
}

impl Settings {
    /// The settings of a node, or `None` when nothing is recorded: no
    /// database (embedded mode), or `history.enabled: false`.
    pub fn resolve(file: &FileConfig, database_url: Option<&str>) -> Option<Settings> {
        let url = database_url?;
        let section = file.history.clone().unwrap_or_default();
        if section.enabled == Some(false) {
            return None;
        }
        Some(Settings {
            database_url: url.to_string(),
            database_ca_file: file.database.as_ref().and_then(|d| d.ca_file.clone()),
            queue_size: section.queue_size.unwrap_or(DEFAULT_QUEUE_SIZE).max(1),
            batch_size: section.batch_size.unwrap_or(DEFAULT_BATCH_SIZE).max(1),
            flush_interval: section
                .flush_interval
                .map_or(DEFAULT_FLUSH_INTERVAL, |m| m.duration()),
            retention_days: section.retention_days.unwrap_or(DEFAULT_RETENTION_DAYS),
            rollup_retention_days: section
                .rollup_retention_days
                .unwrap_or(DEFAULT_ROLLUP_RETENTION_DAYS),
            maintenance_interval: section
                .maintenance_interval
                .map_or(DEFAULT_MAINTENANCE_INTERVAL, |m| m.duration()),
            node_id: Arc::from(section.node_id.unwrap_or_else(host_name).as_str()),
        })
    }
}

/// The host name (`/proc/sys/kernel/hostname`), else `node`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// Whether this process records request history (set once at start; read
/// by the admin API to say so next to the roll-ups).
static RECORDING: AtomicBool = AtomicBool::new(false);

/// Marks this process as recording request history.
pub fn set_recording(on: bool) {
    RECORDING.store(on, Ordering::Relaxed);
}

/// True when this process records request history.
pub fn recording() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

/// One finished request, owned, on its way to the database.
#[derive(Clone, Debug)]
pub struct HistoryRecord {
    /// When the request head arrived.
    pub time: SystemTime,
    pub method: http::Method,
    /// Without the query string.
    pub path: String,
    /// `None`: no route matched.
    pub route_id: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    /// 0: no response was sent.
    pub status: u16,
    pub duration: Duration,
    pub client_ip: IpAddr,
    pub user_agent: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The correlation id (a cheap clone of the header value).
    pub request_id: HeaderValue,
}

impl HistoryRecord {
    /// The path as stored (at most [`MAX_PATH_CHARS`] characters).
    pub fn stored_path(path: &str) -> String {
        truncate_chars(path, MAX_PATH_CHARS)
    }

    /// The user agent as stored (at most [`MAX_USER_AGENT_CHARS`] characters).
    pub fn stored_user_agent(agent: &str) -> String {
        truncate_chars(agent, MAX_USER_AGENT_CHARS)
    }
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_string(),
        None => text.to_string(),
    }
}

/// The request path's end of the history queue (cheap to clone).
#[derive(Clone, Debug)]
pub struct HistorySink {
    queue: mpsc::Sender<HistoryRecord>,
}

impl HistorySink {
    /// Queues a record without waiting; a full queue (or a stopped writer)
    /// drops it and counts the drop.
    pub fn record(&self, record: HistoryRecord) {
        if self.queue.try_send(record).is_err() {
            crate::metrics::metrics().history_dropped_queue_full.inc();
        }
    }
}

/// The bounded queue between the request path and the writer.
pub fn queue(capacity: usize) -> (HistorySink, mpsc::Receiver<HistoryRecord>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (HistorySink { queue: tx }, rx)
}

/// A connection of its own to the history database (not the shared pool:
/// a slow history write must never hold a connection the admin API or the
/// config sync needs), through the one PostgreSQL TLS connector
/// ([`crate::pg::tls`]). Every statement is bounded server-side.
pub(crate) async fn connect(
    settings: &Settings,
    application: &str,
    statement_timeout: Duration,
) -> Result<tokio_postgres::Client, String> {
    // The connector of every database connection: same sslmode, same CA.
    let (mut cfg, tls) =
        crate::pg::tls::resolve(&settings.database_url, settings.database_ca_file.as_deref())?;
    cfg.connect_timeout(Duration::from_secs(2));
    let ours = format!("-c statement_timeout={}", statement_timeout.as_millis());
    let options = match cfg.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{ours} {o}"),
        _ => ours,
    };
    cfg.options(options);
    cfg.application_name(application);
    let (client, connection) = tokio::time::timeout(Duration::from_secs(3), cfg.connect(tls))
        .await
        .map_err(|_| "no answer within 3 s".to_string())?
        .map_err(|e| crate::pg::message(&e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("request history connection ended: {e}");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_on_by_default_in_database_mode_only() {
        let file = FileConfig::default();
        assert!(Settings::resolve(&file, None).is_none());
        let s = Settings::resolve(&file, Some("postgres://db/x")).expect("on");
        assert_eq!(s.queue_size, DEFAULT_QUEUE_SIZE);
        assert_eq!(s.batch_size, DEFAULT_BATCH_SIZE);
        assert_eq!(s.retention_days, 7);
        assert_eq!(s.rollup_retention_days, 90);
        assert!(!s.node_id.is_empty());
        let off = crate::config::parse("history:\n  enabled: false\n").expect("parses");
        assert!(Settings::resolve(&off, Some("postgres://db/x")).is_none());
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let (sink, _rx) = queue(2);
        let before = crate::metrics::metrics().history_dropped_queue_full.get();
        let record = HistoryRecord {
            time: SystemTime::now(),
            method: http::Method::GET,
            path: "/a".into(),
            route_id: None,
            upstream: None,
            status: 200,
            duration: Duration::from_millis(1),
            client_ip: IpAddr::from([127, 0, 0, 1]),
            user_agent: None,
            bytes_in: 0,
            bytes_out: 0,
            request_id: HeaderValue::from_static("id"),
        };
        for _ in 0..5 {
            sink.record(record.clone());
        }
        let after = crate::metrics::metrics().history_dropped_queue_full.get();
        assert!(after - before >= 3, "{before} → {after}");
    }

    #[test]
    fn long_values_are_cut_at_a_character_boundary() {
        let long = "é".repeat(3_000);
        assert_eq!(HistoryRecord::stored_path(&long).chars().count(), 2_048);
        assert_eq!(HistoryRecord::stored_user_agent("curl/8"), "curl/8");
    }
}
