-- An action in flight on a workspace's node (start, stop, pause, unpause),
-- written before the node is asked and cleared by the change that records
-- its result: after a crash in between, the service finishes or forgets it
-- by what the node reports. `pending_by` is the service process that wrote
-- it (a process that is gone cannot finish it itself).
ALTER TABLE workspaces ADD COLUMN pending TEXT;
ALTER TABLE workspaces ADD COLUMN pending_by TEXT;
