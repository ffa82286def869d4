-- Agreements (offers and reservations of capacity) and the best-effort
-- workspaces suspended to make room for them. An agreement is one JSON
-- document with the columns the scheduler and the capacity ledger query;
-- its history lives in the document.
CREATE TABLE agreements (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    state       TEXT NOT NULL,
    start_at    BIGINT NOT NULL,
    end_at      BIGINT NOT NULL,
    doc         TEXT NOT NULL,
    version     BIGINT NOT NULL,
    modified_at BIGINT NOT NULL
);
CREATE INDEX agreements_owner ON agreements (owner);
CREATE INDEX agreements_state ON agreements (state, start_at);

-- A best-effort workspace checked in to make room for an agreement, until
-- it is resumed.
CREATE TABLE suspensions (
    workspace_id TEXT PRIMARY KEY,
    agreement_id TEXT NOT NULL,
    node         TEXT NOT NULL,
    was          TEXT NOT NULL,
    at           BIGINT NOT NULL
);
