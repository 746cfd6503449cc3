-- FlexGate request history, schema version 2.
--
-- Raw rows: one per proxied request, written in batches by every node's
-- history writer (binary COPY). Partitioned by day (UTC) on `time`; the
-- maintenance task creates the partitions of today and tomorrow
-- (`flexgate_request_log_pYYYYMMDD`) and drops those older than
-- `history.retentionDays`. Rows outside every day partition (a clock far
-- off, a partition not created yet) land in the DEFAULT partition instead
-- of failing their batch; creating a day partition moves its rows out of it.
CREATE TABLE flexgate_request_log (
    time        timestamptz      NOT NULL,
    node_id     text             NOT NULL,
    request_id  text             NOT NULL,
    method      text             NOT NULL,
    -- Without the query string.
    path        text             NOT NULL,
    -- NULL: the request matched no route.
    route_id    text,
    upstream    text,
    -- 0: no response was sent (the client went away first).
    status      smallint         NOT NULL,
    duration_ms double precision NOT NULL,
    client_ip   inet,
    user_agent  text,
    bytes_in    bigint           NOT NULL,
    bytes_out   bigint           NOT NULL
) PARTITION BY RANGE (time);

CREATE TABLE flexgate_request_log_default PARTITION OF flexgate_request_log DEFAULT;

-- Rows arrive in time order: a BRIN index is tiny and cheap to maintain,
-- and serves the roll-ups' time ranges.
CREATE INDEX flexgate_request_log_time_idx ON flexgate_request_log USING brin (time);

-- Roll-ups, recomputed from the raw rows by the maintenance task. One row
-- per bucket (start of the UTC hour or day) and route; route_id `*` is all
-- routes together, `-` the requests that matched no route.
-- errors: status >= 500 or 0 (no response); client_errors: 400-499.
CREATE TABLE flexgate_request_stats_hourly (
    bucket        timestamptz      NOT NULL,
    route_id      text             NOT NULL,
    requests      bigint           NOT NULL,
    errors        bigint           NOT NULL,
    client_errors bigint           NOT NULL,
    avg_ms        double precision NOT NULL,
    p50_ms        double precision NOT NULL,
    p95_ms        double precision NOT NULL,
    p99_ms        double precision NOT NULL,
    bytes_in      bigint           NOT NULL,
    bytes_out     bigint           NOT NULL,
    updated_at    timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (bucket, route_id)
);

CREATE TABLE flexgate_request_stats_daily (LIKE flexgate_request_stats_hourly INCLUDING ALL);
