//! Config stores: where the managed (admin-written) config lives.
//!
//! The live config of a node is always a [`State`]: the dynamic config
//! (routes, upstreams, security, limits, logging, webhooks) plus the
//! generated API keys (digests only). A store persists it with a version
//! and an audit trail:
//!
//! - [`embedded::FileStore`] (default, no database): the config file itself
//!   is rewritten atomically (temp file, fsync, rename; the previous version
//!   kept as `<file>.prev`), generated keys go to the key store file, and
//!   the audit log is a rotated JSON-lines file beside them.
//! - `postgres::PgStore` (`DATABASE_URL`): tables per resource, a version
//!   row, and the audit log, written in one transaction with optimistic
//!   concurrency, on the database's connection pool ([`crate::pg`]);
//!   [`migrate`] applies the database's schema.
//!
//! Every write goes through [`Store::commit`] with the version the writer
//! started from: a store that holds another version answers
//! [`StoreError::Conflict`] and nothing is written. Stores never validate:
//! the admin layer validates and compiles before it commits.

pub mod embedded;
pub mod migrate;
pub mod postgres;
pub mod sync;

use crate::config::DynamicConfig;
use crate::keys::store::KeyFile;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Everything an admin write can change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub config: DynamicConfig,
    pub keys: KeyFile,
}

/// A stored state and its version.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned {
    pub version: u64,
    pub state: State,
}

/// One audit-log entry (`GET /api/logs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Assigned by the store, increasing.
    #[serde(default)]
    pub id: u64,
    /// RFC 3339 UTC time of the change.
    pub time: String,
    /// Who made it: `admin-token`, `session`, `cli`, `import`, `startup`.
    pub actor: String,
    /// `create`, `update`, `delete`, `revoke`, `import`.
    pub action: String,
    /// `route/<id>`, `upstream/<name>`, `key/<id>`, `webhook/<id>`, `config`.
    pub resource: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    /// Config version the change produced.
    pub version: u64,
}

impl AuditEntry {
    /// The entry of the one-time import of a node's config into an empty
    /// database (version 1).
    pub fn startup_import() -> AuditEntry {
        AuditEntry {
            id: 0,
            time: crate::clock::now_rfc3339(),
            actor: "startup".into(),
            action: "import".into(),
            resource: "config".into(),
            before: None,
            after: None,
            version: 1,
        }
    }
}

/// Filters of `GET /api/logs`; entries come newest first.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AuditQuery {
    /// Page size (default 50, at most 500).
    pub limit: Option<usize>,
    /// Only entries with an id below this (the `next` cursor of a page).
    pub before: Option<u64>,
    pub action: Option<String>,
    /// Exact resource (`route/r1`) or a kind prefix (`route`).
    pub resource: Option<String>,
    pub actor: Option<String>,
    /// RFC 3339 bounds on `time` (inclusive).
    pub since: Option<String>,
    pub until: Option<String>,
}

impl AuditQuery {
    /// The page size, bounded.
    pub fn page_size(&self) -> usize {
        self.limit.unwrap_or(50).clamp(1, 500)
    }

    /// Whether `e` passes the filters (cursor excluded).
    pub fn matches(&self, e: &AuditEntry) -> bool {
        self.before.is_none_or(|b| e.id < b)
            && self.action.as_deref().is_none_or(|a| e.action == a)
            && self.actor.as_deref().is_none_or(|a| e.actor == a)
            && self.resource.as_deref().is_none_or(|r| {
                e.resource == r
                    || e.resource
                        .strip_prefix(r)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            && self.since.as_deref().is_none_or(|s| e.time.as_str() >= s)
            && self.until.as_deref().is_none_or(|u| e.time.as_str() <= u)
    }
}

/// One page of audit entries.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Cursor for the next (older) page: pass as `before`.
    pub next: Option<u64>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The store holds another version than the writer started from.
    #[error(
        "the config changed meanwhile (now at version {current}); retry with the current version"
    )]
    Conflict { current: u64 },
    /// The store cannot be reached or written (database down, disk error).
    #[error("config store unavailable: {0}")]
    Unavailable(String),
    /// The stored data cannot be read back (corrupt row or file, newer schema).
    #[error("config store content is invalid: {0}")]
    Invalid(String),
}

/// A database failure is the store's: the same two kinds.
impl From<crate::pg::PgError> for StoreError {
    fn from(e: crate::pg::PgError) -> StoreError {
        match e {
            crate::pg::PgError::Unavailable(m) => StoreError::Unavailable(m),
            crate::pg::PgError::Invalid(m) => StoreError::Invalid(m),
        }
    }
}

/// A place the managed config lives.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `embedded` or `postgres` (health, logs).
    fn kind(&self) -> &'static str;

    /// The stored state, or `None` when nothing was ever stored (first
    /// start against an empty database).
    async fn load(&self) -> Result<Option<Versioned>, StoreError>;

    /// The stored version only (cheap; polled by other nodes). `0` when empty.
    async fn version(&self) -> Result<u64, StoreError>;

    /// Stores `next` and the audit entries atomically, if the stored version
    /// is still `expected` (`0` = empty store); returns the new version
    /// (`expected + 1`). On any error nothing is written.
    async fn commit(
        &self,
        expected: u64,
        next: &State,
        audit: &[AuditEntry],
    ) -> Result<u64, StoreError>;

    /// A page of the audit log, newest first.
    async fn audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError>;

    /// Whether the store answers (readiness). The embedded store always does.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_filters() {
        let e = AuditEntry {
            id: 5,
            time: "2026-11-25T10:00:00Z".into(),
            actor: "admin-token".into(),
            action: "create".into(),
            resource: "route/r1".into(),
            before: None,
            after: None,
            version: 3,
        };
        let q = |f: fn(&mut AuditQuery)| {
            let mut q = AuditQuery::default();
            f(&mut q);
            q.matches(&e)
        };
        assert!(q(|_| {}));
        assert!(q(|q| q.resource = Some("route".into())));
        assert!(q(|q| q.resource = Some("route/r1".into())));
        assert!(!q(|q| q.resource = Some("rou".into())));
        assert!(!q(|q| q.before = Some(5)));
        assert!(q(|q| q.before = Some(6)));
        assert!(!q(|q| q.action = Some("delete".into())));
        assert!(q(|q| q.since = Some("2026-11-25T00:00:00Z".into())));
        assert!(!q(|q| q.until = Some("2026-11-24T00:00:00Z".into())));
    }
}
