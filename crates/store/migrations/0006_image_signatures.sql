-- An image may carry its importer's signature over its content id; the
-- policy can require one.
ALTER TABLE images ADD COLUMN signer TEXT;
ALTER TABLE images ADD COLUMN signature TEXT;
