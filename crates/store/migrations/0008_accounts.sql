-- The account pool of dynamic-account workspaces (paper §2.2): one row per
-- uid leased on a node. The primary key makes two workspaces on one uid of
-- one node impossible; the unique workspace makes one lease per workspace.
CREATE TABLE account_leases (
    node TEXT NOT NULL,
    uid BIGINT NOT NULL,
    workspace_id TEXT NOT NULL UNIQUE,
    leased_at BIGINT NOT NULL,
    PRIMARY KEY (node, uid)
);
