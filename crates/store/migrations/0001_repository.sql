-- Portable SQL: the same migration runs on SQLite and PostgreSQL.
-- Times are Unix milliseconds; integers are BIGINT so both decode as i64.

CREATE TABLE workspaces (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    owner         TEXT NOT NULL,
    category      TEXT NOT NULL,
    description   TEXT NOT NULL,
    binding       TEXT,
    state         TEXT NOT NULL,
    placement     TEXT NOT NULL,
    node          TEXT,
    lock_holder   TEXT,
    lock_since    BIGINT,
    image_id      TEXT NOT NULL,
    disk_path     TEXT,
    reason        TEXT,
    ram_bytes     BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    terminates_at BIGINT,
    modified_at   BIGINT NOT NULL,
    version       BIGINT NOT NULL
);
CREATE UNIQUE INDEX workspaces_owner_name ON workspaces (owner, name);
CREATE INDEX workspaces_created ON workspaces (created_at, id);
CREATE INDEX workspaces_terminates ON workspaces (terminates_at);

-- Every pool image a workspace depends on (its disk's backing image and its
-- devices' images), so an image in use cannot be removed.
CREATE TABLE workspace_images (
    workspace_id TEXT NOT NULL,
    image_id     TEXT NOT NULL,
    PRIMARY KEY (workspace_id, image_id)
);
CREATE INDEX workspace_images_image ON workspace_images (image_id);

-- Kept after a workspace is destroyed: the audit trail outlives the record.
CREATE TABLE transitions (
    workspace_id TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    at           BIGINT NOT NULL,
    action       TEXT NOT NULL,
    from_state   TEXT,
    to_state     TEXT,
    placement    TEXT,
    actor        TEXT NOT NULL,
    detail       TEXT,
    PRIMARY KEY (workspace_id, seq)
);

CREATE TABLE images (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    format       TEXT,
    virtual_size BIGINT NOT NULL,
    stored_size  BIGINT NOT NULL,
    files        TEXT NOT NULL,
    cmdline      TEXT,
    owner        TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);

CREATE TABLE image_tags (
    name       TEXT NOT NULL,
    tag        TEXT NOT NULL,
    image_id   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (name, tag)
);
CREATE INDEX image_tags_image ON image_tags (image_id);
