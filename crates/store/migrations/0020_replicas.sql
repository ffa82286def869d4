-- The service replicas that are alive: each renews its lease every second
-- or so. An action in flight (workspaces.pending_by) whose replica's lease
-- has run out was left by a replica that died, and is settled by another.
CREATE TABLE replicas (
    instance    TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    alive_until BIGINT NOT NULL
);

-- The replica handling an idempotency key's first request: a retry takes
-- the claim over as soon as that replica's lease has run out.
ALTER TABLE idempotency ADD COLUMN replica TEXT;

-- What each heartbeat and registration asks, without reading every record:
-- a node's workspaces, and the few with an action in flight.
CREATE INDEX workspaces_node ON workspaces (node);
CREATE INDEX workspaces_pending ON workspaces (pending) WHERE pending IS NOT NULL;

-- The replica running a long operation (an image pull or push): once its
-- lease has run out, the operation is reported failed at once.
ALTER TABLE operations ADD COLUMN replica TEXT;
