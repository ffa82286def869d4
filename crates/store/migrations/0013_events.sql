-- What happened, in order: lifecycle transitions, jobs started and ended,
-- nodes up and lost, images added and removed. `seq` is global and grows
-- in commit order (writers serialize on it), so a reader resumes from any
-- seq it saw. `owner` is who may see it besides administrators (NULL:
-- everyone).
CREATE TABLE events (
    seq     BIGINT PRIMARY KEY,
    at      BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    subject TEXT NOT NULL,
    owner   TEXT,
    data    TEXT NOT NULL
);
CREATE INDEX events_at ON events (at);
-- A node's loss is reported once, until it is back.
ALTER TABLE nodes ADD COLUMN lost BIGINT NOT NULL DEFAULT 0;
