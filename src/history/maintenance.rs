//! History maintenance: day partitions, roll-ups and retention, once per
//! `history.maintenanceInterval` (first run at start).
//!
//! Every node runs this service; a run first takes a session-level
//! PostgreSQL advisory lock without waiting (`pg_try_advisory_lock`), so
//! while one node works the others skip that round — N nodes never
//! duplicate the work. Each step is idempotent, so a run that dies midway
//! is simply completed by the next one.
//!
//! A run, in order (times are the database's clock, days are UTC):
//! 1. Partitions ([`ensure_partitions`], also run by the writer on each new
//!    connection, before its first `COPY`): today's and tomorrow's
//!    `flexgate_request_log_pYYYYMMDD` exist. In one transaction under an
//!    advisory lock of its own: the DEFAULT partition is locked (so no row
//!    lands there meanwhile), the day partition is created detached,
//!    receives the rows of its day that had landed in the DEFAULT
//!    partition, and is attached.
//! 2. Roll-ups: the current and previous hour, and the current and previous
//!    day, recomputed from the raw rows (`INSERT … ON CONFLICT DO UPDATE`).
//!    The daily roll-up reads up to two days of raw rows per run; a longer
//!    `maintenanceInterval` makes that cheaper on busy clusters.
//! 3. Retention: day partitions older than `history.retentionDays` are
//!    dropped (and such rows in the DEFAULT partition deleted); roll-ups
//!    older than `history.rollupRetentionDays` are deleted.

use super::{connect, Settings};
use crate::pg;
use async_trait::async_trait;
use chrono::{Days, NaiveDate};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::time::Duration;
use tokio_postgres::{Client, GenericClient};

/// The advisory lock of a maintenance run (`FlexHist` in ASCII).
pub const MAINTENANCE_LOCK: i64 = 0x466c_6578_4869_7374;
/// The advisory lock of partition creation (`FlexPart`).
pub const PARTITION_LOCK: i64 = 0x466c_6578_5061_7274;
/// Server-side limit of one maintenance statement.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(120);
/// The raw table and the prefix of its day partitions.
const RAW_TABLE: &str = "flexgate_request_log";
const PARTITION_PREFIX: &str = "flexgate_request_log_p";
const DEFAULT_PARTITION: &str = "flexgate_request_log_default";

/// The aggregates of a roll-up row. `errors` counts status >= 500 and
/// status 0 (no response reached the client): both are the gateway's or
/// the upstream's failure. 4xx (`client_errors`) are counted apart.
const ROLLUP_SELECT: &str = "SELECT bucket,
        CASE WHEN GROUPING(route_key) = 1 THEN '*' ELSE route_key END,
        count(*),
        count(*) FILTER (WHERE status >= 500 OR status = 0),
        count(*) FILTER (WHERE status BETWEEN 400 AND 499),
        avg(duration_ms),
        percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms),
        percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms),
        percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms),
        coalesce(sum(bytes_in), 0)::bigint,
        coalesce(sum(bytes_out), 0)::bigint,
        now()";

/// The maintenance service.
pub struct HistoryMaintenance {
    pub settings: Settings,
}

/// What one run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    /// False when another node held the lock (nothing was done).
    pub ran: bool,
    pub partitions_created: Vec<String>,
    pub partitions_dropped: Vec<String>,
    pub rollup_rows: u64,
}

#[async_trait]
impl BackgroundService for HistoryMaintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut client: Option<Client> = None;
        let mut failing = false;
        loop {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = connect(
                    &self.settings,
                    "flexgate-history-maintenance",
                    STATEMENT_TIMEOUT,
                )
                .await
                .map_err(|e| {
                    if !failing {
                        tracing::warn!("request history maintenance: cannot connect: {e}");
                    }
                    failing = true;
                })
                .ok();
            }
            if let Some(c) = client.as_mut() {
                match run(c, &self.settings).await {
                    Ok(report) => {
                        failing = false;
                        if !report.partitions_created.is_empty()
                            || !report.partitions_dropped.is_empty()
                        {
                            tracing::info!(
                                created = ?report.partitions_created,
                                dropped = ?report.partitions_dropped,
                                "request history partitions"
                            );
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!("request history maintenance failed: {e}");
                        }
                        failing = true;
                        // A fresh connection next time (it may hold the lock
                        // or be stuck in a failed state).
                        client = None;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.maintenance_interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// One maintenance run under the advisory lock (skipped when another node
/// holds it).
pub async fn run(client: &mut Client, settings: &Settings) -> Result<RunReport, String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: tokio_postgres::Error| format!("{what}: {}", pg::message(&err))
    };
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&MAINTENANCE_LOCK])
        .await
        .map_err(e("advisory lock"))?
        .get(0);
    if !locked {
        return Ok(RunReport::default());
    }
    let outcome = run_locked(client, settings).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MAINTENANCE_LOCK])
        .await
        .map_err(e("advisory unlock"));
    let report = outcome?;
    unlocked?;
    Ok(report)
}

async fn run_locked(client: &mut Client, settings: &Settings) -> Result<RunReport, String> {
    let (today, partitions_created) = ensure_partitions(client).await?;
    let mut report = RunReport {
        ran: true,
        partitions_created,
        ..RunReport::default()
    };
    report.rollup_rows = refresh_rollups(client).await?;
    report.partitions_dropped = apply_retention(client, settings, today).await?;
    Ok(report)
}

/// `flexgate_request_log_pYYYYMMDD`.
pub fn partition_name(day: NaiveDate) -> String {
    format!("{PARTITION_PREFIX}{}", day.format("%Y%m%d"))
}

/// The day of a partition name (`None` for other tables).
pub fn partition_day(name: &str) -> Option<NaiveDate> {
    let digits = name.strip_prefix(PARTITION_PREFIX)?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    NaiveDate::parse_from_str(digits, "%Y%m%d").ok()
}

/// Makes sure today's and tomorrow's partitions exist (one transaction,
/// under [`PARTITION_LOCK`]); returns today's date (the database's, UTC)
/// and the partitions created.
pub async fn ensure_partitions(client: &mut Client) -> Result<(NaiveDate, Vec<String>), String> {
    let e = |what: &'static str| {
        move |err: tokio_postgres::Error| format!("{what}: {}", pg::message(&err))
    };
    let tx = client.transaction().await.map_err(e("partitions"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
        .await
        .map_err(e("partition lock"))?;
    let today: NaiveDate = tx
        .query_one("SELECT (now() AT TIME ZONE 'UTC')::date", &[])
        .await
        .map_err(e("reading the date"))?
        .get(0);
    let existing = partitions(&tx).await?;
    let mut created = Vec::new();
    for day in [Some(today), today.checked_add_days(Days::new(1))]
        .into_iter()
        .flatten()
    {
        let name = partition_name(day);
        if !existing.contains(&name) {
            create_partition(&tx, day).await?;
            created.push(name);
        }
    }
    tx.commit().await.map_err(e("partitions"))?;
    Ok((today, created))
}

/// Names of the tables attached to the raw table.
async fn partitions(client: &impl GenericClient) -> Result<Vec<String>, String> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'flexgate_request_log'::regclass",
            &[],
        )
        .await
        .map_err(|err| format!("listing partitions: {}", pg::message(&err)))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// `'2026-11-26 00:00:00+00'`.
fn day_start(day: NaiveDate) -> String {
    format!("'{} 00:00:00+00'", day.format("%Y-%m-%d"))
}

/// Creates the partition of `day` inside the caller's transaction, moving
/// that day's rows out of the DEFAULT partition (locked first, so that no
/// row of that day lands there in between).
async fn create_partition(tx: &impl GenericClient, day: NaiveDate) -> Result<(), String> {
    let next = day
        .checked_add_days(Days::new(1))
        .ok_or_else(|| format!("no day after {day}"))?;
    let (name, from, to) = (partition_name(day), day_start(day), day_start(next));
    let sql = format!(
        "LOCK TABLE {DEFAULT_PARTITION} IN ACCESS EXCLUSIVE MODE;
         CREATE TABLE IF NOT EXISTS {name} (LIKE {RAW_TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
         WITH moved AS (
             DELETE FROM {DEFAULT_PARTITION} WHERE time >= {from} AND time < {to} RETURNING *
         ) INSERT INTO {name} SELECT * FROM moved;
         ALTER TABLE {RAW_TABLE} ATTACH PARTITION {name} FOR VALUES FROM ({from}) TO ({to});"
    );
    tx.batch_execute(&sql)
        .await
        .map_err(|err| format!("creating partition {name}: {}", pg::message(&err)))
}

/// Recomputes the current and previous hour and day; returns the roll-up
/// rows written.
async fn refresh_rollups(client: &Client) -> Result<u64, String> {
    let mut rows = 0;
    for (table, unit) in [
        ("flexgate_request_stats_hourly", "hour"),
        ("flexgate_request_stats_daily", "day"),
    ] {
        let sql = format!(
            "INSERT INTO {table} (bucket, route_id, requests, errors, client_errors, avg_ms, \
                 p50_ms, p95_ms, p99_ms, bytes_in, bytes_out, updated_at)
             {ROLLUP_SELECT}
             FROM (
                 SELECT date_trunc('{unit}', time, 'UTC') AS bucket,
                        coalesce(route_id, '-') AS route_key,
                        status, duration_ms, bytes_in, bytes_out
                 FROM {RAW_TABLE}
                 WHERE time >= date_trunc('{unit}', now(), 'UTC') - interval '1 {unit}'
                   AND time < date_trunc('{unit}', now(), 'UTC') + interval '1 {unit}'
             ) raw
             GROUP BY GROUPING SETS ((bucket, route_key), (bucket))
             ON CONFLICT (bucket, route_id) DO UPDATE SET
                 requests = EXCLUDED.requests, errors = EXCLUDED.errors,
                 client_errors = EXCLUDED.client_errors, avg_ms = EXCLUDED.avg_ms,
                 p50_ms = EXCLUDED.p50_ms, p95_ms = EXCLUDED.p95_ms, p99_ms = EXCLUDED.p99_ms,
                 bytes_in = EXCLUDED.bytes_in, bytes_out = EXCLUDED.bytes_out,
                 updated_at = EXCLUDED.updated_at"
        );
        rows += client
            .execute(&sql, &[])
            .await
            .map_err(|err| format!("{unit}ly roll-up: {}", pg::message(&err)))?;
    }
    Ok(rows)
}

/// Drops expired day partitions and deletes expired rows; returns the
/// partitions dropped.
async fn apply_retention(
    client: &Client,
    settings: &Settings,
    today: NaiveDate,
) -> Result<Vec<String>, String> {
    let raw_cutoff = today
        .checked_sub_days(Days::new(u64::from(settings.retention_days)))
        .unwrap_or(NaiveDate::MIN);
    let mut dropped = Vec::new();
    for name in partitions(client).await? {
        if partition_day(&name).is_some_and(|day| day < raw_cutoff) {
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                .await
                .map_err(|err| format!("dropping partition {name}: {}", pg::message(&err)))?;
            dropped.push(name);
        }
    }
    let cutoff = day_start(raw_cutoff);
    client
        .execute(
            &format!("DELETE FROM {DEFAULT_PARTITION} WHERE time < {cutoff}"),
            &[],
        )
        .await
        .map_err(|err| format!("raw retention: {}", pg::message(&err)))?;
    let days = i32::try_from(settings.rollup_retention_days).unwrap_or(i32::MAX);
    for table in [
        "flexgate_request_stats_hourly",
        "flexgate_request_stats_daily",
    ] {
        client
            .execute(
                &format!("DELETE FROM {table} WHERE bucket < now() - make_interval(days => $1)"),
                &[&days],
            )
            .await
            .map_err(|err| format!("roll-up retention ({table}): {}", pg::message(&err)))?;
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip_and_other_tables_are_ignored() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 26).expect("a date");
        assert_eq!(partition_name(day), "flexgate_request_log_p20261126");
        assert_eq!(partition_day(&partition_name(day)), Some(day));
        assert_eq!(partition_day("flexgate_request_log_default"), None);
        assert_eq!(partition_day("flexgate_request_log_p2026112"), None);
        assert_eq!(partition_day("flexgate_request_log_p20261332"), None);
        assert_eq!(day_start(day), "'2026-11-26 00:00:00+00'");
    }
}
