-- The node an action in flight moves a workspace to (a migration's target),
-- so that a service restarted after a crash can finish or roll it back on
-- both nodes.
ALTER TABLE workspaces ADD COLUMN pending_to TEXT;
