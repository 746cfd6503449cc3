//! The schema of the database (database mode): versioned SQL files in
//! `migrations/` (`V<n>__<name>.sql`, embedded in the binary), applied by
//! [`run`] (`flexgate migrate`, and `flexgate start` in database mode).
//!
//! Each runs in its own transaction under a transaction-level advisory
//! lock, so concurrent runs from several nodes apply each file once;
//! applied versions and checksums are recorded in
//! `flexgate_schema_history`, and a second run is a no-op. Rules: an
//! applied file is never edited (its checksum is checked) — a change is a
//! new file with the next version; a database whose schema is newer than
//! the binary knows is refused ("upgrade flexgate"), never downgraded.
//!
//! The schema serves the config store (V1), the request history (V2) and
//! the webhook deliveries (V3) alike; the connections are the pool's
//! ([`crate::pg::PgPool`]).

use super::StoreError;
use crate::pg::PgPool;
use deadpool_postgres::{GenericClient, Object};
use std::time::Duration;

/// Client-side limit of a whole migration run.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(35);
/// Server-side statement limit inside a migration transaction (milliseconds).
const MIGRATE_STATEMENT_TIMEOUT_MS: u64 = 30_000;
/// Advisory lock held by a migration transaction (`FlexGate` in ASCII).
const MIGRATION_LOCK: i64 = 0x466c_6578_4761_7465;
/// Applied migrations.
const HISTORY_TABLE: &str = "flexgate_schema_history";

/// One embedded migration file.
struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
}

/// Every migration, in version order (`migrations/V<n>__<name>.sql`).
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "config_store",
        sql: include_str!("../../migrations/V1__config_store.sql"),
    },
    Migration {
        version: 2,
        name: "request_history",
        sql: include_str!("../../migrations/V2__request_history.sql"),
    },
    Migration {
        version: 3,
        name: "webhook_deliveries",
        sql: include_str!("../../migrations/V3__webhook_deliveries.sql"),
    },
];

/// The newest schema version this binary knows.
pub const SCHEMA_VERSION: u32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// What [`run`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationReport {
    /// Schema version after the run.
    pub version: u32,
    /// Versions applied by this run (empty: it was up to date).
    pub applied: Vec<u32>,
}

/// Applies the pending migrations (each in its own transaction, under an
/// advisory lock); reports the version after and what was applied.
/// A database newer than [`SCHEMA_VERSION`] is [`StoreError::Invalid`].
pub async fn run(pool: &PgPool) -> Result<MigrationReport, StoreError> {
    let mut c = pool.client().await?;
    let out = pool
        .bounded(MIGRATE_TIMEOUT, async {
            let mut applied = Vec::new();
            loop {
                match step(pool, &mut c).await? {
                    Step::Applied(v) => applied.push(v),
                    Step::UpToDate(version) => return Ok(MigrationReport { version, applied }),
                }
            }
        })
        .await;
    pool.release(c, matches!(out, Err(StoreError::Unavailable(_))));
    out
}

enum Step {
    Applied(u32),
    UpToDate(u32),
}

/// One transaction: lock, read the history, apply the next migration.
async fn step(pool: &PgPool, c: &mut Object) -> Result<Step, StoreError> {
    let e = |e| StoreError::from(pool.error("migrate", e));
    let tx = c.transaction().await.map_err(e)?;
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {MIGRATE_STATEMENT_TIMEOUT_MS}"
    ))
    .await
    .map_err(e)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(e)?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} (
            version    integer     PRIMARY KEY,
            name       text        NOT NULL,
            checksum   text        NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )"
    ))
    .await
    .map_err(e)?;
    let rows = tx
        .query(
            &format!("SELECT version, name, checksum FROM {HISTORY_TABLE} ORDER BY version"),
            &[],
        )
        .await
        .map_err(e)?;
    let mut current = 0u32;
    for row in &rows {
        let version: i32 = row.get(0);
        let version = u32::try_from(version).unwrap_or(0);
        let (name, checksum): (String, String) = (row.get(1), row.get(2));
        current = current.max(version);
        if let Some(m) = MIGRATIONS.iter().find(|m| m.version == version) {
            if checksum != sql_checksum(m.sql) {
                return Err(StoreError::Invalid(format!(
                    "migration V{version}__{name} applied to the database differs from \
                     V{}__{} in this flexgate (checksum mismatch); applied migrations must \
                     never be edited",
                    m.version, m.name
                )));
            }
        }
    }
    if current > SCHEMA_VERSION {
        return Err(StoreError::Invalid(format!(
            "database schema is at version {current} but this flexgate knows up to \
             {SCHEMA_VERSION}; upgrade flexgate"
        )));
    }
    let Some(m) = MIGRATIONS.iter().find(|m| m.version > current) else {
        tx.commit().await.map_err(e)?;
        return Ok(Step::UpToDate(current));
    };
    tx.batch_execute(m.sql).await.map_err(|err| {
        StoreError::from(pool.error(&format!("migration V{}__{}", m.version, m.name), err))
    })?;
    tx.execute(
        &format!("INSERT INTO {HISTORY_TABLE} (version, name, checksum) VALUES ($1, $2, $3)"),
        &[&(m.version as i32), &m.name, &sql_checksum(m.sql)],
    )
    .await
    .map_err(e)?;
    tx.commit().await.map_err(e)?;
    tracing::info!(
        target = %pool.target(),
        "applied schema migration V{}__{}",
        m.version,
        m.name
    );
    Ok(Step::Applied(m.version))
}

/// SHA-256 hex of a migration's text (line endings normalised).
fn sql_checksum(sql: &str) -> String {
    let text = sql.replace("\r\n", "\n");
    crate::keys::to_hex(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort_by_key(|n| {
            n.trim_start_matches('V')
                .split("__")
                .next()
                .and_then(|v| v.parse::<u32>().ok())
        });
        let embedded: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("V{}__{}.sql", m.version, m.name))
            .collect();
        assert_eq!(files, embedded, "migrations/ and MIGRATIONS must match");
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "versions are 1, 2, 3 …");
            let text = std::fs::read_to_string(dir.join(&embedded[i])).unwrap();
            assert_eq!(sql_checksum(&text), sql_checksum(m.sql));
        }
    }
}
