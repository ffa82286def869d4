-- Hosts running a VW Manager, as they last reported themselves.
CREATE TABLE nodes (
    name          TEXT PRIMARY KEY,
    url           TEXT NOT NULL,
    report        TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    last_seen     BIGINT NOT NULL
);
