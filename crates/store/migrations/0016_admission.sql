-- Admission in the database (not in a process's memory), so that any number
-- of service replicas on one database keep quotas exact: a create locks
-- its owner's row here (an UPDATE: a row lock on PostgreSQL, the write lock
-- on SQLite) before it counts the owner's workspaces and inserts.
CREATE TABLE owner_locks (
    owner TEXT PRIMARY KEY,
    creates BIGINT NOT NULL DEFAULT 0
);
