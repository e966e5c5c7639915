-- Usage batches already written (PostgreSQL): the flusher records each batch's
-- id in the transaction that adds its counts, so a batch retried after its
-- commit succeeded unseen (the connection dropped at COMMIT) is skipped
-- instead of counted twice. Ids older than a day are pruned.

CREATE TABLE usage_flushes (
    flush_id   TEXT   PRIMARY KEY,
    -- Milliseconds since the Unix epoch.
    applied_at BIGINT NOT NULL
);
CREATE INDEX usage_flushes_applied_at ON usage_flushes (applied_at);
