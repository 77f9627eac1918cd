-- The host that serves a case (stages or verifies it and shows it in its
-- mount); set at approval and by `case move`.
ALTER TABLE cases ADD COLUMN host TEXT;

-- The daemons sharing this register, each with its last heartbeat.
CREATE TABLE hosts (
    name             TEXT PRIMARY KEY NOT NULL,
    version          TEXT NOT NULL,
    mode             TEXT NOT NULL,
    read_path        TEXT NOT NULL,
    directory_sha256 TEXT NOT NULL,
    started_at       TEXT NOT NULL,
    heartbeat_at     INTEGER NOT NULL,
    heartbeat_secs   INTEGER NOT NULL,
    cases_served     INTEGER NOT NULL,
    retired_at       TEXT,
    retired_reason   TEXT
);

-- What the serving host reports of a case it stages or serves: whether it
-- is in its mount, and how far its staging got. Other hosts answer
-- `case show` and `case approve`'s wait from it.
CREATE TABLE serving (
    case_ref   TEXT PRIMARY KEY NOT NULL REFERENCES cases (ref),
    host       TEXT NOT NULL,
    published  INTEGER NOT NULL,
    done       INTEGER NOT NULL,
    total      INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
