//! The embedded store (default; no database): the config file is the
//! source of truth, and admin writes rewrite it.
//!
//! - **Config**: the file is rewritten atomically (temp file, fsync,
//!   rename), keeping its boot sections (`proxy` listeners/process,
//!   `admin`, `database`, `redis`, `nats`) and replacing the dynamic ones.
//!   The text it replaced is kept as `<file>.prev` (rollback: copy it back;
//!   the running gateway reloads it within a second). Comments of a
//!   hand-written file do not survive the first admin write; the original
//!   text is in `.prev` right after it.
//! - **Generated keys**: the key store file (`security.auth.keyStore`), the
//!   same file `flexgate keys create` writes.
//! - **Audit log**: JSON lines in `flexgate-audit.jsonl` beside the config
//!   file, rotated at 10 MiB, five old files kept (`.1` … `.5`).
//!
//! Order of a commit: config file, then key store, then audit line. A
//! crash between them can lose the audit line of the last change, never
//! tear a file. Versions are the live snapshot's (this process's counter);
//! the admin layer serialises writes, and a commit whose expected version
//! is not the live one is a conflict.

use super::{AuditEntry, AuditPage, AuditQuery, State, Store, StoreError, Versioned};
use crate::atomic_file;
use crate::config::{self, FileConfig};
use crate::keys::store::{load as load_keys, save as save_keys};
use async_trait::async_trait;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Rotate the audit file beyond this size.
const AUDIT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Rotated audit files kept.
const AUDIT_KEEP: usize = 5;

/// The embedded store of one config file.
pub struct FileStore {
    config_path: PathBuf,
    keys_path: PathBuf,
    audit: Mutex<AuditLog>,
    live_version: Box<dyn Fn() -> u64 + Send + Sync>,
}

struct AuditLog {
    path: PathBuf,
    next_id: u64,
}

impl FileStore {
    /// `live_version` reports the version of the live snapshot.
    pub fn new(
        config_path: &Path,
        keys_path: &Path,
        live_version: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> FileStore {
        let audit_path = config_path
            .parent()
            .unwrap_or(Path::new("."))
            .join("flexgate-audit.jsonl");
        let next_id = last_audit_id(&audit_path) + 1;
        FileStore {
            config_path: config_path.to_path_buf(),
            keys_path: keys_path.to_path_buf(),
            audit: Mutex::new(AuditLog {
                path: audit_path,
                next_id,
            }),
            live_version: Box::new(live_version),
        }
    }

    /// The store of a live config handle's file (versions are the handle's).
    pub fn for_handle(
        handle: &std::sync::Arc<crate::reload::ConfigHandle>,
        file: &FileConfig,
    ) -> std::sync::Arc<dyn Store> {
        let keys = crate::keys::store::store_path(
            handle.path(),
            file.security
                .auth
                .as_ref()
                .and_then(|a| a.key_store.as_deref()),
        );
        let live = handle.clone();
        std::sync::Arc::new(FileStore::new(handle.path(), &keys, move || {
            live.current().version
        }))
    }

    /// Where the previous config text is kept.
    pub fn prev_path(&self) -> PathBuf {
        let mut p = self.config_path.clone().into_os_string();
        p.push(".prev");
        PathBuf::from(p)
    }

    fn read_file(&self) -> Result<(String, FileConfig), StoreError> {
        let text = std::fs::read_to_string(&self.config_path).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot read config file {}: {e}",
                self.config_path.display()
            ))
        })?;
        let cfg = config::parse(&text).map_err(|e| {
            StoreError::Invalid(format!(
                "config file {} no longer parses: {e}",
                self.config_path.display()
            ))
        })?;
        Ok((text, cfg))
    }

    fn commit_blocking(
        &self,
        expected: u64,
        next: &State,
        audit: &[AuditEntry],
    ) -> Result<u64, StoreError> {
        let current = (self.live_version)();
        if current != expected {
            return Err(StoreError::Conflict { current });
        }
        let version = expected + 1;
        let (old_text, file) = self.read_file()?;
        if file.dynamic() != next.config {
            let merged = merge_dynamic(file, &next.config);
            let text = format!(
                "# FlexGate config, last written by the admin API at {} (version {version}).\n\
                 # The text this replaced is in {}.\n{}",
                crate::clock::now_rfc3339(),
                self.prev_path()
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                config::to_file_yaml(&merged, &old_text, &config::base_dir(&self.config_path))
            );
            atomic_file::write(&self.prev_path(), old_text.as_bytes())
                .and_then(|()| atomic_file::write(&self.config_path, text.as_bytes()))
                .map_err(|e| {
                    StoreError::Unavailable(format!(
                        "cannot write config file {}: {e}",
                        self.config_path.display()
                    ))
                })?;
        }
        let keys = load_keys(&self.keys_path).map_err(StoreError::Invalid)?;
        if keys != next.keys {
            save_keys(&self.keys_path, &next.keys).map_err(StoreError::Unavailable)?;
        }
        let mut log = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        for entry in audit {
            let mut e = entry.clone();
            e.version = version;
            if let Err(err) = log.append(&mut e) {
                tracing::error!(path = %log.path.display(), "cannot write the audit log: {err}");
            }
        }
        Ok(version)
    }
}

/// `file` with its dynamic sections replaced by `dynamic` (boot keys kept).
pub fn merge_dynamic(file: FileConfig, dynamic: &config::DynamicConfig) -> FileConfig {
    let d = dynamic.to_file_config();
    let mut proxy = file.proxy;
    proxy.timeout = d.proxy.timeout;
    proxy.connect_timeout = d.proxy.connect_timeout;
    proxy.read_timeout = d.proxy.read_timeout;
    proxy.write_timeout = d.proxy.write_timeout;
    proxy.max_body_size = d.proxy.max_body_size;
    proxy.trusted_proxies = d.proxy.trusted_proxies;
    proxy.limits.max_header_bytes = d.proxy.limits.max_header_bytes;
    proxy.limits.max_headers = d.proxy.limits.max_headers;
    proxy.limits.max_uri_bytes = d.proxy.limits.max_uri_bytes;
    proxy.via_name = d.proxy.via_name;
    proxy.health_endpoints = d.proxy.health_endpoints;
    proxy.max_in_flight = d.proxy.max_in_flight;
    FileConfig {
        proxy,
        admin: file.admin,
        database: file.database,
        redis: file.redis,
        nats: file.nats,
        history: file.history,
        ..d
    }
}

impl AuditLog {
    fn append(&mut self, e: &mut AuditEntry) -> std::io::Result<()> {
        e.id = self.next_id;
        let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if std::fs::metadata(&self.path)
            .is_ok_and(|m| m.len() + line.len() as u64 > AUDIT_MAX_BYTES)
        {
            self.rotate()?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(&line)?;
        f.sync_data()?;
        self.next_id += 1;
        Ok(())
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    fn rotate(&self) -> std::io::Result<()> {
        let _ = std::fs::remove_file(self.rotated(AUDIT_KEEP));
        for n in (1..AUDIT_KEEP).rev() {
            let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
        }
        std::fs::rename(&self.path, self.rotated(1))
    }

    /// Every entry of one file (unreadable lines are skipped).
    fn read(path: &Path) -> Vec<AuditEntry> {
        let Ok(f) = std::fs::File::open(path) else {
            return Vec::new();
        };
        std::io::BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }

    fn query(&self, q: &AuditQuery) -> AuditPage {
        let size = q.page_size();
        let mut entries = Vec::with_capacity(size + 1);
        // Newest file first, newest line first.
        let files =
            std::iter::once(self.path.clone()).chain((1..=AUDIT_KEEP).map(|n| self.rotated(n)));
        'files: for path in files {
            for e in Self::read(&path).into_iter().rev() {
                if q.matches(&e) {
                    entries.push(e);
                    if entries.len() > size {
                        break 'files;
                    }
                }
            }
        }
        let next = (entries.len() > size).then(|| {
            entries.truncate(size);
            entries.last().map_or(0, |e| e.id)
        });
        AuditPage { entries, next }
    }
}

fn last_audit_id(path: &Path) -> u64 {
    AuditLog::read(path).last().map_or(0, |e| e.id)
}

#[async_trait]
impl Store for FileStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn load(&self) -> Result<Option<Versioned>, StoreError> {
        let (_, file) = self.read_file()?;
        let keys = load_keys(&self.keys_path).map_err(StoreError::Invalid)?;
        Ok(Some(Versioned {
            version: (self.live_version)(),
            state: State {
                config: file.dynamic(),
                keys,
            },
        }))
    }

    async fn version(&self) -> Result<u64, StoreError> {
        Ok((self.live_version)())
    }

    async fn commit(
        &self,
        expected: u64,
        next: &State,
        audit: &[AuditEntry],
    ) -> Result<u64, StoreError> {
        // Small files and one fsync each: done inline (the admin runtime is
        // not the proxy's).
        self.commit_blocking(expected, next, audit)
    }

    async fn audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let log = self.audit.lock().unwrap_or_else(|p| p.into_inner());
        Ok(log.query(query))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    const FILE: &str = "# hand-written\nproxy:\n  port: 3100\n  timeout: 5000\nadmin:\n  token: t\nupstreams:\n  - name: a\n    url: http://127.0.0.1:9\nroutes:\n  - path: /a/*\n    upstream: a\n";

    fn entry(action: &str, resource: &str) -> AuditEntry {
        AuditEntry {
            id: 0,
            time: crate::clock::now_rfc3339(),
            actor: "test".into(),
            action: action.into(),
            resource: resource.into(),
            before: None,
            after: None,
            version: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn commit_rewrites_dynamic_sections_keeps_boot_and_prev() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flexgate.yaml");
        std::fs::write(&path, FILE).unwrap();
        let live = Arc::new(AtomicU64::new(1));
        let l = live.clone();
        let store = FileStore::new(&path, &dir.path().join("keys.json"), move || {
            l.load(Ordering::Relaxed)
        });
        let mut state = store.load().await.unwrap().unwrap().state;
        state.config.routes[0].path = Some("/b/*".parse().unwrap());
        assert_eq!(
            store.commit(0, &state, &[]).await,
            Err(StoreError::Conflict { current: 1 })
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), FILE, "untouched");
        let v = store
            .commit(1, &state, &[entry("update", "route/route-0")])
            .await
            .unwrap();
        assert_eq!(v, 2);
        let text = std::fs::read_to_string(&path).unwrap();
        let back = config::parse_and_validate(&text).unwrap();
        assert_eq!(back.proxy.port, Some(3100), "boot keys kept");
        assert_eq!(back.admin.token.as_deref(), Some("t"));
        assert_eq!(back.dynamic(), state.config, "round trip");
        assert_eq!(std::fs::read_to_string(store.prev_path()).unwrap(), FILE);
        let page = store.audit(&AuditQuery::default()).await.unwrap();
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.entries[0].version, 2);
        assert_eq!(page.entries[0].id, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn audit_pages_newest_first_and_ids_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flexgate.yaml");
        std::fs::write(&path, FILE).unwrap();
        let keys = dir.path().join("keys.json");
        let store = FileStore::new(&path, &keys, || 1);
        let state = store.load().await.unwrap().unwrap().state;
        let entries: Vec<_> = (0..5)
            .map(|i| entry("create", &format!("route/r{i}")))
            .collect();
        store.commit(1, &state, &entries).await.unwrap();
        let store = FileStore::new(&path, &keys, || 1);
        store
            .commit(1, &state, &[entry("delete", "route/r0")])
            .await
            .unwrap();
        let q = AuditQuery {
            limit: Some(4),
            ..Default::default()
        };
        let page = store.audit(&q).await.unwrap();
        let ids: Vec<u64> = page.entries.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![6, 5, 4, 3]);
        assert_eq!(page.next, Some(3));
        let page2 = store
            .audit(&AuditQuery {
                limit: Some(4),
                before: page.next,
                ..Default::default()
            })
            .await
            .unwrap();
        let ids: Vec<u64> = page2.entries.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![2, 1]);
        assert_eq!(page2.next, None);
        let deletes = store
            .audit(&AuditQuery {
                action: Some("delete".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(deletes.entries.len(), 1);
    }
}
