//! A delivery — one payload for one subscription, and its attempts — and
//! the [`DeliveryStore`] that keeps them: the journal file beside the config
//! (embedded mode, [`super::journal`]) or PostgreSQL (database mode,
//! [`super::pg_store`]).
//!
//! Lifecycle: `pending` (due at `nextAttemptAt`) → leased by one sender for
//! one attempt → `succeeded`, `failed` (retries exhausted, 410, or the
//! subscription's URL refused: a dead letter, replayable), or `pending`
//! again with a later `nextAttemptAt`. The body is fixed when the delivery
//! is created; each attempt signs it with its own timestamp.

use crate::store::StoreError;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    /// A 2xx answered.
    Succeeded,
    /// Given up: retries exhausted, `410 Gone`, or refused before sending.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "succeeded" => Some(DeliveryStatus::Succeeded),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// One payload for one subscription. Times are milliseconds since the
/// Unix epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// `dlv_<32 hex>`.
    pub id: String,
    pub webhook_id: String,
    /// The payload's `id` and the `webhook-id` header: the receiver's
    /// idempotency key, the same on every attempt. Unique per subscription.
    pub event_id: String,
    /// The payload's `type`.
    pub event_type: String,
    /// The exact JSON body POSTed.
    pub payload: String,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// When the next attempt is due (pending only).
    pub next_attempt_ms: Option<u64>,
    /// HTTP status of the last attempt (none: no answer).
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Duration of the last attempt.
    pub last_latency_ms: Option<u64>,
    /// The start of the last answer's body (at most 1 KiB).
    pub response_snippet: Option<String>,
}

/// Filters and page of `GET /api/webhooks/{id}/deliveries`: newest first.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Only deliveries with this status.
    pub status: Option<DeliveryStatus>,
    /// Page size (default 50; the admin API refuses values outside 1–500).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
    /// Cursor: only deliveries created before this one (`next` of a page).
    pub before: Option<String>,
}

impl DeliveryQuery {
    pub fn page_size(&self) -> usize {
        self.limit.unwrap_or(50).clamp(1, 500)
    }
}

/// One page of deliveries, newest first.
#[derive(Clone, Debug, Default)]
pub struct DeliveryPage {
    pub deliveries: Vec<Delivery>,
    /// The id to pass as `before` for the next (older) page.
    pub next: Option<String>,
}

/// Finished deliveries (succeeded or failed) kept for the log, per subscription.
pub const KEEP_FINISHED: usize = 1000;
/// Finished deliveries older than this are removed.
pub const KEEP_FINISHED_MS: u64 = 7 * 24 * 3_600_000;
/// Deliveries of a subscription no longer configured are removed once
/// unchanged this long.
pub const ORPHAN_GRACE_MS: u64 = 3_600_000;

/// Where deliveries live. Every call is off the request path (the
/// dispatcher, the senders and the admin API make them).
#[async_trait]
pub trait DeliveryStore: Send + Sync + 'static {
    /// `journal` or `postgres`.
    fn kind(&self) -> &'static str;

    /// Adds new pending deliveries. One whose `(webhook_id, event_id)` is
    /// stored already is skipped: a cluster-wide event produced by every
    /// node becomes one delivery. Returns how many were added.
    async fn enqueue(&self, new: &[Delivery]) -> Result<usize, StoreError>;

    /// Up to `max` pending deliveries of the `webhooks` listed (the enabled
    /// subscriptions), due at `now_ms`, oldest due first, each leased to
    /// this caller until `now_ms + lease_ms`: no other sender (on this node
    /// or another) gets it before [`DeliveryStore::finish`] or the lease's
    /// expiry (a node that died mid-delivery).
    async fn lease_due(
        &self,
        webhooks: &[String],
        now_ms: u64,
        lease_ms: u64,
        max: usize,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Records an attempt: stores `d` as updated by the sender (status,
    /// attempts, next attempt, last status/error/latency/snippet) and
    /// releases its lease.
    async fn finish(&self, d: &Delivery) -> Result<(), StoreError>;

    /// A page of one subscription's deliveries, newest first.
    async fn list(&self, webhook_id: &str, q: &DeliveryQuery) -> Result<DeliveryPage, StoreError>;

    /// One delivery of a subscription.
    async fn get(&self, webhook_id: &str, id: &str) -> Result<Option<Delivery>, StoreError>;

    /// Makes a finished delivery pending again, due now, with its attempts
    /// counted from 0 (and not leased). `None`: no such delivery. A pending
    /// delivery is returned unchanged.
    async fn replay(
        &self,
        webhook_id: &str,
        id: &str,
        now_ms: u64,
    ) -> Result<Option<Delivery>, StoreError>;

    /// Pending deliveries per subscription (queue depth).
    async fn pending_counts(&self) -> Result<HashMap<String, u64>, StoreError>;

    /// Records the outcome of an attempt for the subscription's health and
    /// returns since when it has been failing without a success (`None`
    /// after a success). The first failure after a success starts the run.
    async fn record_outcome(
        &self,
        webhook_id: &str,
        success: bool,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError>;

    /// Removes finished deliveries beyond [`KEEP_FINISHED`] per
    /// subscription or older than [`KEEP_FINISHED_MS`], and the deliveries
    /// of subscriptions not in `live` (deleted) unchanged for
    /// [`ORPHAN_GRACE_MS`] (in a cluster, a subscription another node just
    /// created may not be live on the caller yet), with their health
    /// record once none is left.
    async fn prune(&self, live: &[String], now_ms: u64) -> Result<(), StoreError>;

    /// This process is done with the store (shutdown, or the hand-off of a
    /// binary upgrade): release what only one process may hold. Calls
    /// afterwards answer [`StoreError::Unavailable`].
    async fn close(&self) {}
}
