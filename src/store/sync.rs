//! Database mode: keeps every node's live config equal to the store's.
//!
//! - After a write on this node, the new version is published on NATS
//!   (`flexgate.config.changed`, JSON `{"version": N, "node": "…"}`).
//! - Every node subscribes to it and, on a message with a newer version,
//!   reloads the whole state from the database (the source of truth; the
//!   message only says "look now").
//! - Every node also polls the stored version (`sync.pollInterval`, default
//!   1 s), so a lost message or NATS being down only delays convergence.
//! - The last state applied is cached on disk (`flexgate-db-cache.json`
//!   beside the config file, written atomically): a node that starts while
//!   the database is down serves it and keeps retrying.
//!
//! NATS is optional (`NATS_URL` or `nats.url`, TLS with `tls://` or
//! `nats.caFile`); the client reconnects by itself. A store that cannot be reached is logged once per outage, and
//! the node keeps serving its last config.

use super::{State, Store, StoreError, Versioned};
use crate::atomic_file;
use crate::reload::ConfigHandle;
use async_trait::async_trait;
use futures::StreamExt;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// NATS subject of config-change notices.
pub const SUBJECT: &str = "flexgate.config.changed";

/// Where the last applied database state is cached.
pub fn cache_path(config_path: &Path) -> PathBuf {
    config_path
        .parent()
        .unwrap_or(Path::new("."))
        .join("flexgate-db-cache.json")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Cached {
    version: u64,
    state: State,
}

/// Reads the cache (None when absent or unreadable).
pub fn read_cache(path: &Path) -> Option<Versioned> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str::<Cached>(&text) {
        Ok(c) => Some(Versioned {
            version: c.version,
            state: c.state,
        }),
        Err(e) => {
            tracing::warn!(path = %path.display(), "ignoring an unreadable config cache: {e}");
            None
        }
    }
}

/// Writes the cache (errors are logged: the cache is a convenience).
pub fn write_cache(path: &Path, v: &Versioned) {
    let cached = Cached {
        version: v.version,
        state: v.state.clone(),
    };
    let text = serde_json::to_vec(&cached).expect("state serialises");
    if let Err(e) = atomic_file::write(path, &text) {
        tracing::warn!(path = %path.display(), "cannot write the config cache: {e}");
    }
}

/// This node's name in notices (`host-pid`).
pub fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "node".into());
    format!("{host}-{}", std::process::id())
}

static DATABASE_UP: AtomicBool = AtomicBool::new(true);

/// Whether the config store answered the last poll (database mode).
pub fn database_up() -> bool {
    DATABASE_UP.load(Ordering::Relaxed)
}

/// The sender half given to the admin API (`on_commit`).
pub fn channel() -> (mpsc::Sender<u64>, mpsc::Receiver<u64>) {
    mpsc::channel(64)
}

/// The background service of database mode.
pub struct SyncService {
    pub config: Arc<ConfigHandle>,
    pub store: Arc<dyn Store>,
    pub nats_url: Option<String>,
    /// `nats.caFile`.
    pub nats_ca_file: Option<String>,
    pub poll_interval: Duration,
    pub cache: PathBuf,
    /// Versions committed on this node, to publish.
    pub committed: tokio::sync::Mutex<Option<mpsc::Receiver<u64>>>,
}

impl SyncService {
    /// Applies the store's state when it is newer than the live one.
    /// Returns whether the store answered.
    async fn converge(&self, outage: &mut bool) -> bool {
        let live = self.config.current().version;
        let result = async {
            let stored = self.store.version().await?;
            if stored == 0 && live == 0 {
                // The database came back empty: import what this node serves.
                let (_, state) = self.config.current_state();
                let entry = super::AuditEntry::startup_import();
                self.store.commit(0, &state, &[entry]).await?;
            } else if stored <= live {
                return Ok::<(), StoreError>(());
            }
            if let Some(v) = self.store.load().await? {
                let handle = self.config.clone();
                let applied = v.clone();
                let ok = tokio::task::spawn_blocking(move || handle.apply_managed(applied))
                    .await
                    .map(|r| r.is_ok())
                    .unwrap_or(false);
                if ok {
                    write_cache(&self.cache, &v);
                }
            }
            Ok(())
        }
        .await;
        DATABASE_UP.store(result.is_ok(), Ordering::Relaxed);
        match result {
            Ok(()) => {
                if std::mem::take(outage) {
                    tracing::info!("config store reachable again");
                    crate::events::emit(
                        crate::events::Event::DependencyUp,
                        serde_json::json!({"dependency": "database"}),
                    );
                }
                true
            }
            Err(e) => {
                if !std::mem::replace(outage, true) {
                    tracing::error!("config store unreachable; serving the last config: {e}");
                    crate::events::emit(
                        crate::events::Event::DependencyDown,
                        serde_json::json!({"dependency": "database", "error": e.to_string()}),
                    );
                }
                false
            }
        }
    }
}

#[async_trait]
impl BackgroundService for SyncService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let node = node_name();
        let nats = match &self.nats_url {
            Some(url) => {
                let target = crate::config::redact::url(url);
                let client = crate::deps_tls::nats_connect(
                    url,
                    self.nats_ca_file.as_deref(),
                    format!("flexgate {node}"),
                )
                .await;
                match client {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::error!(
                            url = %target,
                            "NATS: {e}; config changes converge by polling only"
                        );
                        None
                    }
                }
            }
            None => None,
        };
        let mut notices = match &nats {
            Some(c) => match c.subscribe(SUBJECT).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!("NATS subscribe {SUBJECT}: {e}; polling only");
                    None
                }
            },
            None => None,
        };
        let mut committed = self.committed.lock().await.take();
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut outage = false;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    self.converge(&mut outage).await;
                }
                Some(msg) = async {
                    match notices.as_mut() {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let newer = serde_json::from_slice::<serde_json::Value>(&msg.payload)
                        .ok()
                        .and_then(|v| v["version"].as_u64())
                        .is_none_or(|v| v > self.config.current().version);
                    if newer {
                        self.converge(&mut outage).await;
                    }
                }
                Some(version) = async {
                    match committed.as_mut() {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let (_, state) = self.config.current_state();
                    write_cache(&self.cache, &Versioned { version, state });
                    if let Some(c) = &nats {
                        let body = serde_json::json!({"version": version, "node": node}).to_string();
                        if let Err(e) = c.publish(SUBJECT, body.into()).await {
                            tracing::warn!("NATS publish {SUBJECT}: {e}; other nodes will poll");
                        }
                    }
                }
            }
        }
    }
}
