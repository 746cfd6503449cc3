//! The PostgreSQL store (`DATABASE_URL`): several gateway nodes share one
//! managed config.
//!
//! # What is stored where
//!
//! | table | rows | key |
//! | --- | --- | --- |
//! | `routes` | one per route, `body` = the route as JSON | the route's `id`, or `route-<index>` when it has none |
//! | `upstreams` | one per upstream | `name` |
//! | `webhooks` | one per webhook | its `id`, or `webhook-<8 hex of its URL's SHA-256>` |
//! | `api_keys` | one per generated key: name, SHA-256 hex digest (never the key), scopes, routes, expiry, revoked, creation time | `id` |
//! | `settings` | `proxy` (the reloadable proxy defaults), `security`, `rateLimit`, `logging` | `name` |
//! | `config_version` | one row: the version of the whole state, and when it changed | — |
//! | `audit_log` | one per audit entry, with the version it produced | `id` (assigned by the database) |
//! | `flexgate_request_log` (V2) | one per proxied request, partitioned by day; written by `history::writer` | — |
//! | `flexgate_request_stats_hourly` / `_daily` (V2) | roll-ups per bucket and route, written by `history::maintenance` | `(bucket, route_id)` |
//! | `flexgate_webhook_deliveries` (V3) | one per event and webhook subscription, leased for each attempt; written by `webhooks::pg_store` | `(webhook_id, event_id)` |
//! | `flexgate_webhook_health` (V3) | since when each subscription has been failing | `webhook_id` |
//!
//! Lists keep their order in a `position` column (route order matters).
//! Bodies are the camelCase JSON of the config model, so [`Store::load`]
//! returns exactly the [`DynamicConfig`] that was committed (a route without
//! an `id` is keyed `route-<index>` but its body still has no id).
//!
//! # Transactions
//!
//! - [`Store::load`] reads every table in one `REPEATABLE READ, READ ONLY`
//!   transaction: one consistent state. Version 0 (or no version row) is an
//!   empty store: `Ok(None)`.
//! - [`Store::commit`] is one transaction: it locks the version row
//!   (`SELECT … FOR UPDATE`, so writers queue up), answers
//!   [`StoreError::Conflict`] if the version is not the one the writer
//!   started from, otherwise replaces the rows of every table, bumps the
//!   version and appends the audit entries. Any error rolls everything back:
//!   a failed commit leaves no row and no audit entry behind.
//!
//! # Connections and migrations
//!
//! The store works on a [`PgPool`] ([`crate::pg`]): TLS as `sslmode` says,
//! every call bounded, failures to reach or use the database
//! [`StoreError::Unavailable`] with the cause. The version-row lock is
//! released by the server when a vanished client leaves its transaction
//! idle. The schema is applied by [`super::migrate`] ([`PgStore::migrate`],
//! `flexgate migrate`).

use super::migrate::{self, MigrationReport};
use super::{AuditEntry, AuditPage, AuditQuery, State, Store, StoreError, Versioned};
use crate::config::{
    DynamicConfig, LoggingSection, ProxyDefaults, RateLimitSection, RouteConfig, SecuritySection,
    UpstreamConfig, WebhookConfig,
};
use crate::keys::store::{KeyFile, StoredKey};
use crate::pg::{PgPool, OP_TIMEOUT};
use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Object};
use serde_json::{json, Value};
use std::future::Future;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::IsolationLevel;

/// The PostgreSQL config store.
pub struct PgStore {
    pool: PgPool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.pool.target())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// A store for `url` (`postgres://user:pass@host:5432/db` or
    /// `host=… dbname=…`). Connects nothing: connections are made on first
    /// use. A malformed URL is [`StoreError::Invalid`].
    pub fn new(url: &str) -> Result<PgStore, StoreError> {
        Self::with_ca(url, None)
    }

    /// As [`PgStore::new`], with `database.caFile` for `sslmode=verify-ca`
    /// / `verify-full` (see [`crate::pg::tls`]; a `sslrootcert=` in the URL
    /// wins). An unreadable CA file is [`StoreError::Invalid`].
    pub fn with_ca(url: &str, ca_file: Option<&str>) -> Result<PgStore, StoreError> {
        Ok(PgStore::with_pool(PgPool::new(url, ca_file)?))
    }

    /// A store on `pool` (which others, such as the request history, may
    /// share).
    pub fn with_pool(pool: PgPool) -> PgStore {
        PgStore { pool }
    }

    /// `host:port/dbname` of the database (no credentials).
    pub fn target(&self) -> &str {
        self.pool.target()
    }

    /// Readiness probe: `SELECT 1`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let c = self.client().await?;
        let out = self
            .bounded(OP_TIMEOUT, async {
                c.simple_query("SELECT 1")
                    .await
                    .map(drop)
                    .map_err(|e| self.pg_error("ping", e))
            })
            .await;
        self.release(c, &out);
        out
    }

    /// Applies the pending migrations; returns the schema version after.
    pub async fn migrate(&self) -> Result<u32, StoreError> {
        self.migrate_report().await.map(|r| r.version)
    }

    /// Applies the pending migrations and reports what was applied
    /// ([`migrate::run`]).
    pub async fn migrate_report(&self) -> Result<MigrationReport, StoreError> {
        migrate::run(&self.pool).await
    }

    /// A pooled connection (bounded by the pool timeouts).
    async fn client(&self) -> Result<Object, StoreError> {
        Ok(self.pool.client().await?)
    }

    /// Runs `op` with a client-side time limit.
    async fn bounded<T>(
        &self,
        limit: Duration,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.pool.bounded(limit, op).await
    }

    /// Returns the connection to the pool, or discards it when the
    /// operation failed for want of the database.
    fn release<T>(&self, c: Object, out: &Result<T, StoreError>) {
        self.pool
            .release(c, matches!(out, Err(StoreError::Unavailable(_))));
    }

    /// Maps a driver error ([`PgPool::error`]).
    fn pg_error(&self, what: &str, e: tokio_postgres::Error) -> StoreError {
        self.pool.error(what, e).into()
    }

    async fn load_in(&self, c: &mut Object) -> Result<Option<Versioned>, StoreError> {
        let e = |e| self.pg_error("load", e);
        let tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(e)?;
        let version = read_version(&tx).await.map_err(e)?;
        if version == 0 {
            tx.commit().await.map_err(e)?;
            return Ok(None);
        }
        let (routes, upstreams, webhooks, settings, keys) = futures::try_join!(
            tx.query("SELECT id, body FROM routes ORDER BY position", &[]),
            tx.query("SELECT name, body FROM upstreams ORDER BY position", &[]),
            tx.query("SELECT id, body FROM webhooks ORDER BY position", &[]),
            tx.query("SELECT name, body FROM settings", &[]),
            tx.query(
                "SELECT id, name, digest, scopes, routes, expires_at, revoked, created_at \
                 FROM api_keys ORDER BY position",
                &[],
            ),
        )
        .map_err(e)?;
        tx.commit().await.map_err(e)?;

        let mut config = DynamicConfig {
            routes: bodies::<RouteConfig>("routes", &routes)?,
            upstreams: bodies::<UpstreamConfig>("upstreams", &upstreams)?,
            webhooks: bodies::<WebhookConfig>("webhooks", &webhooks)?,
            ..DynamicConfig::default()
        };
        for row in &settings {
            let name: String = row.get(0);
            let body: Value = row.get(1);
            match name.as_str() {
                "proxy" => config.defaults = setting::<ProxyDefaults>(&name, body)?,
                "security" => config.security = setting::<SecuritySection>(&name, body)?,
                "rateLimit" => config.rate_limit = setting::<RateLimitSection>(&name, body)?,
                "logging" => config.logging = setting::<LoggingSection>(&name, body)?,
                // Written by a newer flexgate of the same schema version.
                _ => tracing::warn!(setting = %name, "ignoring an unknown settings row"),
            }
        }
        let keys = KeyFile {
            keys: keys
                .iter()
                .map(|row| {
                    let id: String = row.get(0);
                    let unsigned = |col: &str, v: i64| {
                        u64::try_from(v).map_err(|_| {
                            StoreError::Invalid(format!("api_keys row {id:?}: negative {col}"))
                        })
                    };
                    Ok(StoredKey {
                        name: row.get(1),
                        digest: row.get(2),
                        scopes: row.get(3),
                        routes: row.get(4),
                        expires_at: row
                            .get::<_, Option<i64>>(5)
                            .map(|v| unsigned("expires_at", v))
                            .transpose()?,
                        revoked: row.get(6),
                        created_at: unsigned("created_at", row.get(7))?,
                        id,
                    })
                })
                .collect::<Result<_, StoreError>>()?,
        };
        Ok(Some(Versioned {
            version,
            state: State { config, keys },
        }))
    }

    async fn commit_in(
        &self,
        c: &mut Object,
        expected: u64,
        next: &State,
        audit: &[AuditEntry],
    ) -> Result<u64, StoreError> {
        let rows = Rows::of(next)?;
        let version = i64::try_from(expected)
            .ok()
            .and_then(|v| v.checked_add(1))
            .ok_or_else(|| StoreError::Invalid(format!("version {expected} is out of range")))?;
        let e = |e| self.pg_error("commit", e);
        let tx = c.transaction().await.map_err(e)?;
        let lock = "SELECT version FROM config_version FOR UPDATE";
        let current: i64 = match tx.query_opt(lock, &[]).await.map_err(e)? {
            Some(row) => row.get(0),
            None => {
                // First commit into a database whose version row is gone: a
                // concurrent first commit waits on the insert, then sees
                // the winner's version below.
                tx.execute(
                    "INSERT INTO config_version (singleton, version) VALUES (true, 0) \
                     ON CONFLICT DO NOTHING",
                    &[],
                )
                .await
                .map_err(e)?;
                tx.query_one(lock, &[]).await.map_err(e)?.get(0)
            }
        };
        if current != version - 1 {
            tx.rollback().await.map_err(e)?;
            return Err(StoreError::Conflict {
                current: u64::try_from(current).unwrap_or(0),
            });
        }
        tx.batch_execute(
            "DELETE FROM routes; DELETE FROM upstreams; DELETE FROM webhooks; \
             DELETE FROM api_keys; DELETE FROM settings;",
        )
        .await
        .map_err(e)?;
        const KEYED: &str = "SELECT e->>'key', (t.ord - 1)::integer, e->'body' \
                             FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(e, ord)";
        let ordered = |col: &str| {
            format!(
                "ARRAY(SELECT x FROM jsonb_array_elements_text(e->'{col}') \
                 WITH ORDINALITY AS a(x, n) ORDER BY n)"
            )
        };
        let keys_sql = format!(
            "INSERT INTO api_keys (id, position, name, digest, scopes, routes, \
             expires_at, revoked, created_at) \
             SELECT e->>'id', (t.ord - 1)::integer, e->>'name', e->>'digest', {}, {}, \
             (e->>'expiresAt')::bigint, (e->>'revoked')::boolean, \
             (e->>'createdAt')::bigint \
             FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(e, ord)",
            ordered("scopes"),
            ordered("routes")
        );
        let writes: [(String, &(dyn ToSql + Sync)); 6] = [
            (
                format!("INSERT INTO routes (id, position, body) {KEYED}"),
                &rows.routes,
            ),
            (
                format!("INSERT INTO upstreams (name, position, body) {KEYED}"),
                &rows.upstreams,
            ),
            (
                format!("INSERT INTO webhooks (id, position, body) {KEYED}"),
                &rows.webhooks,
            ),
            (
                "INSERT INTO settings (name, body) SELECT key, value FROM jsonb_each($1::jsonb)"
                    .into(),
                &rows.settings,
            ),
            (keys_sql, &rows.keys),
            (
                "UPDATE config_version SET version = $1, updated_at = now()".into(),
                &version,
            ),
        ];
        // Pipelined on the one connection.
        futures::future::try_join_all(
            writes
                .iter()
                .map(|(sql, param)| tx.execute(sql.as_str(), std::slice::from_ref(param))),
        )
        .await
        .map_err(e)?;
        // One by one, in order: ids increase with the entries' order.
        let stmt = tx
            .prepare(
                "INSERT INTO audit_log (time, actor, action, resource, before, after, version) \
                 VALUES ($1::text::timestamptz, $2, $3, $4, $5, $6, $7)",
            )
            .await
            .map_err(e)?;
        for a in audit {
            tx.execute(
                &stmt,
                &[
                    &a.time,
                    &a.actor,
                    &a.action,
                    &a.resource,
                    &a.before,
                    &a.after,
                    &version,
                ],
            )
            .await
            .map_err(|err| self.pg_error(&format!("commit (audit entry {:?})", a.resource), err))?;
        }
        tx.commit().await.map_err(e)?;
        Ok(version as u64)
    }

    async fn audit_in(&self, c: &Object, q: &AuditQuery) -> Result<AuditPage, StoreError> {
        let size = q.page_size();
        let before = q.before.map(|b| i64::try_from(b).unwrap_or(i64::MAX));
        let mut sql = String::from(
            "SELECT id, to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
             actor, action, resource, before, after, version FROM audit_log WHERE true",
        );
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        if let Some(b) = &before {
            params.push(b);
            sql.push_str(&format!(" AND id < ${}", params.len()));
        }
        if let Some(a) = &q.action {
            params.push(a);
            sql.push_str(&format!(" AND action = ${}", params.len()));
        }
        if let Some(a) = &q.actor {
            params.push(a);
            sql.push_str(&format!(" AND actor = ${}", params.len()));
        }
        if let Some(r) = &q.resource {
            params.push(r);
            let n = params.len();
            sql.push_str(&format!(
                " AND (resource = ${n} OR starts_with(resource, ${n} || '/'))"
            ));
        }
        if let Some(s) = &q.since {
            params.push(s);
            sql.push_str(&format!(
                " AND time >= ${}::text::timestamptz",
                params.len()
            ));
        }
        if let Some(u) = &q.until {
            params.push(u);
            sql.push_str(&format!(
                " AND time <= ${}::text::timestamptz",
                params.len()
            ));
        }
        let limit = (size + 1) as i64;
        params.push(&limit);
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
        let rows = c
            .query(&sql, &params)
            .await
            .map_err(|e| self.pg_error("audit", e))?;
        let mut entries: Vec<AuditEntry> = rows
            .iter()
            .map(|row| AuditEntry {
                id: row.get::<_, i64>(0) as u64,
                time: row.get(1),
                actor: row.get(2),
                action: row.get(3),
                resource: row.get(4),
                before: row.get(5),
                after: row.get(6),
                version: row.get::<_, i64>(7) as u64,
            })
            .collect();
        let next = (entries.len() > size).then(|| {
            entries.truncate(size);
            entries.last().map_or(0, |e| e.id)
        });
        Ok(AuditPage { entries, next })
    }
}

/// The rows of a state, as JSON arrays for one bulk insert per table.
struct Rows {
    routes: Value,
    upstreams: Value,
    webhooks: Value,
    settings: Value,
    keys: Value,
}

impl Rows {
    fn of(state: &State) -> Result<Rows, StoreError> {
        fn to_json<T: serde::Serialize>(what: &str, v: &T) -> Result<Value, StoreError> {
            serde_json::to_value(v)
                .map_err(|e| StoreError::Invalid(format!("cannot serialise {what}: {e}")))
        }
        let c = &state.config;
        let keyed = |items: Vec<(String, Value)>| -> Value {
            Value::Array(
                items
                    .into_iter()
                    .map(|(key, body)| json!({ "key": key, "body": body }))
                    .collect(),
            )
        };
        let routes = c
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let key = r.id.clone().unwrap_or_else(|| format!("route-{i}"));
                Ok((key, to_json("a route", r)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let upstreams = c
            .upstreams
            .iter()
            .map(|u| Ok((u.name.clone(), to_json("an upstream", u)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let webhooks = c
            .webhooks
            .iter()
            .map(|w| Ok((w.effective_id(), to_json("a webhook", w)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Rows {
            routes: keyed(routes),
            upstreams: keyed(upstreams),
            webhooks: keyed(webhooks),
            settings: json!({
                "proxy": to_json("proxy", &c.defaults)?,
                "security": to_json("security", &c.security)?,
                "rateLimit": to_json("rateLimit", &c.rate_limit)?,
                "logging": to_json("logging", &c.logging)?,
            }),
            keys: to_json("the API keys", &state.keys.keys)?,
        })
    }
}

/// The stored version (0 when nothing was stored).
async fn read_version(c: &impl GenericClient) -> Result<u64, tokio_postgres::Error> {
    let row = c
        .query_opt("SELECT version FROM config_version", &[])
        .await?;
    Ok(row.map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
}

/// Decodes `(key, body)` rows.
fn bodies<T: serde::de::DeserializeOwned>(
    table: &str,
    rows: &[tokio_postgres::Row],
) -> Result<Vec<T>, StoreError> {
    rows.iter()
        .map(|row| {
            let key: String = row.get(0);
            serde_json::from_value(row.get(1)).map_err(|e| {
                StoreError::Invalid(format!("{table} row {key:?} cannot be read back: {e}"))
            })
        })
        .collect()
}

fn setting<T: serde::de::DeserializeOwned>(name: &str, body: Value) -> Result<T, StoreError> {
    serde_json::from_value(body)
        .map_err(|e| StoreError::Invalid(format!("settings row {name:?} cannot be read back: {e}")))
}

#[async_trait]
impl Store for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        PgStore::ping(self).await
    }

    async fn load(&self) -> Result<Option<Versioned>, StoreError> {
        let mut c = self.client().await?;
        let out = self.bounded(OP_TIMEOUT, self.load_in(&mut c)).await;
        self.release(c, &out);
        out
    }

    async fn version(&self) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let out = self
            .bounded(OP_TIMEOUT, async {
                read_version(&c)
                    .await
                    .map_err(|e| self.pg_error("version", e))
            })
            .await;
        self.release(c, &out);
        out
    }

    async fn commit(
        &self,
        expected: u64,
        next: &State,
        audit: &[AuditEntry],
    ) -> Result<u64, StoreError> {
        let mut c = self.client().await?;
        let out = self
            .bounded(OP_TIMEOUT, self.commit_in(&mut c, expected, next, audit))
            .await;
        self.release(c, &out);
        out
    }

    async fn audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let c = self.client().await?;
        let out = self.bounded(OP_TIMEOUT, self.audit_in(&c, query)).await;
        self.release(c, &out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_urls_are_invalid_without_connecting() {
        for url in [
            "postgres://u@h:notaport/db",
            "not a url at all =",
            "postgres:///db",
        ] {
            match PgStore::new(url) {
                Err(StoreError::Invalid(m)) => assert!(m.contains("database URL"), "{m}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        let s = PgStore::new("postgres://fg:secret@db.internal:6543/flexgate").unwrap();
        assert_eq!(s.target(), "db.internal:6543/flexgate");
        assert!(!format!("{s:?}").contains("secret"));
    }
}
