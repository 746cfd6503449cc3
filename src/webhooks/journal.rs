//! The embedded delivery store (no database): every delivery in memory, and
//! an append-only journal file beside the config,
//! `flexgate-webhooks.jsonl` ([`JournalStore::path_beside`]).
//!
//! # The file
//!
//! JSON lines, each a full record, replayed in order at [`JournalStore::open`]:
//!
//! - `{"put": <Delivery>}`: a delivery created or updated (the whole of it);
//! - `{"del": "<id>"}`: a delivery removed (prune);
//! - `{"health": {"webhook": "<id>", "failingSince": <ms or null>}}`: since
//!   when a subscription has been failing (`null`: it is not).
//!
//! A torn last line (the process died mid-write) is dropped with a warning;
//! any other unreadable line is [`StoreError::Invalid`] with its number.
//!
//! # Durability
//!
//! Each call that changes something ([`DeliveryStore::enqueue`],
//! [`DeliveryStore::finish`], [`DeliveryStore::replay`],
//! [`DeliveryStore::record_outcome`], [`DeliveryStore::prune`]) builds its
//! lines in one buffer, appends it with one write (the file is opened with
//! `O_APPEND`, mode 0600) and one `fdatasync`: a batch of a hundred
//! deliveries costs one fsync. The file is written before memory changes,
//! so a failed call changed nothing: the file is cut back to its last good
//! length and the call answers [`StoreError::Unavailable`].
//!
//! When the file grows beyond max(4 MiB, 4 × the live records), it is
//! rewritten with the live records only ([`crate::atomic_file`]: temp
//! file, fsync, rename) and reopened for appending; [`JournalStore::open`]
//! compacts too when the file holds anything dead (superseded records,
//! removals, a torn tail).
//!
//! # Leases
//!
//! One process owns the file, so leases live in memory only
//! (`id → until`): after a restart no delivery is leased, and one that was
//! mid-attempt when the process died is simply due again (at-least-once;
//! receivers deduplicate by the `webhook-id` header). A sender whose
//! attempt outlived its lease, while another sender took the delivery,
//! still records its outcome: of the two finishes the later one wins.
//! Finishing a delivery removed meanwhile (its subscription was deleted)
//! does nothing.
//!
//! # The log and pruning
//!
//! The log runs newest first by `(created_ms, id)`; the `before` cursor is
//! a delivery id, and an unknown one gives an empty page (pruning it took
//! everything older). Prune removes finished deliveries updated (finished)
//! more than [`KEEP_FINISHED_MS`] ago or beyond the newest
//! [`KEEP_FINISHED`] of their subscription, and everything of the
//! subscriptions not live; pending ones of a live subscription stay.
//!
//! # Threads
//!
//! Everything sits behind one [`std::sync::Mutex`]. The callers are
//! background tasks sharing one runtime thread, so every call runs on
//! tokio's blocking pool ([`tokio::task::spawn_blocking`]): an fsync or a
//! compaction never stalls the other background tasks, and neither does a
//! read waiting for the lock meanwhile.

use super::delivery::{
    Delivery, DeliveryPage, DeliveryQuery, DeliveryStatus, DeliveryStore, KEEP_FINISHED,
    KEEP_FINISHED_MS, ORPHAN_GRACE_MS,
};
use crate::atomic_file;
use crate::store::StoreError;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The journal's file name, beside the config file.
pub const FILE_NAME: &str = "flexgate-webhooks.jsonl";
/// Never compact a file smaller than this.
const COMPACT_MIN_BYTES: u64 = 4 * 1024 * 1024;
/// Compact when the file is this many times the live records.
const COMPACT_FACTOR: u64 = 4;

/// The embedded delivery store: memory, and the journal file.
pub struct JournalStore {
    /// `None` until this process owns the file ([`JournalStore::new`]).
    inner: Arc<Mutex<Option<Journal>>>,
    path: PathBuf,
    /// Set by [`DeliveryStore::close`]: the file is not opened again.
    closed: Arc<std::sync::atomic::AtomicBool>,
}

/// This process's hold on a journal: an exclusive `flock` on
/// `<journal>.lock`, released when the process exits. During a binary
/// upgrade (`start -u`) the old process keeps the journal until it exits;
/// the new one answers [`StoreError::Unavailable`] meanwhile (its events
/// wait in the dispatcher's bounded outboxes) and takes the file over once
/// the old one has stopped its webhook tasks and closed the store (at the
/// start of its drain, [`DeliveryStore::close`]), reading everything the
/// old one wrote.
struct Owner(#[allow(dead_code)] File);

impl Owner {
    fn take(journal: &Path) -> Result<Owner, StoreError> {
        use std::os::fd::AsRawFd;
        let path = journal.with_extension("jsonl.lock");
        let file = open_append(&path).map_err(|e| {
            StoreError::Unavailable(format!("webhook journal lock {}: {e}", path.display()))
        })?;
        // SAFETY: flock on a file descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(StoreError::Unavailable(
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    format!(
                    "webhook journal {} is held by another flexgate process (a binary upgrade in progress?); deliveries wait in memory until it exits",
                    journal.display()
                )
                } else {
                    format!("webhook journal lock {}: {e}", path.display())
                },
            ));
        }
        Ok(Owner(file))
    }
}

impl std::fmt::Debug for JournalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// One line of the file, as read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
enum Line {
    Put(Delivery),
    Del(String),
    Health(Health),
}

/// One line of the file, as written.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum LineRef<'a> {
    Put(&'a Delivery),
    Del(&'a str),
    Health(HealthRef<'a>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Health {
    webhook: String,
    failing_since: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthRef<'a> {
    webhook: &'a str,
    failing_since: Option<u64>,
}

/// A stored delivery and the length of its `put` line.
struct Stored {
    d: Delivery,
    len: u64,
}

/// One subscription's indexes.
#[derive(Default)]
struct Hook {
    /// Every delivery, by `(created_ms, id)`: the log runs it backwards.
    by_created: BTreeSet<(u64, String)>,
    /// The pending ones, by `(next_attempt_ms, created_ms, id)`.
    due: BTreeSet<(u64, u64, String)>,
}

impl Hook {
    fn is_empty(&self) -> bool {
        self.by_created.is_empty() && self.due.is_empty()
    }
}

/// Everything behind the lock.
struct Journal {
    /// Held while the journal is open.
    _owner: Option<Owner>,
    path: PathBuf,
    /// Open for appending.
    file: File,
    /// Bytes in the file (every successful append included).
    file_len: u64,
    /// Bytes the live records take as lines: what a compaction writes.
    live_len: u64,
    deliveries: HashMap<String, Stored>,
    /// `(webhook_id, event_id) → id`.
    events: HashMap<(String, String), String>,
    hooks: HashMap<String, Hook>,
    /// Since when each failing subscription has been failing.
    failing: HashMap<String, u64>,
    /// `id → until_ms` (memory only).
    leases: HashMap<String, u64>,
}

impl JournalStore {
    /// The journal of the config file `config_path`:
    /// `<its folder>/flexgate-webhooks.jsonl`.
    pub fn path_beside(config_path: &Path) -> PathBuf {
        config_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(FILE_NAME)
    }

    /// Opens (or creates) the journal at `path` and replays it; compacts it
    /// when it holds dead records. Blocking.
    pub fn open(path: &Path) -> Result<JournalStore, StoreError> {
        let journal = Journal::open_owned(path, false)?;
        Ok(JournalStore {
            inner: Arc::new(Mutex::new(Some(journal))),
            path: path.to_path_buf(),
            closed: Default::default(),
        })
    }

    /// The journal at `path`, opened by the first call that needs it and
    /// once this process owns the file ([`Owner`]); until then every call
    /// answers [`StoreError::Unavailable`]. No I/O here: a journal that
    /// cannot be opened never stops the gateway from starting.
    pub fn new(path: &Path) -> JournalStore {
        JournalStore {
            inner: Arc::new(Mutex::new(None)),
            path: path.to_path_buf(),
            closed: Default::default(),
        }
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `op` under the lock on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Journal) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        let path = self.path.clone();
        let closed = self.closed.clone();
        tokio::task::spawn_blocking(move || {
            let mut j = inner.lock().unwrap_or_else(|p| p.into_inner());
            if closed.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(StoreError::Unavailable(
                    "webhook journal closed (this process is shutting down)".into(),
                ));
            }
            if j.is_none() {
                *j = Some(Journal::open_owned(&path, true)?);
            }
            match j.as_mut() {
                Some(j) => op(j),
                None => Err(StoreError::Unavailable("webhook journal not open".into())),
            }
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("webhook journal: the task failed: {e}")))?
    }
}

/// A line's bytes, newline included.
fn line(l: &LineRef<'_>) -> Result<Vec<u8>, StoreError> {
    let mut v = serde_json::to_vec(l)
        .map_err(|e| StoreError::Invalid(format!("cannot serialise a journal record: {e}")))?;
    v.push(b'\n');
    Ok(v)
}

/// A pending delivery without a next attempt time is due at once (at its
/// last update).
fn normalised(mut d: Delivery) -> Delivery {
    if d.status == DeliveryStatus::Pending && d.next_attempt_ms.is_none() {
        d.next_attempt_ms = Some(d.updated_ms);
    }
    d
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let f = o.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // A file created by something else keeps its mode otherwise.
        if let Err(e) = f.set_permissions(std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(path = %path.display(), "cannot make the webhook journal 0600: {e}");
        }
    }
    Ok(f)
}

impl Journal {
    /// Takes ownership of the file, then opens it. With `move_aside`, a
    /// file that cannot be read back is moved aside
    /// (`<file>.corrupt-<unix time>`, logged) and a new one started: the
    /// gateway keeps delivering new events.
    fn open_owned(path: &Path, move_aside: bool) -> Result<Journal, StoreError> {
        let owner = Owner::take(path)?;
        let journal = match Journal::open(path) {
            Err(StoreError::Invalid(why)) if move_aside => {
                let aside =
                    path.with_extension(format!("jsonl.corrupt-{}", crate::clock::unix_now()));
                tracing::error!(journal = %path.display(), moved_to = %aside.display(), "webhook journal unreadable ({why}); moved aside, starting a new one");
                std::fs::rename(path, &aside).map_err(|e| {
                    StoreError::Unavailable(format!(
                        "webhook journal {}: cannot move it aside: {e}",
                        path.display()
                    ))
                })?;
                Journal::open(path)?
            }
            other => other?,
        };
        Ok(Journal {
            _owner: Some(owner),
            ..journal
        })
    }

    fn unavailable(&self, what: &str, e: std::io::Error) -> StoreError {
        StoreError::Unavailable(format!(
            "webhook journal {}: {what}: {e}",
            self.path.display()
        ))
    }

    fn open(path: &Path) -> Result<Journal, StoreError> {
        let unavailable = |what: &str, e: std::io::Error| {
            StoreError::Unavailable(format!("webhook journal {}: {what}: {e}", path.display()))
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(unavailable("cannot read it", e)),
        };
        let file = open_append(path).map_err(|e| unavailable("cannot open it", e))?;
        let mut j = Journal {
            _owner: None,
            path: path.to_path_buf(),
            file,
            file_len: bytes.len() as u64,
            live_len: 0,
            deliveries: HashMap::new(),
            events: HashMap::new(),
            hooks: HashMap::new(),
            failing: HashMap::new(),
            leases: HashMap::new(),
        };
        // Whether the file is exactly its live records, one per line.
        let mut tidy = true;
        let segments: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        let last = segments.len() - 1;
        for (i, seg) in segments.iter().enumerate() {
            // The segment after the last newline: empty unless torn.
            let complete = i < last;
            if seg.iter().all(u8::is_ascii_whitespace) {
                tidy &= !complete && seg.is_empty();
                continue;
            }
            let len = seg.len() as u64 + 1;
            match serde_json::from_slice::<Line>(seg) {
                Ok(l) => {
                    tidy &= complete;
                    match l {
                        Line::Put(d) => j.apply_put(normalised(d), len),
                        Line::Del(id) => j.apply_del(&id),
                        Line::Health(h) => j.apply_health(&h.webhook, h.failing_since),
                    }
                }
                Err(e) if !complete => {
                    tracing::warn!(
                        path = %path.display(),
                        line = i + 1,
                        "webhook journal: ignoring a torn last line ({} bytes; the process \
                         stopped mid-write): {e}",
                        seg.len()
                    );
                    tidy = false;
                }
                Err(e) => {
                    return Err(StoreError::Invalid(format!(
                        "webhook journal {} line {}: {e}",
                        path.display(),
                        i + 1
                    )))
                }
            }
        }
        if !tidy || j.file_len != j.live_len {
            j.compact()
                .map_err(|e| unavailable("cannot compact it", e))?;
        }
        Ok(j)
    }

    /// Appends `buf` (whole lines) and syncs it. On an error the file is
    /// cut back to its last good length and nothing counts as written.
    fn append(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        if buf.is_empty() {
            return Ok(());
        }
        let out = self
            .file
            .write_all(buf)
            .and_then(|()| self.file.sync_data());
        match out {
            Ok(()) => {
                self.file_len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Err(t) = self.file.set_len(self.file_len) {
                    tracing::error!(
                        path = %self.path.display(),
                        "webhook journal: cannot cut a failed append back: {t}"
                    );
                }
                Err(self.unavailable("cannot append to it", e))
            }
        }
    }

    /// After a successful append: compacts when the file is mostly dead.
    fn maybe_compact(&mut self) {
        if self.file_len > COMPACT_MIN_BYTES.max(self.live_len.saturating_mul(COMPACT_FACTOR)) {
            let before = self.file_len;
            match self.compact() {
                Ok(()) => tracing::debug!(
                    path = %self.path.display(),
                    before,
                    after = self.file_len,
                    "webhook journal compacted"
                ),
                // The file is still whole: keep appending to it.
                Err(e) => tracing::warn!(
                    path = %self.path.display(),
                    "webhook journal: compaction failed (retried on the next write): {e}"
                ),
            }
        }
    }

    /// Rewrites the file with the live records only, and reopens it.
    fn compact(&mut self) -> std::io::Result<()> {
        let mut ds: Vec<&Stored> = self.deliveries.values().collect();
        ds.sort_by(|a, b| (a.d.created_ms, &a.d.id).cmp(&(b.d.created_ms, &b.d.id)));
        let mut buf = Vec::with_capacity(self.live_len as usize);
        let mut lens = Vec::with_capacity(ds.len());
        for s in ds {
            let l = line(&LineRef::Put(&s.d)).map_err(std::io::Error::other)?;
            lens.push((s.d.id.clone(), l.len() as u64));
            buf.extend_from_slice(&l);
        }
        let mut failing: Vec<(&String, &u64)> = self.failing.iter().collect();
        failing.sort();
        for (w, since) in failing {
            let l = line(&LineRef::Health(HealthRef {
                webhook: w,
                failing_since: Some(*since),
            }))
            .map_err(std::io::Error::other)?;
            buf.extend_from_slice(&l);
        }
        atomic_file::write(&self.path, &buf)?;
        self.file = open_append(&self.path)?;
        self.file_len = buf.len() as u64;
        self.live_len = buf.len() as u64;
        for (id, len) in lens {
            if let Some(s) = self.deliveries.get_mut(&id) {
                s.len = len;
            }
        }
        Ok(())
    }

    fn health_len(webhook: &str, since: Option<u64>) -> u64 {
        line(&LineRef::Health(HealthRef {
            webhook,
            failing_since: since,
        }))
        .map_or(0, |l| l.len() as u64)
    }

    fn index(&mut self, d: &Delivery) {
        self.events
            .insert((d.webhook_id.clone(), d.event_id.clone()), d.id.clone());
        let h = self.hooks.entry(d.webhook_id.clone()).or_default();
        h.by_created.insert((d.created_ms, d.id.clone()));
        if d.status == DeliveryStatus::Pending {
            h.due
                .insert((d.next_attempt_ms.unwrap_or(0), d.created_ms, d.id.clone()));
        }
    }

    fn unindex(&mut self, d: &Delivery) {
        let key = (d.webhook_id.clone(), d.event_id.clone());
        if self.events.get(&key) == Some(&d.id) {
            self.events.remove(&key);
        }
        if let Some(h) = self.hooks.get_mut(&d.webhook_id) {
            h.by_created.remove(&(d.created_ms, d.id.clone()));
            h.due
                .remove(&(d.next_attempt_ms.unwrap_or(0), d.created_ms, d.id.clone()));
            if h.is_empty() {
                self.hooks.remove(&d.webhook_id);
            }
        }
    }

    fn apply_put(&mut self, d: Delivery, len: u64) {
        if let Some(old) = self.deliveries.remove(&d.id) {
            self.unindex(&old.d);
            self.live_len = self.live_len.saturating_sub(old.len);
        }
        self.index(&d);
        self.live_len += len;
        self.deliveries.insert(d.id.clone(), Stored { d, len });
    }

    fn apply_del(&mut self, id: &str) {
        if let Some(old) = self.deliveries.remove(id) {
            self.unindex(&old.d);
            self.live_len = self.live_len.saturating_sub(old.len);
        }
        self.leases.remove(id);
    }

    fn apply_health(&mut self, webhook: &str, since: Option<u64>) {
        if let Some(old) = self.failing.remove(webhook) {
            self.live_len = self
                .live_len
                .saturating_sub(Self::health_len(webhook, Some(old)));
        }
        if let Some(s) = since {
            self.live_len += Self::health_len(webhook, Some(s));
            self.failing.insert(webhook.to_string(), s);
        }
    }

    /// Writes `puts`, then applies them.
    fn put_all(&mut self, puts: Vec<Delivery>) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        let mut lens = Vec::with_capacity(puts.len());
        for d in &puts {
            let l = line(&LineRef::Put(d))?;
            lens.push(l.len() as u64);
            buf.extend_from_slice(&l);
        }
        self.append(&buf)?;
        for (d, len) in puts.into_iter().zip(lens) {
            self.apply_put(d, len);
        }
        self.maybe_compact();
        Ok(())
    }

    fn enqueue(&mut self, new: Vec<Delivery>) -> Result<usize, StoreError> {
        let mut seen_ids = HashSet::new();
        let mut seen_events = HashSet::new();
        let puts: Vec<Delivery> = new
            .into_iter()
            .filter(|d| {
                let event = (d.webhook_id.clone(), d.event_id.clone());
                !self.deliveries.contains_key(&d.id)
                    && !self.events.contains_key(&event)
                    && seen_ids.insert(d.id.clone())
                    && seen_events.insert(event)
            })
            .map(normalised)
            .collect();
        let added = puts.len();
        self.put_all(puts)?;
        Ok(added)
    }

    fn lease_due(
        &mut self,
        webhooks: &[String],
        now_ms: u64,
        lease_ms: u64,
        max: usize,
    ) -> Vec<Delivery> {
        let mut due: Vec<(u64, u64, String)> = Vec::new();
        let wanted: HashSet<&String> = webhooks.iter().collect();
        for w in wanted {
            let Some(h) = self.hooks.get(w) else { continue };
            let mut taken = 0;
            for (next, created, id) in &h.due {
                if taken == max || *next > now_ms {
                    break;
                }
                if self.leases.get(id).is_some_and(|until| *until >= now_ms) {
                    continue;
                }
                due.push((*next, *created, id.clone()));
                taken += 1;
            }
        }
        due.sort();
        due.truncate(max);
        let until = now_ms.saturating_add(lease_ms);
        due.into_iter()
            .filter_map(|(_, _, id)| {
                let d = self.deliveries.get(&id)?.d.clone();
                self.leases.insert(id, until);
                Some(d)
            })
            .collect()
    }

    fn finish(&mut self, d: Delivery) -> Result<(), StoreError> {
        if !self.deliveries.contains_key(&d.id) {
            // Removed meanwhile (its subscription was deleted).
            tracing::debug!(id = %d.id, "webhook journal: finish of a removed delivery ignored");
            return Ok(());
        }
        let id = d.id.clone();
        self.put_all(vec![normalised(d)])?;
        self.leases.remove(&id);
        Ok(())
    }

    fn list(&self, webhook_id: &str, q: &DeliveryQuery) -> Result<DeliveryPage, StoreError> {
        let status = q.status;
        let size = q.page_size();
        let Some(h) = self.hooks.get(webhook_id) else {
            return Ok(DeliveryPage::default());
        };
        let upper = match &q.before {
            None => Bound::Unbounded,
            Some(id) => match self.deliveries.get(id) {
                Some(s) if s.d.webhook_id == webhook_id => {
                    Bound::Excluded((s.d.created_ms, id.clone()))
                }
                // Unknown (or pruned: everything older went with it).
                _ => return Ok(DeliveryPage::default()),
            },
        };
        let mut deliveries = Vec::with_capacity(size + 1);
        for (_, id) in h.by_created.range((Bound::Unbounded, upper)).rev() {
            let Some(s) = self.deliveries.get(id) else {
                continue;
            };
            if status.is_some_and(|st| s.d.status != st) {
                continue;
            }
            deliveries.push(s.d.clone());
            if deliveries.len() > size {
                break;
            }
        }
        let next = if deliveries.len() > size {
            deliveries.truncate(size);
            deliveries.last().map(|d| d.id.clone())
        } else {
            None
        };
        Ok(DeliveryPage { deliveries, next })
    }

    fn get(&self, webhook_id: &str, id: &str) -> Option<Delivery> {
        self.deliveries
            .get(id)
            .filter(|s| s.d.webhook_id == webhook_id)
            .map(|s| s.d.clone())
    }

    fn replay(
        &mut self,
        webhook_id: &str,
        id: &str,
        now_ms: u64,
    ) -> Result<Option<Delivery>, StoreError> {
        let Some(mut d) = self.get(webhook_id, id) else {
            return Ok(None);
        };
        if d.status == DeliveryStatus::Pending {
            return Ok(Some(d));
        }
        d.status = DeliveryStatus::Pending;
        d.attempts = 0;
        d.next_attempt_ms = Some(now_ms);
        d.updated_ms = now_ms;
        self.put_all(vec![d.clone()])?;
        self.leases.remove(id);
        Ok(Some(d))
    }

    fn pending_counts(&self) -> HashMap<String, u64> {
        self.hooks
            .iter()
            .filter(|(_, h)| !h.due.is_empty())
            .map(|(w, h)| (w.clone(), h.due.len() as u64))
            .collect()
    }

    fn record_outcome(
        &mut self,
        webhook_id: &str,
        success: bool,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let current = self.failing.get(webhook_id).copied();
        let next = if success {
            None
        } else {
            Some(current.unwrap_or(now_ms))
        };
        if next != current {
            let l = line(&LineRef::Health(HealthRef {
                webhook: webhook_id,
                failing_since: next,
            }))?;
            self.append(&l)?;
            self.apply_health(webhook_id, next);
            self.maybe_compact();
        }
        Ok(next)
    }

    fn prune(&mut self, live: &[String], now_ms: u64) -> Result<(), StoreError> {
        let live: HashSet<&str> = live.iter().map(String::as_str).collect();
        let cutoff = now_ms.saturating_sub(KEEP_FINISHED_MS);
        let mut dels: Vec<String> = Vec::new();
        let orphan_cutoff = now_ms.saturating_sub(ORPHAN_GRACE_MS);
        for (w, h) in &self.hooks {
            if !live.contains(w.as_str()) {
                dels.extend(
                    h.by_created
                        .iter()
                        .filter(|(_, id)| {
                            self.deliveries
                                .get(id)
                                .is_some_and(|s| s.d.updated_ms < orphan_cutoff)
                        })
                        .map(|(_, id)| id.clone()),
                );
                continue;
            }
            let mut finished = 0usize;
            for (_, id) in h.by_created.iter().rev() {
                let Some(s) = self.deliveries.get(id) else {
                    continue;
                };
                if s.d.status == DeliveryStatus::Pending {
                    continue;
                }
                finished += 1;
                if finished > KEEP_FINISHED || s.d.updated_ms < cutoff {
                    dels.push(id.clone());
                }
            }
        }
        let dropped: HashSet<&str> = dels.iter().map(String::as_str).collect();
        let mut healed: Vec<String> = self
            .failing
            .keys()
            .filter(|w| !live.contains(w.as_str()))
            .filter(|w| {
                self.hooks.get(w.as_str()).is_none_or(|h| {
                    h.by_created
                        .iter()
                        .all(|(_, id)| dropped.contains(id.as_str()))
                })
            })
            .cloned()
            .collect();
        dels.sort();
        healed.sort();
        let mut buf = Vec::new();
        for id in &dels {
            buf.extend_from_slice(&line(&LineRef::Del(id))?);
        }
        for w in &healed {
            buf.extend_from_slice(&line(&LineRef::Health(HealthRef {
                webhook: w,
                failing_since: None,
            }))?);
        }
        self.append(&buf)?;
        for id in &dels {
            self.apply_del(id);
        }
        for w in &healed {
            self.apply_health(w, None);
        }
        if !buf.is_empty() {
            self.maybe_compact();
        }
        Ok(())
    }
}

#[async_trait]
impl DeliveryStore for JournalStore {
    fn kind(&self) -> &'static str {
        "journal"
    }

    /// Releases the file (and its lock) at once, so the process that takes
    /// over in a binary upgrade owns it without waiting for this one's
    /// drain to end.
    async fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let inner = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || {
            inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        })
        .await;
    }

    async fn enqueue(&self, new: &[Delivery]) -> Result<usize, StoreError> {
        if new.is_empty() {
            return Ok(0);
        }
        let new = new.to_vec();
        self.run(move |j| j.enqueue(new)).await
    }

    async fn lease_due(
        &self,
        webhooks: &[String],
        now_ms: u64,
        lease_ms: u64,
        max: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        if webhooks.is_empty() || max == 0 {
            return Ok(Vec::new());
        }
        let webhooks = webhooks.to_vec();
        self.run(move |j| Ok(j.lease_due(&webhooks, now_ms, lease_ms, max)))
            .await
    }

    async fn finish(&self, d: &Delivery) -> Result<(), StoreError> {
        let d = d.clone();
        self.run(move |j| j.finish(d)).await
    }

    async fn list(&self, webhook_id: &str, q: &DeliveryQuery) -> Result<DeliveryPage, StoreError> {
        let (w, q) = (webhook_id.to_string(), q.clone());
        self.run(move |j| j.list(&w, &q)).await
    }

    async fn get(&self, webhook_id: &str, id: &str) -> Result<Option<Delivery>, StoreError> {
        let (w, id) = (webhook_id.to_string(), id.to_string());
        self.run(move |j| Ok(j.get(&w, &id))).await
    }

    async fn replay(
        &self,
        webhook_id: &str,
        id: &str,
        now_ms: u64,
    ) -> Result<Option<Delivery>, StoreError> {
        let (w, id) = (webhook_id.to_string(), id.to_string());
        self.run(move |j| j.replay(&w, &id, now_ms)).await
    }

    async fn pending_counts(&self) -> Result<HashMap<String, u64>, StoreError> {
        self.run(|j| Ok(j.pending_counts())).await
    }

    async fn record_outcome(
        &self,
        webhook_id: &str,
        success: bool,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let w = webhook_id.to_string();
        self.run(move |j| j.record_outcome(&w, success, now_ms))
            .await
    }

    async fn prune(&self, live: &[String], now_ms: u64) -> Result<(), StoreError> {
        let live = live.to_vec();
        self.run(move |j| j.prune(&live, now_ms)).await
    }
}

#[cfg(test)]
mod tests {
    //! What only the journal does: its file (torn lines, compaction, one
    //! owning process, an unreadable file moved aside) and restarts. The
    //! [`DeliveryStore`] contract it shares with PostgreSQL runs on both
    //! stores in `tests/webhook_store.rs`.

    use super::*;

    const T0: u64 = 1_800_000_000_000;

    fn dlv(id: &str, webhook: &str, event: &str, created_ms: u64) -> Delivery {
        Delivery {
            id: id.into(),
            webhook_id: webhook.into(),
            event_id: event.into(),
            event_type: "route.created".into(),
            payload: format!(r#"{{"id":"{event}","type":"route.created","data":{{}}}}"#),
            status: DeliveryStatus::Pending,
            attempts: 0,
            created_ms,
            updated_ms: created_ms,
            next_attempt_ms: Some(created_ms),
            last_status: None,
            last_error: None,
            last_latency_ms: None,
            response_snippet: None,
        }
    }

    fn finished(mut d: Delivery, status: DeliveryStatus, at: u64) -> Delivery {
        d.status = status;
        d.attempts += 1;
        d.updated_ms = at;
        d.next_attempt_ms = None;
        d.last_status = Some(if status == DeliveryStatus::Succeeded {
            200
        } else {
            500
        });
        d.last_latency_ms = Some(12);
        d.response_snippet = Some("ok".into());
        d
    }

    fn hooks(ws: &[&str]) -> Vec<String> {
        ws.iter().map(|w| w.to_string()).collect()
    }

    fn ids(ds: &[Delivery]) -> Vec<&str> {
        ds.iter().map(|d| d.id.as_str()).collect()
    }

    fn open(dir: &tempfile::TempDir) -> JournalStore {
        JournalStore::open(&dir.path().join(FILE_NAME)).expect("open the journal")
    }

    async fn everything(s: &JournalStore, webhook: &str) -> Vec<Delivery> {
        let q = DeliveryQuery {
            limit: Some(500),
            ..Default::default()
        };
        s.list(webhook, &q).await.unwrap().deliveries
    }

    #[test]
    fn the_journal_sits_beside_the_config() {
        assert_eq!(
            JournalStore::path_beside(Path::new("/etc/flexgate/flexgate.yaml")),
            PathBuf::from("/etc/flexgate/flexgate-webhooks.jsonl")
        );
        assert_eq!(
            JournalStore::path_beside(Path::new("flexgate.yaml")),
            PathBuf::from("flexgate-webhooks.jsonl")
        );
    }

    #[tokio::test]
    async fn a_restart_keeps_everything_but_the_leases() {
        let dir = tempfile::tempdir().unwrap();
        let w1 = hooks(&["w1"]);
        let (before, failing_since) = {
            let s = open(&dir);
            s.enqueue(&[
                dlv("d1", "w1", "e1", T0),
                dlv("d2", "w1", "e2", T0 + 1),
                dlv("d3", "w1", "e3", T0 + 2),
            ])
            .await
            .unwrap();
            let leased = s.lease_due(&w1, T0 + 5, 60_000, 2).await.unwrap();
            assert_eq!(ids(&leased), ["d1", "d2"]);
            s.finish(&finished(
                leased[0].clone(),
                DeliveryStatus::Succeeded,
                T0 + 6,
            ))
            .await
            .unwrap();
            let since = s.record_outcome("w1", false, T0 + 7).await.unwrap();
            assert_eq!(since, Some(T0 + 7));
            (everything(&s, "w1").await, since)
            // d2 is leased when the process "dies".
        };
        let s = open(&dir);
        assert_eq!(everything(&s, "w1").await, before);
        assert_eq!(
            s.pending_counts().await.unwrap(),
            HashMap::from([("w1".to_string(), 2)])
        );
        // The lease died with the process: d2 is due again at once.
        assert_eq!(
            ids(&s.lease_due(&w1, T0 + 10, 60_000, 10).await.unwrap()),
            ["d2", "d3"]
        );
        // The failing run goes on.
        assert_eq!(
            s.record_outcome("w1", false, T0 + 20).await.unwrap(),
            failing_since
        );
        // Dedupe survives too.
        assert_eq!(s.enqueue(&[dlv("x", "w1", "e1", T0)]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_ignored_and_other_bad_lines_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let before = {
            let s = open(&dir);
            s.enqueue(&[dlv("d1", "w1", "e1", T0), dlv("d2", "w1", "e2", T0 + 1)])
                .await
                .unwrap();
            everything(&s, "w1").await
        };
        let good = std::fs::read(&path).unwrap();
        let mut torn = good.clone();
        torn.extend_from_slice(br#"{"put":{"id":"d3","webhookId":"w1","eve"#);
        std::fs::write(&path, &torn).unwrap();
        {
            let s = open(&dir);
            assert_eq!(everything(&s, "w1").await, before);
            // Compacted at open: the torn tail is gone, appends start clean.
            assert_eq!(std::fs::read(&path).unwrap(), good);
            s.enqueue(&[dlv("d3", "w1", "e3", T0 + 2)]).await.unwrap();
        }
        let s = open(&dir);
        assert_eq!(everything(&s, "w1").await.len(), 3);
        drop(s);

        // A bad line that is not the last one: the file is not what we wrote.
        let mut bad = b"{\"del\":\"d1\"}\nnot json\n".to_vec();
        bad.extend_from_slice(&good);
        std::fs::write(&path, &bad).unwrap();
        match JournalStore::open(&path) {
            Err(StoreError::Invalid(m)) => assert!(m.contains("line 2"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Opened by the gateway (on first use), it is moved aside instead.
        let s = JournalStore::new(&path);
        assert_eq!(everything(&s, "w1").await, vec![]);
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "the unreadable journal is kept aside");
        assert_eq!(std::fs::read(aside[0].path()).unwrap(), bad);
        drop(s);
        // A complete line that ends the file without its newline is kept.
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        let s = JournalStore::open(&path).unwrap();
        assert_eq!(everything(&s, "w1").await, before);
        assert_eq!(std::fs::read(&path).unwrap(), good);
    }

    #[tokio::test]
    async fn one_process_owns_the_journal_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let first = JournalStore::open(&path).unwrap();
        // Another process's view (flock is per open file description).
        let second = JournalStore::new(&path);
        match second.enqueue(&[dlv("d1", "w1", "e1", T0)]).await {
            Err(StoreError::Unavailable(m)) => {
                assert!(m.contains("another flexgate process"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        first.enqueue(&[dlv("d1", "w1", "e1", T0)]).await.unwrap();
        drop(first);
        // Once the owner is gone, it takes over and sees what was written.
        assert_eq!(everything(&second, "w1").await.len(), 1);
    }

    #[tokio::test]
    async fn compaction_keeps_the_content_and_shrinks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let s = open(&dir);
        let mut big = dlv("big", "w1", "e1", T0);
        big.payload = "x".repeat(256 * 1024);
        s.enqueue(&[big.clone(), dlv("small", "w1", "e2", T0 + 1)])
            .await
            .unwrap();
        s.record_outcome("w1", false, T0).await.unwrap();
        // Every attempt rewrites the whole delivery: the file grows.
        let (mut previous, mut compactions) = (0, 0);
        for i in 1..=20u32 {
            big.attempts = i;
            big.updated_ms = T0 + u64::from(i);
            big.next_attempt_ms = Some(T0 + u64::from(i));
            s.finish(&big).await.unwrap();
            let len = std::fs::metadata(&path).unwrap().len();
            assert!(len <= COMPACT_MIN_BYTES, "{len}");
            if len < previous {
                compactions += 1;
                assert!(len < 300 * 1024, "only the live records: {len}");
            }
            previous = len;
        }
        assert_eq!(compactions, 1);
        assert_eq!(s.get("w1", "big").await.unwrap(), Some(big.clone()));
        let before = everything(&s, "w1").await;
        drop(s);
        // The compacted file holds exactly the live records.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("\"del\""));
        let s = open(&dir);
        assert_eq!(everything(&s, "w1").await, before);
        assert_eq!(
            s.record_outcome("w1", false, T0 + 99).await.unwrap(),
            Some(T0)
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
