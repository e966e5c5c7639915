-- Keys, plans, daily usage and audit events (PostgreSQL).
--
-- Times are milliseconds since the Unix epoch (BIGINT), lists and JSON
-- objects are JSON text: the same columns and queries serve SQLite.

CREATE TABLE plans (
    name             TEXT PRIMARY KEY,
    description      TEXT   NOT NULL DEFAULT '',
    -- JSON array of limits: [{"requests":100,"window_ms":60000,...}]
    limits           TEXT   NOT NULL,
    quota_requests   BIGINT,
    quota_refill_day BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    name         TEXT   NOT NULL,
    owner_id     TEXT   NOT NULL,
    plan         TEXT   NOT NULL REFERENCES plans (name),
    scopes       TEXT   NOT NULL,
    metadata     TEXT   NOT NULL,
    -- The key's own limits replacing its plan's; NULL: the plan's apply.
    limits       TEXT,
    -- "sk_live_...x7Qa": never enough to rebuild the secret.
    hint         TEXT   NOT NULL,
    enabled      BIGINT NOT NULL,
    expires_at   BIGINT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
-- ListKeys filters by owner or plan and pages by id.
CREATE INDEX api_keys_owner ON api_keys (owner_id, id);
CREATE INDEX api_keys_plan ON api_keys (plan, id);

-- A key's secrets, as keyed hashes: the current one (expires_at NULL) and,
-- after a rotation, the previous ones until their grace period ends.
CREATE TABLE key_secrets (
    hash       TEXT PRIMARY KEY,
    key_id     TEXT   NOT NULL REFERENCES api_keys (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT
);
CREATE INDEX key_secrets_key ON key_secrets (key_id);

CREATE TABLE usage_daily (
    key_id   TEXT   NOT NULL,
    -- UTC day, YYYY-MM-DD
    day      TEXT   NOT NULL,
    admitted BIGINT NOT NULL DEFAULT 0,
    limited  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day)
);
-- Usage of every key over a range of days.
CREATE INDEX usage_daily_day ON usage_daily (day, key_id);

CREATE TABLE audit_events (
    id         BIGSERIAL PRIMARY KEY,
    at         BIGINT NOT NULL,
    actor      TEXT   NOT NULL,
    action     TEXT   NOT NULL,
    target     TEXT   NOT NULL,
    request_id TEXT   NOT NULL,
    -- JSON object; never a secret.
    details    TEXT   NOT NULL
);
CREATE INDEX audit_events_target ON audit_events (target, id);
CREATE INDEX audit_events_actor ON audit_events (actor, id);
