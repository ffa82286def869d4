-- Hot images (a paused workspace's memory and disk) remember the machine they
-- were saved from: a restore needs the same RAM and vCPUs.
ALTER TABLE images ADD COLUMN machine TEXT;
