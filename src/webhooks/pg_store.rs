//! The database delivery store (database mode): deliveries in PostgreSQL,
//! `flexgate_webhook_deliveries` and `flexgate_webhook_health` (migration
//! V3, [`crate::store::migrate`]), on the pool the config store uses
//! ([`crate::pg::PgPool`]), every call bounded as its calls are.
//!
//! # Leases: `FOR UPDATE SKIP LOCKED`
//!
//! Every node runs senders; each takes due deliveries with one statement,
//!
//! ```sql
//! UPDATE flexgate_webhook_deliveries SET lease_until = $until, leased_by = $node
//! WHERE id IN (SELECT id FROM flexgate_webhook_deliveries
//!              WHERE status = 'pending' AND webhook_id = ANY($webhooks)
//!                AND next_attempt_at <= $now
//!                AND (lease_until IS NULL OR lease_until < $now)
//!              ORDER BY next_attempt_at, created_at LIMIT $max
//!              FOR UPDATE SKIP LOCKED)
//! RETURNING …
//! ```
//!
//! Rows another sender is leasing right now are skipped (not waited for),
//! and one leased a moment ago is re-checked against its new lease and
//! left out: two senders never get the same delivery while its lease
//! holds. A lease that expires (its node died mid-attempt) makes the row
//! due again for any node. Times are the callers' (`now_ms`), never the
//! database clock, so the nodes' clocks must roughly agree (as they must
//! for the signatures' timestamps anyway).
//!
//! Why row leases rather than a JetStream work-queue consumer (NATS
//! already carries the config-change notices between nodes): deliveries
//! need queryable state — the delivery
//! log with its status filters and paging, replay by id, attempts and the
//! next attempt time — and that state lives with the config in
//! PostgreSQL. A row lease gives exactly one sender per attempt, its
//! expiry covers a dead node, and no second system must be up for
//! webhooks to flow.
//!
//! # Finishing an attempt
//!
//! [`DeliveryStore::finish`] updates the row only `WHERE id = $id AND
//! leased_by = $node`, and ends the lease (`lease_until` NULL; `leased_by`
//! stays: the node of the last attempt). When an attempt outlives its
//! lease (a stalled send):
//!
//! - another node took the delivery meanwhile: this node's outcome is not
//!   recorded, the other node's is;
//! - nobody took it, or another sender of the same node did: the outcome
//!   is recorded, and of two finishes the later writer wins.
//!
//! Either way the receiver may have seen the event twice: delivery is
//! at-least-once, and the `webhook-id` header is the receiver's
//! idempotency key. [`DeliveryStore::replay`] clears `leased_by` too, so a
//! late outcome of an attempt made before the replay is dropped.
//!
//! # The other calls
//!
//! - [`DeliveryStore::enqueue`]: one multi-row `INSERT … SELECT FROM
//!   unnest(…) ON CONFLICT DO NOTHING` (a batch over 500 rows: several, in
//!   one transaction); `(webhook_id, event_id)` is unique, so the copies
//!   of an event that every node produced make one row.
//! - [`DeliveryStore::list`]: newest first by `(created_at, id)`; the
//!   `before` cursor compares against that pair of the cursor's row (an
//!   unknown cursor gives an empty page: pruning it took everything older).
//! - [`DeliveryStore::record_outcome`]: a failure is one upsert that keeps
//!   an existing `failing_since`; a success one `UPDATE` that writes only
//!   when the subscription was failing.
//! - [`DeliveryStore::prune`]: one transaction, on one node at a time (a
//!   transaction-level advisory lock; the others skip the round); finished
//!   rows updated more than [`KEEP_FINISHED_MS`] ago, or ranked beyond
//!   [`KEEP_FINISHED`] per subscription (newest first, `row_number()`), and
//!   the rows of subscriptions not live unchanged for [`ORPHAN_GRACE_MS`].

use super::delivery::{
    Delivery, DeliveryPage, DeliveryQuery, DeliveryStatus, DeliveryStore, KEEP_FINISHED,
    KEEP_FINISHED_MS, ORPHAN_GRACE_MS,
};
use crate::pg::{PgPool, OP_TIMEOUT};
use crate::store::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Object};
use std::collections::HashMap;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

/// Rows per INSERT of an enqueue (more go in one transaction).
const INSERT_CHUNK: usize = 500;
/// Transaction-level advisory lock of a prune (`FGprune` in ASCII): one
/// node at a time.
const PRUNE_LOCK: i64 = 0x0046_4770_7275_6e65;

/// The columns a [`Delivery`] is read from, in [`delivery`]'s order.
const COLUMNS: &str = "id, webhook_id, event_id, event_type, payload, status, attempts, \
                       created_at, updated_at, next_attempt_at, last_status, last_error, \
                       last_latency_ms, response_snippet";

/// The PostgreSQL delivery store of one node.
pub struct PgDeliveryStore {
    pool: PgPool,
    /// This node's name: who holds the leases it takes (`leased_by`).
    node: String,
}

impl std::fmt::Debug for PgDeliveryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDeliveryStore")
            .field("target", &self.pool.target())
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Runs `$op` (which may borrow the pooled connection `$c`) bounded, and
/// returns the connection to the pool (or discards it when the database
/// failed).
macro_rules! pooled {
    ($self:ident, $c:ident => $op:expr) => {{
        #[allow(unused_mut)]
        let mut $c = $self.pool.client().await?;
        let out: Result<_, StoreError> = $self.pool.bounded(OP_TIMEOUT, $op).await;
        $self
            .pool
            .release($c, matches!(out, Err(StoreError::Unavailable(_))));
        out
    }};
}

impl PgDeliveryStore {
    /// A store on `pool`; `node` names this node in the leases it takes.
    pub fn new(pool: PgPool, node: impl Into<String>) -> Self {
        PgDeliveryStore {
            pool,
            node: node.into(),
        }
    }

    /// The name this node's leases carry.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn pg_error(&self, what: &str, e: tokio_postgres::Error) -> StoreError {
        self.pool.error(what, e).into()
    }

    async fn enqueue_in(&self, c: &mut Object, new: &[Delivery]) -> Result<usize, StoreError> {
        let e = |e| self.pg_error("webhook deliveries (enqueue)", e);
        let sql = format!(
            "INSERT INTO flexgate_webhook_deliveries ({COLUMNS}) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::integer[], $8::timestamptz[], $9::timestamptz[], \
             $10::timestamptz[], $11::integer[], $12::text[], $13::bigint[], $14::text[]) \
             ON CONFLICT DO NOTHING"
        );
        if new.len() <= INSERT_CHUNK {
            let cols = Columns::of(new)?;
            let n = c.execute(&sql, &cols.params()).await.map_err(e)?;
            return Ok(n as usize);
        }
        let tx = c.transaction().await.map_err(e)?;
        let stmt = tx.prepare(&sql).await.map_err(e)?;
        let mut added = 0;
        for chunk in new.chunks(INSERT_CHUNK) {
            let cols = Columns::of(chunk)?;
            added += tx.execute(&stmt, &cols.params()).await.map_err(e)? as usize;
        }
        tx.commit().await.map_err(e)?;
        Ok(added)
    }

    async fn lease_due_in(
        &self,
        c: &Object,
        webhooks: &[String],
        now_ms: u64,
        lease_ms: u64,
        max: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let now = ts(now_ms)?;
        let until = ts(now_ms.saturating_add(lease_ms))?;
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let sql = format!(
            "UPDATE flexgate_webhook_deliveries SET lease_until = $3, leased_by = $4 \
             WHERE id IN (SELECT id FROM flexgate_webhook_deliveries \
                          WHERE status = 'pending' AND webhook_id = ANY($1) \
                            AND next_attempt_at <= $2 \
                            AND (lease_until IS NULL OR lease_until < $2) \
                          ORDER BY next_attempt_at, created_at LIMIT $5 \
                          FOR UPDATE SKIP LOCKED) \
             RETURNING {COLUMNS}"
        );
        let rows = c
            .query(&sql, &[&webhooks, &now, &until, &self.node, &max])
            .await
            .map_err(|e| self.pg_error("webhook deliveries (lease)", e))?;
        let mut out = rows.iter().map(delivery).collect::<Result<Vec<_>, _>>()?;
        // RETURNING has no order.
        out.sort_by(|a, b| {
            (a.next_attempt_ms, a.created_ms, &a.id).cmp(&(b.next_attempt_ms, b.created_ms, &b.id))
        });
        Ok(out)
    }

    async fn finish_in(&self, c: &Object, d: &Delivery) -> Result<(), StoreError> {
        let next = opt_ts(next_attempt(d))?;
        let n = c
            .execute(
                "UPDATE flexgate_webhook_deliveries SET status = $3, attempts = $4, \
                 updated_at = $5, next_attempt_at = $6, last_status = $7, last_error = $8, \
                 last_latency_ms = $9, response_snippet = $10, lease_until = NULL \
                 WHERE id = $1 AND leased_by = $2",
                &[
                    &d.id,
                    &self.node,
                    &d.status.as_str(),
                    &attempts(d.attempts),
                    &ts(d.updated_ms)?,
                    &next,
                    &d.last_status.map(i32::from),
                    &d.last_error,
                    &opt_i64(d.last_latency_ms),
                    &d.response_snippet,
                ],
            )
            .await
            .map_err(|e| self.pg_error("webhook deliveries (finish)", e))?;
        if n == 0 {
            tracing::warn!(
                id = %d.id,
                webhook = %d.webhook_id,
                node = %self.node,
                "webhook delivery: the lease was lost (it expired and another node took the \
                 delivery, or the delivery was replayed or removed meanwhile); this attempt's \
                 outcome is not recorded"
            );
        }
        Ok(())
    }

    async fn list_in(
        &self,
        c: &Object,
        webhook_id: &str,
        q: &DeliveryQuery,
    ) -> Result<DeliveryPage, StoreError> {
        let status = q.status.map(DeliveryStatus::as_str);
        let size = q.page_size();
        let limit = (size + 1) as i64;
        let mut sql =
            format!("SELECT {COLUMNS} FROM flexgate_webhook_deliveries WHERE webhook_id = $1");
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&webhook_id];
        if let Some(s) = &status {
            params.push(s);
            sql.push_str(&format!(" AND status = ${}", params.len()));
        }
        if let Some(b) = &q.before {
            params.push(b);
            // No such delivery (pruned, with everything older): no rows.
            sql.push_str(&format!(
                " AND (created_at, id) < (SELECT created_at, id FROM flexgate_webhook_deliveries \
                 WHERE id = ${} AND webhook_id = $1)",
                params.len()
            ));
        }
        params.push(&limit);
        sql.push_str(&format!(
            " ORDER BY created_at DESC, id DESC LIMIT ${}",
            params.len()
        ));
        let rows = c
            .query(&sql, &params)
            .await
            .map_err(|e| self.pg_error("webhook deliveries (list)", e))?;
        let mut deliveries = rows.iter().map(delivery).collect::<Result<Vec<_>, _>>()?;
        let next = if deliveries.len() > size {
            deliveries.truncate(size);
            deliveries.last().map(|d| d.id.clone())
        } else {
            None
        };
        Ok(DeliveryPage { deliveries, next })
    }

    async fn get_in(
        &self,
        c: &Object,
        webhook_id: &str,
        id: &str,
    ) -> Result<Option<Delivery>, StoreError> {
        let row = c
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM flexgate_webhook_deliveries \
                     WHERE webhook_id = $1 AND id = $2"
                ),
                &[&webhook_id, &id],
            )
            .await
            .map_err(|e| self.pg_error("webhook deliveries (get)", e))?;
        row.as_ref().map(delivery).transpose()
    }

    async fn replay_in(
        &self,
        c: &Object,
        webhook_id: &str,
        id: &str,
        now_ms: u64,
    ) -> Result<Option<Delivery>, StoreError> {
        let now = ts(now_ms)?;
        let row = c
            .query_opt(
                &format!(
                    "UPDATE flexgate_webhook_deliveries SET status = 'pending', attempts = 0, \
                     next_attempt_at = $3, updated_at = $3, lease_until = NULL, leased_by = NULL \
                     WHERE webhook_id = $1 AND id = $2 AND status <> 'pending' \
                     RETURNING {COLUMNS}"
                ),
                &[&webhook_id, &id, &now],
            )
            .await
            .map_err(|e| self.pg_error("webhook deliveries (replay)", e))?;
        match row {
            Some(row) => delivery(&row).map(Some),
            // Pending already (returned unchanged), or no such delivery.
            None => self.get_in(c, webhook_id, id).await,
        }
    }

    async fn pending_counts_in(&self, c: &Object) -> Result<HashMap<String, u64>, StoreError> {
        let rows = c
            .query(
                "SELECT webhook_id, count(*) FROM flexgate_webhook_deliveries \
                 WHERE status = 'pending' GROUP BY webhook_id",
                &[],
            )
            .await
            .map_err(|e| self.pg_error("webhook deliveries (pending counts)", e))?;
        rows.iter()
            .map(|r| {
                let w: String = r.try_get(0).map_err(invalid)?;
                let n: i64 = r.try_get(1).map_err(invalid)?;
                Ok((w, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }

    async fn record_outcome_in(
        &self,
        c: &Object,
        webhook_id: &str,
        success: bool,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let e = |e| self.pg_error("webhook health", e);
        if success {
            // Nothing written while it keeps succeeding.
            c.execute(
                "UPDATE flexgate_webhook_health SET failing_since = NULL \
                 WHERE webhook_id = $1 AND failing_since IS NOT NULL",
                &[&webhook_id],
            )
            .await
            .map_err(e)?;
            return Ok(None);
        }
        let row = c
            .query_one(
                "INSERT INTO flexgate_webhook_health AS h (webhook_id, failing_since) \
                 VALUES ($1, $2) \
                 ON CONFLICT (webhook_id) DO UPDATE \
                 SET failing_since = coalesce(h.failing_since, EXCLUDED.failing_since) \
                 RETURNING failing_since",
                &[&webhook_id, &ts(now_ms)?],
            )
            .await
            .map_err(e)?;
        let since: Option<DateTime<Utc>> = row.try_get(0).map_err(invalid)?;
        Ok(since.map(ms))
    }

    async fn prune_in(
        &self,
        c: &mut Object,
        live: &[String],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let e = |e| self.pg_error("webhook deliveries (prune)", e);
        let cutoff = ts(now_ms.saturating_sub(KEEP_FINISHED_MS))?;
        let keep = KEEP_FINISHED as i64;
        let orphan_cutoff = ts(now_ms.saturating_sub(ORPHAN_GRACE_MS))?;
        let tx = c.transaction().await.map_err(e)?;
        // One node prunes at a time; the others skip this round.
        let mine: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK])
            .await
            .map_err(e)?
            .get(0);
        if !mine {
            return Ok(());
        }
        // Subscriptions deleted: what has not moved for ORPHAN_GRACE_MS
        // (another node may have created the subscription a moment ago),
        // then their health once nothing of theirs is left.
        tx.execute(
            "DELETE FROM flexgate_webhook_deliveries \
             WHERE webhook_id <> ALL($1) AND updated_at < $2",
            &[&live, &orphan_cutoff],
        )
        .await
        .map_err(e)?;
        tx.execute(
            "DELETE FROM flexgate_webhook_health h WHERE webhook_id <> ALL($1) \
             AND NOT EXISTS (SELECT 1 FROM flexgate_webhook_deliveries d \
                             WHERE d.webhook_id = h.webhook_id)",
            &[&live],
        )
        .await
        .map_err(e)?;
        // Finished ones: too old, or beyond the newest KEEP_FINISHED of their
        // subscription.
        tx.execute(
            "DELETE FROM flexgate_webhook_deliveries \
             WHERE status <> 'pending' AND updated_at < $1",
            &[&cutoff],
        )
        .await
        .map_err(e)?;
        tx.execute(
            "DELETE FROM flexgate_webhook_deliveries WHERE id IN ( \
                 SELECT id FROM ( \
                     SELECT id, row_number() OVER ( \
                         PARTITION BY webhook_id ORDER BY created_at DESC, id DESC) AS n \
                     FROM flexgate_webhook_deliveries WHERE status <> 'pending') ranked \
                 WHERE n > $1)",
            &[&keep],
        )
        .await
        .map_err(e)?;
        tx.commit().await.map_err(e)?;
        Ok(())
    }
}

#[async_trait]
impl DeliveryStore for PgDeliveryStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn enqueue(&self, new: &[Delivery]) -> Result<usize, StoreError> {
        if new.is_empty() {
            return Ok(0);
        }
        pooled!(self, c => self.enqueue_in(&mut c, new))
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
        pooled!(self, c => self.lease_due_in(&c, webhooks, now_ms, lease_ms, max))
    }

    async fn finish(&self, d: &Delivery) -> Result<(), StoreError> {
        pooled!(self, c => self.finish_in(&c, d))
    }

    async fn list(&self, webhook_id: &str, q: &DeliveryQuery) -> Result<DeliveryPage, StoreError> {
        pooled!(self, c => self.list_in(&c, webhook_id, q))
    }

    async fn get(&self, webhook_id: &str, id: &str) -> Result<Option<Delivery>, StoreError> {
        pooled!(self, c => self.get_in(&c, webhook_id, id))
    }

    async fn replay(
        &self,
        webhook_id: &str,
        id: &str,
        now_ms: u64,
    ) -> Result<Option<Delivery>, StoreError> {
        pooled!(self, c => self.replay_in(&c, webhook_id, id, now_ms))
    }

    async fn pending_counts(&self) -> Result<HashMap<String, u64>, StoreError> {
        pooled!(self, c => self.pending_counts_in(&c))
    }

    async fn record_outcome(
        &self,
        webhook_id: &str,
        success: bool,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        pooled!(self, c => self.record_outcome_in(&c, webhook_id, success, now_ms))
    }

    async fn prune(&self, live: &[String], now_ms: u64) -> Result<(), StoreError> {
        pooled!(self, c => self.prune_in(&mut c, live, now_ms))
    }
}

/// Deliveries as column arrays, for one `INSERT … SELECT * FROM unnest(…)`.
struct Columns<'a> {
    id: Vec<&'a str>,
    webhook_id: Vec<&'a str>,
    event_id: Vec<&'a str>,
    event_type: Vec<&'a str>,
    payload: Vec<&'a str>,
    status: Vec<&'static str>,
    attempts: Vec<i32>,
    created: Vec<DateTime<Utc>>,
    updated: Vec<DateTime<Utc>>,
    next: Vec<Option<DateTime<Utc>>>,
    last_status: Vec<Option<i32>>,
    last_error: Vec<Option<&'a str>>,
    last_latency: Vec<Option<i64>>,
    snippet: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    fn of(ds: &'a [Delivery]) -> Result<Columns<'a>, StoreError> {
        let mut c = Columns {
            id: Vec::with_capacity(ds.len()),
            webhook_id: Vec::with_capacity(ds.len()),
            event_id: Vec::with_capacity(ds.len()),
            event_type: Vec::with_capacity(ds.len()),
            payload: Vec::with_capacity(ds.len()),
            status: Vec::with_capacity(ds.len()),
            attempts: Vec::with_capacity(ds.len()),
            created: Vec::with_capacity(ds.len()),
            updated: Vec::with_capacity(ds.len()),
            next: Vec::with_capacity(ds.len()),
            last_status: Vec::with_capacity(ds.len()),
            last_error: Vec::with_capacity(ds.len()),
            last_latency: Vec::with_capacity(ds.len()),
            snippet: Vec::with_capacity(ds.len()),
        };
        for d in ds {
            c.id.push(&d.id);
            c.webhook_id.push(&d.webhook_id);
            c.event_id.push(&d.event_id);
            c.event_type.push(&d.event_type);
            c.payload.push(&d.payload);
            c.status.push(d.status.as_str());
            c.attempts.push(attempts(d.attempts));
            c.created.push(ts(d.created_ms)?);
            c.updated.push(ts(d.updated_ms)?);
            c.next.push(opt_ts(next_attempt(d))?);
            c.last_status.push(d.last_status.map(i32::from));
            c.last_error.push(d.last_error.as_deref());
            c.last_latency.push(opt_i64(d.last_latency_ms));
            c.snippet.push(d.response_snippet.as_deref());
        }
        Ok(c)
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 14] {
        [
            &self.id,
            &self.webhook_id,
            &self.event_id,
            &self.event_type,
            &self.payload,
            &self.status,
            &self.attempts,
            &self.created,
            &self.updated,
            &self.next,
            &self.last_status,
            &self.last_error,
            &self.last_latency,
            &self.snippet,
        ]
    }
}

/// A pending delivery without a next attempt time is due at once (at its
/// last update).
fn next_attempt(d: &Delivery) -> Option<u64> {
    match (d.status, d.next_attempt_ms) {
        (DeliveryStatus::Pending, None) => Some(d.updated_ms),
        (_, next) => next,
    }
}

/// Milliseconds since the epoch as a `timestamptz` value.
fn ts(ms: u64) -> Result<DateTime<Utc>, StoreError> {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .ok_or_else(|| StoreError::Invalid(format!("time {ms} ms is out of range")))
}

fn opt_ts(ms: Option<u64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    ms.map(ts).transpose()
}

/// A `timestamptz` as milliseconds since the epoch (0 before it).
fn ms(t: DateTime<Utc>) -> u64 {
    u64::try_from(t.timestamp_millis()).unwrap_or(0)
}

fn attempts(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn opt_i64(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn invalid(e: tokio_postgres::Error) -> StoreError {
    StoreError::Invalid(format!("a webhook delivery row cannot be read: {e}"))
}

/// A row of [`COLUMNS`].
fn delivery(row: &Row) -> Result<Delivery, StoreError> {
    let id: String = row.try_get(0).map_err(invalid)?;
    let status: String = row.try_get(5).map_err(invalid)?;
    let status = DeliveryStatus::parse(&status).ok_or_else(|| {
        StoreError::Invalid(format!(
            "webhook delivery {id:?} has an unknown status {status:?}"
        ))
    })?;
    let attempts: i32 = row.try_get(6).map_err(invalid)?;
    let created: DateTime<Utc> = row.try_get(7).map_err(invalid)?;
    let updated: DateTime<Utc> = row.try_get(8).map_err(invalid)?;
    let next: Option<DateTime<Utc>> = row.try_get(9).map_err(invalid)?;
    let last_status: Option<i32> = row.try_get(10).map_err(invalid)?;
    let last_latency: Option<i64> = row.try_get(12).map_err(invalid)?;
    Ok(Delivery {
        webhook_id: row.try_get(1).map_err(invalid)?,
        event_id: row.try_get(2).map_err(invalid)?,
        event_type: row.try_get(3).map_err(invalid)?,
        payload: row.try_get(4).map_err(invalid)?,
        status,
        attempts: u32::try_from(attempts).unwrap_or(0),
        created_ms: ms(created),
        updated_ms: ms(updated),
        next_attempt_ms: next.map(ms),
        last_status: last_status.and_then(|s| u16::try_from(s).ok()),
        last_error: row.try_get(11).map_err(invalid)?,
        last_latency_ms: last_latency.map(|v| u64::try_from(v).unwrap_or(0)),
        response_snippet: row.try_get(13).map_err(invalid)?,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_convert_both_ways() {
        for t in [0, 1, 1_800_000_000_123, 253_402_300_799_999] {
            assert_eq!(ms(ts(t).unwrap()), t);
        }
        assert!(matches!(ts(u64::MAX), Err(StoreError::Invalid(_))));
    }

    #[test]
    fn a_pending_delivery_without_a_due_time_is_due_at_once() {
        let mut d = Delivery {
            id: "d".into(),
            webhook_id: "w".into(),
            event_id: "e".into(),
            event_type: "t".into(),
            payload: "{}".into(),
            status: DeliveryStatus::Pending,
            attempts: 0,
            created_ms: 5,
            updated_ms: 7,
            next_attempt_ms: None,
            last_status: None,
            last_error: None,
            last_latency_ms: None,
            response_snippet: None,
        };
        assert_eq!(next_attempt(&d), Some(7));
        d.next_attempt_ms = Some(9);
        assert_eq!(next_attempt(&d), Some(9));
        d.status = DeliveryStatus::Failed;
        d.next_attempt_ms = None;
        assert_eq!(next_attempt(&d), None);
    }
}
