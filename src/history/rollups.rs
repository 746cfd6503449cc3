//! Reading the roll-ups back: the rows of `flexgate_request_stats_hourly`
//! or `_daily` in a time range, for the admin API. Read-only; the rows are
//! written by `maintenance.rs`.
//!
//! [`RollupReader`] reads them on the database's shared connection pool
//! (handed over at start in database mode), bounded like every pooled call.

use crate::pg::{PgError, PgPool, OP_TIMEOUT};
use chrono::{DateTime, Utc};

/// The roll-up to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    Hour,
    Day,
}

impl Granularity {
    /// `hour` or `day`.
    pub fn parse(text: &str) -> Option<Granularity> {
        match text {
            "hour" => Some(Granularity::Hour),
            "day" => Some(Granularity::Day),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    fn table(self) -> &'static str {
        match self {
            Granularity::Hour => "flexgate_request_stats_hourly",
            Granularity::Day => "flexgate_request_stats_daily",
        }
    }
}

/// One bucket of one route (`*`: all routes; `-`: requests that matched
/// no route).
#[derive(Clone, Debug, PartialEq)]
pub struct RollupRow {
    pub route_id: String,
    /// Start of the UTC hour or day.
    pub bucket: DateTime<Utc>,
    pub requests: i64,
    /// Status >= 500, or 0 (no response).
    pub errors: i64,
    /// Status 400-499.
    pub client_errors: i64,
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub bytes_in: i64,
    pub bytes_out: i64,
}

/// Reads the roll-ups for the admin API (database mode).
#[derive(Clone, Debug)]
pub struct RollupReader {
    pool: PgPool,
}

impl RollupReader {
    /// A reader on `pool`.
    pub fn new(pool: PgPool) -> RollupReader {
        RollupReader { pool }
    }

    /// The buckets overlapping `[from, to)`, by route then time (bounded by
    /// the pool's timeouts and [`OP_TIMEOUT`]).
    pub async fn read(
        &self,
        granularity: Granularity,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<RollupRow>, PgError> {
        let c = self.pool.client().await?;
        let out = self
            .pool
            .bounded(OP_TIMEOUT, async {
                read(&c, granularity, from, to)
                    .await
                    .map_err(|e| self.pool.error("request history", e))
            })
            .await;
        self.pool
            .release(c, matches!(out, Err(PgError::Unavailable(_))));
        out
    }
}

/// The buckets overlapping `[from, to)`, by route then time.
pub async fn read(
    client: &tokio_postgres::Client,
    granularity: Granularity,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<RollupRow>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT route_id, bucket, requests, errors, client_errors, avg_ms, p50_ms, p95_ms, \
         p99_ms, bytes_in, bytes_out FROM {} \
         WHERE bucket >= date_trunc('{}', $1::timestamptz, 'UTC') AND bucket < $2 \
         ORDER BY route_id, bucket",
        granularity.table(),
        granularity.as_str()
    );
    let rows = client.query(&sql, &[&from, &to]).await?;
    Ok(rows
        .iter()
        .map(|r| RollupRow {
            route_id: r.get(0),
            bucket: r.get(1),
            requests: r.get(2),
            errors: r.get(3),
            client_errors: r.get(4),
            avg_ms: r.get(5),
            p50_ms: r.get(6),
            p95_ms: r.get(7),
            p99_ms: r.get(8),
            bytes_in: r.get(9),
            bytes_out: r.get(10),
        })
        .collect())
}
