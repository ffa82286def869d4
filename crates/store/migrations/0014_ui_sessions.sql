-- The dashboard's sign-in: one-time links (`kind` link) minted for an
-- authenticated client, and the browser sessions they become (`kind`
-- session). Only a digest of each secret is kept.
CREATE TABLE ui_sessions (
    id_hash    TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    identity   TEXT NOT NULL,
    csrf       TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
