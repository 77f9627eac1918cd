-- The host that serves a case; see migrations/sqlite/20261203000001_hosts.sql.
ALTER TABLE cases ADD COLUMN host TEXT COLLATE "C";

CREATE TABLE hosts (
    name             TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    version          TEXT COLLATE "C" NOT NULL,
    mode             TEXT COLLATE "C" NOT NULL,
    read_path        TEXT COLLATE "C" NOT NULL,
    directory_sha256 TEXT COLLATE "C" NOT NULL,
    started_at       TEXT COLLATE "C" NOT NULL,
    heartbeat_at     BIGINT NOT NULL,
    heartbeat_secs   BIGINT NOT NULL,
    cases_served     BIGINT NOT NULL,
    retired_at       TEXT COLLATE "C",
    retired_reason   TEXT COLLATE "C"
);

CREATE TABLE serving (
    case_ref   TEXT COLLATE "C" PRIMARY KEY NOT NULL REFERENCES cases (ref),
    host       TEXT COLLATE "C" NOT NULL,
    published  BIGINT NOT NULL,
    done       BIGINT NOT NULL,
    total      BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
