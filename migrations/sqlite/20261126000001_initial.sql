-- The GDB catalog: one row per file, added and updated by `catalog import`, never removed.
CREATE TABLE catalog (
    file_id      TEXT PRIMARY KEY NOT NULL,
    path         TEXT NOT NULL,
    base_name    TEXT NOT NULL,
    department   TEXT NOT NULL,
    size         INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    submitted_ns INTEGER NOT NULL,
    extra        TEXT NOT NULL DEFAULT '',
    imported_at  TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX catalog_path ON catalog (path);
CREATE INDEX catalog_base_name ON catalog (base_name);

-- One row per case; `event_count` and `head_hash` anchor the case's log chain
-- and change in the same transaction as every record appended to it.
CREATE TABLE cases (
    ref         TEXT PRIMARY KEY NOT NULL,
    state       TEXT NOT NULL,
    requester   TEXT NOT NULL,
    department  TEXT,
    submitter   TEXT,
    verified    INTEGER NOT NULL,
    report      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    state_since INTEGER NOT NULL,
    event_count INTEGER NOT NULL,
    head_hash   TEXT NOT NULL
);
CREATE INDEX cases_state ON cases (state);

-- The files a case authorizes, as the catalog described them when it was opened.
CREATE TABLE case_files (
    case_ref     TEXT NOT NULL REFERENCES cases (ref),
    idx          INTEGER NOT NULL,
    descriptor   TEXT NOT NULL,
    export_name  TEXT NOT NULL,
    file_id      TEXT NOT NULL,
    path         TEXT NOT NULL,
    department   TEXT NOT NULL,
    size         INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    submitted_ns INTEGER NOT NULL,
    extra        TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (case_ref, idx)
);
CREATE INDEX case_files_file ON case_files (file_id);

-- The case log: a sha256 hash chain per case (see src/audit.rs).
CREATE TABLE case_events (
    case_ref  TEXT NOT NULL REFERENCES cases (ref),
    seq       INTEGER NOT NULL,
    at        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    uid       INTEGER NOT NULL,
    event     TEXT NOT NULL,
    details   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL,
    PRIMARY KEY (case_ref, seq)
);
