-- Jobs run in workspaces (paper §3.1: jobs map to workspaces).
CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    owner        TEXT NOT NULL,
    node         TEXT NOT NULL,
    argv         TEXT NOT NULL,
    state        TEXT NOT NULL,
    exit_code    BIGINT,
    signal       BIGINT,
    timed_out    BIGINT NOT NULL,
    message      TEXT,
    cancelled    BIGINT NOT NULL,
    output_bytes BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    ended_at     BIGINT
);
CREATE INDEX jobs_workspace ON jobs (workspace_id, created_at);
