-- FlexGate webhook deliveries, schema version 3.
--
-- One row per delivery: one event's payload for one subscription and the
-- state of its attempts (`webhooks::delivery`). Every node's dispatcher
-- inserts them (ON CONFLICT DO NOTHING, and `(webhook_id, event_id)` is
-- unique: an event produced by every node becomes one row), every node's
-- senders lease and update them, and the admin API reads them as the
-- delivery log.
--
-- A sender leases due rows for one attempt with one statement,
-- UPDATE … SET lease_until, leased_by WHERE id IN (SELECT … FOR UPDATE
-- SKIP LOCKED): concurrent senders, on any node, never take the same row,
-- and a lease that expires (its node died mid-attempt) makes the row due
-- again. Times are the nodes' clocks, not the database's.
CREATE TABLE flexgate_webhook_deliveries (
    -- `dlv_<32 hex>`. Byte order ("C"): the log's tie-break on equal
    -- creation times does not depend on the database's locale.
    id               text COLLATE "C" PRIMARY KEY,
    webhook_id       text        NOT NULL,
    -- The payload's `id`: the receiver's idempotency key (`webhook-id`).
    event_id         text        NOT NULL,
    event_type       text        NOT NULL,
    -- The exact JSON body POSTed (text, not jsonb: byte for byte what is
    -- signed).
    payload          text        NOT NULL,
    status           text        NOT NULL
                     CHECK (status IN ('pending', 'succeeded', 'failed')),
    -- Attempts made so far.
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    -- When the next attempt is due (pending rows).
    next_attempt_at  timestamptz,
    -- Leased until then (NULL: not leased) to the node `leased_by`, which
    -- stays once the attempt is finished: the node of the last attempt.
    lease_until      timestamptz,
    leased_by        text,
    -- The last attempt: HTTP status (NULL: no answer), why it failed, how
    -- long it took, the start of the answer's body.
    last_status      integer,
    last_error       text,
    last_latency_ms  bigint      CHECK (last_latency_ms >= 0),
    response_snippet text,
    UNIQUE (webhook_id, event_id)
);
-- The senders' scan: each subscription's pending rows by due time (a node
-- leases per subscription, so pending rows of a disabled one cost nothing).
CREATE INDEX flexgate_webhook_deliveries_due_idx
    ON flexgate_webhook_deliveries (webhook_id, next_attempt_at, created_at)
    WHERE status = 'pending';
-- The delivery log: one subscription's rows, newest first (and the prune's
-- per-subscription ranking).
CREATE INDEX flexgate_webhook_deliveries_log_idx
    ON flexgate_webhook_deliveries (webhook_id, created_at DESC, id DESC);

-- Per subscription: since when its attempts have been failing without a
-- success (NULL: they are not), for auto-disable.
CREATE TABLE flexgate_webhook_health (
    webhook_id    text        PRIMARY KEY,
    failing_since timestamptz
);
