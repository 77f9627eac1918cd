-- The register on PostgreSQL: the same tables as on SQLite (migrations/sqlite),
-- shared by every transfer host. Text compares and sorts bytewise (COLLATE "C"),
-- as on SQLite, whatever the database's locale.

-- The GDB catalog: one row per file, added and updated by `catalog import`, never removed.
CREATE TABLE catalog (
    file_id      TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    path         TEXT COLLATE "C" NOT NULL,
    base_name    TEXT COLLATE "C" NOT NULL,
    department   TEXT COLLATE "C" NOT NULL,
    size         BIGINT NOT NULL,
    sha256       TEXT COLLATE "C" NOT NULL,
    submitted_ns BIGINT NOT NULL,
    extra        TEXT COLLATE "C" NOT NULL DEFAULT '',
    imported_at  TEXT COLLATE "C" NOT NULL
);
CREATE INDEX catalog_path ON catalog (path);
CREATE INDEX catalog_base_name ON catalog (base_name);

-- One row per case; `event_count` and `head_hash` anchor the case's log chain
-- and change in the same transaction as every record appended to it. Appends
-- lock this row (SELECT … FOR UPDATE), which serialises them across hosts.
CREATE TABLE cases (
    ref         TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    state       TEXT COLLATE "C" NOT NULL,
    requester   TEXT COLLATE "C" NOT NULL,
    department  TEXT COLLATE "C",
    submitter   TEXT COLLATE "C",
    verified    BIGINT NOT NULL,
    report      TEXT COLLATE "C" NOT NULL,
    created_at  TEXT COLLATE "C" NOT NULL,
    state_since BIGINT NOT NULL,
    event_count BIGINT NOT NULL,
    head_hash   TEXT COLLATE "C" NOT NULL
);
CREATE INDEX cases_state ON cases (state);

-- The files a case authorizes, as the catalog described them when it was opened.
CREATE TABLE case_files (
    case_ref     TEXT COLLATE "C" NOT NULL REFERENCES cases (ref),
    idx          BIGINT NOT NULL,
    descriptor   TEXT COLLATE "C" NOT NULL,
    export_name  TEXT COLLATE "C" NOT NULL,
    file_id      TEXT COLLATE "C" NOT NULL,
    path         TEXT COLLATE "C" NOT NULL,
    department   TEXT COLLATE "C" NOT NULL,
    size         BIGINT NOT NULL,
    sha256       TEXT COLLATE "C" NOT NULL,
    submitted_ns BIGINT NOT NULL,
    extra        TEXT COLLATE "C" NOT NULL DEFAULT '',
    PRIMARY KEY (case_ref, idx)
);
CREATE INDEX case_files_file ON case_files (file_id);

-- The case log: a sha256 hash chain per case (see src/audit.rs).
CREATE TABLE case_events (
    case_ref  TEXT COLLATE "C" NOT NULL REFERENCES cases (ref),
    seq       BIGINT NOT NULL,
    at        TEXT COLLATE "C" NOT NULL,
    actor     TEXT COLLATE "C" NOT NULL,
    uid       BIGINT NOT NULL,
    event     TEXT COLLATE "C" NOT NULL,
    details   TEXT COLLATE "C" NOT NULL,
    prev_hash TEXT COLLATE "C" NOT NULL,
    hash      TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (case_ref, seq)
);

-- Repeated accesses of one case file by one account, counted between records
-- of the case log (see `Store::record_access`).
CREATE TABLE access_counts (
    case_ref         TEXT COLLATE "C" NOT NULL REFERENCES cases (ref),
    event            TEXT COLLATE "C" NOT NULL,
    file             TEXT COLLATE "C" NOT NULL,
    uid              BIGINT NOT NULL,
    staff            BIGINT NOT NULL,
    actor            TEXT COLLATE "C" NOT NULL,
    file_id          TEXT COLLATE "C" NOT NULL,
    size             BIGINT NOT NULL,
    window_start     BIGINT NOT NULL,
    window_records   BIGINT NOT NULL,
    pending          BIGINT NOT NULL,
    pending_bytes    BIGINT NOT NULL,
    pending_complete BIGINT NOT NULL,
    first_at         TEXT COLLATE "C",
    last_at          TEXT COLLATE "C",
    last_pid         BIGINT,
    PRIMARY KEY (case_ref, event, file, uid, staff)
);
CREATE INDEX access_counts_pending ON access_counts (case_ref) WHERE pending > 0;
