-- The address pool (paper §3.2): one row per address in use. The primary
-- key is what makes two workspaces on one address impossible, also under
-- concurrent creates and across services sharing a database.
CREATE TABLE addresses (
    network TEXT NOT NULL,
    address TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    nic TEXT NOT NULL,
    mac TEXT NOT NULL,
    allocated_at BIGINT NOT NULL,
    PRIMARY KEY (network, address)
);
CREATE INDEX addresses_workspace ON addresses (workspace_id);
