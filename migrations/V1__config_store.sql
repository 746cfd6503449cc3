-- FlexGate config store, schema version 1.
--
-- One row per resource, in list order (`position`), with the resource's
-- config as camelCase JSON (`body`), exactly as the YAML/admin API spells it.
-- The whole state carries one version (`config_version`); every admin write
-- bumps it in the same transaction that rewrites the rows and appends the
-- audit entries.

-- The single version row (absent or 0: nothing stored yet).
CREATE TABLE config_version (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    version    bigint      NOT NULL CHECK (version >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO config_version (singleton, version) VALUES (true, 0);

-- routes: id is the route's `id`, or `route-<index>` when it has none
-- (the config's default); the body keeps the original (absent) id.
CREATE TABLE routes (
    id       text    PRIMARY KEY,
    position integer NOT NULL UNIQUE,
    body     jsonb   NOT NULL
);

CREATE TABLE upstreams (
    name     text    PRIMARY KEY,
    position integer NOT NULL UNIQUE,
    body     jsonb   NOT NULL
);

-- webhooks: id is the webhook's `id`, or `webhook-<index>` when it has none.
CREATE TABLE webhooks (
    id       text    PRIMARY KEY,
    position integer NOT NULL UNIQUE,
    body     jsonb   NOT NULL
);

-- Generated API keys: the SHA-256 digest only, never the key itself.
CREATE TABLE api_keys (
    id         text    PRIMARY KEY,
    position   integer NOT NULL UNIQUE,
    name       text    NOT NULL,
    digest     text    NOT NULL CHECK (digest ~ '^[0-9a-f]{64}$'),
    scopes     text[]  NOT NULL DEFAULT '{}',
    routes     text[]  NOT NULL DEFAULT '{}',
    -- Unix seconds, as in the key store file.
    expires_at bigint  CHECK (expires_at >= 0),
    revoked    boolean NOT NULL DEFAULT false,
    created_at bigint  NOT NULL CHECK (created_at >= 0)
);

-- Whole sections: `proxy` (the reloadable proxy defaults), `security`,
-- `rateLimit`, `logging`.
CREATE TABLE settings (
    name text  PRIMARY KEY,
    body jsonb NOT NULL
);

-- Append-only audit trail; `version` is the config version a change produced.
CREATE TABLE audit_log (
    id       bigserial   PRIMARY KEY,
    time     timestamptz NOT NULL,
    actor    text        NOT NULL,
    action   text        NOT NULL,
    resource text        NOT NULL,
    before   jsonb,
    after    jsonb,
    version  bigint      NOT NULL
);
-- Newest-first pages (the primary key serves the id cursor; these serve the
-- time and resource filters).
CREATE INDEX audit_log_time_idx ON audit_log (time DESC, id DESC);
CREATE INDEX audit_log_resource_idx ON audit_log (resource, id DESC);
