-- Listing an owner's workspaces in creation order, and summing an owner's
-- RAM for admission, without scanning every record.
CREATE INDEX workspaces_owner_created ON workspaces (owner, created_at, id);
CREATE INDEX workspaces_owner_ram ON workspaces (owner, ram_bytes);
