//! The single writer of the live config: load → validate → compile → one
//! `ArcSwap` store. Requests take the snapshot once (`current()`), so a
//! request never sees two configs; a reload never disturbs in-flight
//! requests (they keep their `Arc`).
//!
//! Triggers: `SIGHUP`, and a change of the config file's or the key
//! store's content (polled once a second; a touch without a content change
//! does nothing). A bad
//! file keeps the old snapshot live and logs every error with its path.
//! Boot settings (listeners, threads, admin address) are not reloadable: a
//! change there is reported as needing a restart or binary upgrade.

use crate::config::{self, BootConfig, ConfigErrors};
use crate::keys::store::{load as load_keys, store_path, KeyFile};
use crate::snapshot::{self, Snapshot};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The live config and how to reload it.
pub struct ConfigHandle {
    live: ArcSwap<Snapshot>,
    path: PathBuf,
    /// Hash of the file text behind the live snapshot.
    file_hash: AtomicU64,
    /// Serialises reloads (SIGHUP and the file poll can race).
    reloading: Mutex<()>,
    /// Counters visible to tests/metrics.
    pub reloads: AtomicU64,
    pub rejected_reloads: AtomicU64,
    /// Boot settings as loaded at start (to warn about unreloadable changes).
    boot: BootConfig,
    port_override: Option<u16>,
}

fn text_hash(t: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

/// Reads the config file and its key store. Returns the hash of both
/// contents (for change detection) and the checked result.
fn read_inputs(path: &Path) -> (u64, Result<(config::FileConfig, KeyFile), ConfigErrors>) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let msg = format!("cannot read config file {}: {e}", path.display());
            return (
                0,
                Err(ConfigErrors(vec![config::ConfigError::new("", msg)])),
            );
        }
    };
    let mut hash = text_hash(&text);
    let cfg = match config::parse_and_validate(&text) {
        Ok(c) => c,
        Err(e) => return (hash, Err(e)),
    };
    let store = store_path(
        path,
        cfg.security
            .auth
            .as_ref()
            .and_then(|a| a.key_store.as_deref()),
    );
    hash ^= text_hash(&std::fs::read_to_string(&store).unwrap_or_default()).rotate_left(17);
    match load_keys(&store) {
        Ok(keys) => (hash, Ok((cfg, keys))),
        Err(m) => (
            hash,
            Err(ConfigErrors(vec![config::ConfigError::new(
                "security.auth.keyStore",
                m,
            )])),
        ),
    }
}

impl ConfigHandle {
    /// Loads, validates and compiles the file (and its key store) for the
    /// first time. `port_override` is the `PORT` variable.
    pub fn load(
        path: &Path,
        port_override: Option<u16>,
    ) -> Result<(ConfigHandle, BootConfig, config::FileConfig), ConfigErrors> {
        let (hash, inputs) = read_inputs(path);
        let (cfg, keys) = inputs?;
        let snap = snapshot::compile(&cfg.dynamic(), &keys, None, 1)?;
        let boot = BootConfig::from_file(&cfg, port_override);
        Ok((
            ConfigHandle {
                live: ArcSwap::from_pointee(snap),
                path: path.to_path_buf(),
                file_hash: AtomicU64::new(hash),
                reloading: Mutex::new(()),
                reloads: AtomicU64::new(0),
                rejected_reloads: AtomicU64::new(0),
                boot: boot.clone(),
                port_override,
            },
            boot,
            cfg,
        ))
    }

    /// The live snapshot (one atomic load; cheap).
    #[inline]
    pub fn current(&self) -> Arc<Snapshot> {
        self.live.load_full()
    }

    /// Re-reads the file and swaps the snapshot in when it is valid.
    /// `only_if_changed` skips work when the text is unchanged.
    /// Returns the live version afterwards.
    pub fn reload(&self, only_if_changed: bool) -> Result<u64, ConfigErrors> {
        let _guard = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let (hash, inputs) = read_inputs(&self.path);
        let prev = self.current();
        if only_if_changed && hash == self.file_hash.load(Ordering::Relaxed) {
            return Ok(prev.version);
        }
        // Remember what was tried, so an unchanged bad file is reported once.
        self.file_hash.store(hash, Ordering::Relaxed);
        let (cfg, keys) = match inputs {
            Ok(i) => i,
            Err(e) => return self.reject(e),
        };
        let snap = match snapshot::compile(&cfg.dynamic(), &keys, Some(&prev), prev.version + 1) {
            Ok(s) => s,
            Err(e) => return self.reject(e),
        };
        if BootConfig::from_file(&cfg, self.port_override) != self.boot {
            tracing::warn!(
                "config reload: proxy listener/process or admin settings changed; they apply after a restart or binary upgrade (flexgate start -u)"
            );
        }
        let version = snap.version;
        self.live.store(Arc::new(snap));
        self.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(version, path = %self.path.display(), "config reloaded");
        Ok(version)
    }

    fn reject(&self, errs: ConfigErrors) -> Result<u64, ConfigErrors> {
        self.rejected_reloads.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            path = %self.path.display(),
            errors = %errs.0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "),
            "config reload rejected; the previous config stays live"
        );
        Err(errs)
    }
}

/// Background service: reloads on SIGHUP and on file content change.
pub struct ReloadService {
    pub handle: Arc<ConfigHandle>,
    pub poll_interval: Duration,
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = shutdown.changed() => return,
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => true,
                _ = tick.tick() => false,
            };
            let handle = self.handle.clone();
            if forced {
                tracing::info!("SIGHUP received: reloading config");
            }
            // Compiling resolves DNS: keep it off the runtime's worker threads.
            let _ = tokio::task::spawn_blocking(move || handle.reload(!forced)).await;
        }
    }
}
