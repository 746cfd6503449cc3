//! Webhooks: every event on the bus, delivered to the subscriptions that
//! asked for it as a signed POST, retried, coalesced, durable, and sent once
//! per cluster.
//!
//! Flow (all off the request path; emitting an event never waits):
//!
//! 1. [`dispatch`] reads the event bus, matches each event against the
//!    enabled subscriptions' `events` filters, folds high-rate events
//!    into per-subscription windows ([`coalesce`]) and puts the rest, and
//!    each closed window, in a bounded per-subscription outbox; it writes
//!    the outboxes to the [`delivery::DeliveryStore`] in batches.
//! 2. [`send`] leases due deliveries from the store, signs and POSTs each
//!    ([`sign`], [`client`]), and records the attempt: success, a retry
//!    later (exponential backoff with full jitter, `Retry-After`), or a
//!    dead letter.
//! 3. The admin API lists deliveries, replays dead letters and sends test
//!    events through [`Webhooks`].
//!
//! Parts: `delivery.rs` (the delivery and the store interface),
//! `journal.rs` (embedded store: an append-only file), `pg_store.rs`
//! (database store: leases with `FOR UPDATE SKIP LOCKED`), `sign.rs`
//! (Standard Webhooks signatures), `client.rs` (the outbound POST under the
//! SSRF policy), `coalesce.rs`, `dispatch.rs`, `send.rs`.

pub mod client;
pub mod delivery;
pub mod journal;
pub mod pg_store;
pub mod sign;
