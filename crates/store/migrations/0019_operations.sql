-- Long-running operations (image pulls), one JSON document each, so that
-- any replica can say how far one has come.
CREATE TABLE operations (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    doc         TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    modified_at BIGINT NOT NULL
);
CREATE INDEX operations_modified ON operations (modified_at);
