-- Idempotency keys of mutating requests: a client that retries (after a
-- timeout, or against another replica) with the same key gets the first
-- answer instead of a second action. Scoped by the caller's DN; `status`
-- is NULL while the first request is still being handled.
CREATE TABLE idempotency (
    owner        TEXT NOT NULL,
    key          TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    status       BIGINT,
    content_type TEXT,
    body         TEXT,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE INDEX idempotency_created ON idempotency (created_at);
