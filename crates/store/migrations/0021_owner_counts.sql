-- Each owner's workspaces and RAM, kept beside its admission row by the
-- transactions that insert and delete workspaces, so that admitting a
-- create reads two numbers instead of counting the owner's workspaces.
ALTER TABLE owner_locks ADD COLUMN workspaces BIGINT NOT NULL DEFAULT 0;
ALTER TABLE owner_locks ADD COLUMN ram_bytes BIGINT NOT NULL DEFAULT 0;
INSERT INTO owner_locks (owner) SELECT DISTINCT owner FROM workspaces WHERE true
    ON CONFLICT (owner) DO NOTHING;
UPDATE owner_locks SET
    workspaces = (SELECT COUNT(*) FROM workspaces w WHERE w.owner = owner_locks.owner),
    ram_bytes = (SELECT COALESCE(SUM(w.ram_bytes), 0) FROM workspaces w WHERE w.owner = owner_locks.owner);
