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
use crate::keys::store::{load as load_keys, store_path};
use crate::snapshot::{self, Snapshot};
use crate::store::{State, Versioned};
use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The live config and how to reload it.
pub struct ConfigHandle {
    live: ArcSwap<Snapshot>,
    path: PathBuf,
    /// Hash of the inputs behind the live snapshot (file text, key store,
    /// managed version).
    file_hash: AtomicU64,
    /// Serialises every change of the live config: reloads (SIGHUP, file
    /// poll, store sync) and admin writes.
    changing: tokio::sync::Mutex<()>,
    /// Counters visible to tests/metrics.
    pub reloads: AtomicU64,
    pub rejected_reloads: AtomicU64,
    /// Boot settings as loaded at start (to warn about unreloadable changes).
    boot: BootConfig,
    port_override: Option<u16>,
    /// Database mode: the state loaded from the store. The file's dynamic
    /// sections and key store are then ignored (the file still gives the
    /// boot settings).
    managed: ArcSwapOption<Versioned>,
}

fn text_hash(t: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

fn one_error(path: &str, msg: String) -> ConfigErrors {
    ConfigErrors(vec![config::ConfigError::new(path, msg)])
}

/// What one (re)load reads: the file's config and the state to compile.
type Inputs = Result<(config::FileConfig, State), ConfigErrors>;

/// Reads the config file and, unless `managed` gives the state, its key
/// store. Returns the hash of what was read (change detection) and the
/// checked result.
fn read_inputs(path: &Path, managed: Option<&Versioned>) -> (u64, Inputs) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let msg = format!("cannot read config file {}: {e}", path.display());
            return (0, Err(one_error("", msg)));
        }
    };
    let mut hash = text_hash(&text);
    let cfg = match config::parse_and_validate_at(&text, &config::base_dir(path)) {
        Ok(c) => c,
        Err(e) => return (hash, Err(e)),
    };
    if let Some(m) = managed {
        hash ^= m.version.rotate_left(29);
        return (hash, Ok((cfg, m.state.clone())));
    }
    let configured = cfg
        .security
        .auth
        .as_ref()
        .and_then(|a| a.key_store.as_deref());
    if let Err(e) = config::check_key_store(path, configured) {
        return (hash, Err(ConfigErrors(vec![e])));
    }
    let store = store_path(path, configured);
    hash ^= text_hash(&std::fs::read_to_string(&store).unwrap_or_default()).rotate_left(17);
    match load_keys(&store) {
        Ok(keys) => {
            let state = State {
                config: cfg.dynamic(),
                keys,
            };
            (hash, Ok((cfg, state)))
        }
        Err(m) => (hash, Err(one_error("security.auth.keyStore", m))),
    }
}

impl ConfigHandle {
    /// Loads, validates and compiles the file (and its key store) for the
    /// first time. `port_override` is the `PORT` variable. With `managed`
    /// (database mode), the dynamic config and keys come from it instead.
    pub fn load(
        path: &Path,
        port_override: Option<u16>,
        managed: Option<Versioned>,
    ) -> Result<(ConfigHandle, BootConfig, config::FileConfig), ConfigErrors> {
        let (hash, inputs) = read_inputs(path, managed.as_ref());
        let (cfg, state) = inputs?;
        let version = managed.as_ref().map_or(1, |m| m.version);
        let snap = snapshot::compile(&state.config, &state.keys, None, version)?;
        let boot = BootConfig::from_file(&cfg, port_override);
        Ok((
            ConfigHandle {
                live: ArcSwap::from_pointee(snap),
                path: path.to_path_buf(),
                file_hash: AtomicU64::new(hash),
                changing: tokio::sync::Mutex::new(()),
                reloads: AtomicU64::new(0),
                rejected_reloads: AtomicU64::new(0),
                boot: boot.clone(),
                port_override,
                managed: ArcSwapOption::new(managed.map(Arc::new)),
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

    /// The config file this handle reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True in database mode (the store owns the dynamic config).
    pub fn is_managed(&self) -> bool {
        self.managed.load().is_some()
    }

    /// The state behind the live snapshot (what an admin write starts from).
    pub fn current_state(&self) -> (u64, State) {
        let snap = self.current();
        (
            snap.version,
            State {
                config: (*snap.source).clone(),
                keys: (*snap.key_file).clone(),
            },
        )
    }

    /// Takes the change lock: while held, nothing else changes the live
    /// config (admin writes hold it from reading the state to installing).
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.changing.lock().await
    }

    /// Validates and compiles `state` against the live snapshot without
    /// installing it (blocking: resolves DNS). The result is installed with
    /// [`ConfigHandle::install`].
    pub fn prepare(&self, state: &State) -> Result<Snapshot, ConfigErrors> {
        state.config.validate()?;
        if !self.is_managed() {
            let auth = state.config.security.auth.as_ref();
            config::check_key_store(&self.path, auth.and_then(|a| a.key_store.as_deref()))
                .map_err(|e| ConfigErrors(vec![e]))?;
        }
        let prev = self.current();
        snapshot::compile(&state.config, &state.keys, Some(&prev), prev.version)
    }

    /// Makes a prepared snapshot live as `version`. In database mode the
    /// state is remembered as the managed one; in file mode the file (just
    /// rewritten by the store) is not reloaded a second time. Call with the
    /// change lock held.
    pub fn install(&self, snap: Snapshot, version: u64, state: State) {
        let managed = self.is_managed().then_some(Versioned { version, state });
        self.swap(snap, version, managed);
    }

    /// Database mode: compiles and installs a state read from the store
    /// (another node's write). Keeps the old config when it does not compile.
    pub fn apply_managed(&self, v: Versioned) -> Result<u64, ConfigErrors> {
        let _guard = self.changing.blocking_lock();
        if self.current().version == v.version {
            return Ok(v.version);
        }
        let snap = match self.prepare(&v.state) {
            Ok(s) => s,
            Err(e) => return self.reject_version(e, Some(v.version)),
        };
        let version = v.version;
        self.swap(snap, version, Some(v));
        Ok(version)
    }

    /// Makes `snap` live as `version` (remembering `managed` as the store's
    /// state), and records the inputs behind it so the file poll does not
    /// load them a second time.
    fn swap(&self, mut snap: Snapshot, version: u64, managed: Option<Versioned>) {
        snap.version = version;
        if let Some(m) = managed {
            self.managed.store(Some(Arc::new(m)));
        }
        let (hash, _) = read_inputs(&self.path, self.managed.load().as_deref());
        self.file_hash.store(hash, Ordering::Relaxed);
        let old = self.live.swap(Arc::new(snap));
        forget_gone(&old, &self.current());
        self.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(version, "config applied");
        self.changed(version);
    }

    /// Re-reads the file and swaps the snapshot in when it is valid.
    /// `only_if_changed` skips work when the text is unchanged.
    /// Returns the live version afterwards. Blocking (call it off the
    /// runtime's worker threads).
    pub fn reload(&self, only_if_changed: bool) -> Result<u64, ConfigErrors> {
        let _guard = self.changing.blocking_lock();
        let managed = self.managed.load_full();
        let (hash, inputs) = read_inputs(&self.path, managed.as_deref());
        let prev = self.current();
        if only_if_changed && hash == self.file_hash.load(Ordering::Relaxed) {
            return Ok(prev.version);
        }
        // Remember what was tried, so an unchanged bad file is reported once.
        self.file_hash.store(hash, Ordering::Relaxed);
        let (cfg, state) = match inputs {
            Ok(i) => i,
            Err(e) => return self.reject(e),
        };
        if managed.is_some() && cfg.dynamic() != state.config {
            tracing::warn!(
                path = %self.path.display(),
                "config file: routes, upstreams, security, limits and logging come from the database in database mode; the file's are ignored (import them with POST /api/config)"
            );
        }
        let version = managed.as_ref().map_or(prev.version + 1, |m| m.version);
        let snap = match snapshot::compile(&state.config, &state.keys, Some(&prev), version) {
            Ok(s) => s,
            Err(e) => return self.reject(e),
        };
        if BootConfig::from_file(&cfg, self.port_override) != self.boot {
            tracing::warn!(
                "config reload: proxy listener/process or admin settings changed; they apply after a restart or binary upgrade (flexgate start -u)"
            );
        }
        let old = self.live.swap(Arc::new(snap));
        forget_gone(&old, &self.current());
        self.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(version, path = %self.path.display(), "config reloaded");
        self.changed(version);
        Ok(version)
    }

    /// Emits `config.changed`. In database mode the version is the
    /// cluster's, and every node installs it: the event is named after the
    /// version so webhooks deliver it once per cluster.
    fn changed(&self, version: u64) {
        let data = serde_json::json!({"version": version});
        if self.managed.load().is_some() {
            crate::events::emit_with_id(
                crate::events::Event::ConfigChanged,
                format!("evt_config_v{version}"),
                data,
            );
        } else {
            crate::events::emit(crate::events::Event::ConfigChanged, data);
        }
    }

    fn reject(&self, errs: ConfigErrors) -> Result<u64, ConfigErrors> {
        self.reject_version(errs, None)
    }

    /// [`Self::reject`]; `version` is the cluster's version that was refused
    /// (database mode): every node refuses it, and its `config.rejected` is
    /// named after it so webhooks deliver it once.
    fn reject_version(
        &self,
        errs: ConfigErrors,
        version: Option<u64>,
    ) -> Result<u64, ConfigErrors> {
        self.rejected_reloads.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            path = %self.path.display(),
            errors = %errs.0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "),
            "config reload rejected; the previous config stays live"
        );
        let data = serde_json::json!({"errors": errs.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(), "version": version});
        match version {
            Some(v) => crate::events::emit_with_id(
                crate::events::Event::ConfigRejected,
                format!("evt_config_rejected_v{v}"),
                data,
            ),
            None => crate::events::emit(crate::events::Event::ConfigRejected, data),
        }
        Err(errs)
    }
}

/// Removes the metric series of the routes and upstreams `old` had and
/// `new` has not: a deleted route's counters leave `/metrics` (a route
/// recreated with the same id starts again from zero, as counters do on a
/// restart).
fn forget_gone(old: &Snapshot, new: &Snapshot) {
    let m = crate::metrics::metrics();
    for id in old.routes_by_id.keys() {
        if !new.routes_by_id.contains_key(id) {
            m.forget_route(id);
        }
    }
    for up in &old.upstreams {
        if !new.upstreams.iter().any(|u| u.name == up.name) {
            m.forget_upstream(&up.name);
        }
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
