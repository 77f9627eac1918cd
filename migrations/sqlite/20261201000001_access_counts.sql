-- Repeated accesses of one case file by one account, counted between records
-- of the case log instead of each getting a record (see `Store::record_access`).
-- A row exists from the key's first record on; `pending` accesses are durable
-- here until they are folded into the log as one counted record.
CREATE TABLE access_counts (
    case_ref         TEXT NOT NULL REFERENCES cases (ref),
    event            TEXT NOT NULL,
    file             TEXT NOT NULL,
    uid              INTEGER NOT NULL,
    staff            INTEGER NOT NULL,
    actor            TEXT NOT NULL,
    file_id          TEXT NOT NULL,
    size             INTEGER NOT NULL,
    -- The current window (unix seconds) and the records it has had.
    window_start     INTEGER NOT NULL,
    window_records   INTEGER NOT NULL,
    -- Accesses not yet in the log: how many, bytes read, complete reads.
    pending          INTEGER NOT NULL,
    pending_bytes    INTEGER NOT NULL,
    pending_complete INTEGER NOT NULL,
    first_at         TEXT,
    last_at          TEXT,
    last_pid         INTEGER,
    PRIMARY KEY (case_ref, event, file, uid, staff)
);
CREATE INDEX access_counts_pending ON access_counts (case_ref) WHERE pending > 0;

-- Logs written before counting: every file opened or read so far has its row.
INSERT INTO access_counts (case_ref, event, file, uid, staff, actor, file_id, size,
                           window_start, window_records, pending, pending_bytes, pending_complete)
SELECT case_ref, event, json_extract(details, '$.file'), uid,
       COALESCE(json_extract(details, '$.staff'), 0),
       MAX(actor), COALESCE(MAX(json_extract(details, '$.file_id')), ''),
       COALESCE(MAX(json_extract(details, '$.size')), 0), 0, 0, 0, 0, 0
FROM case_events
WHERE event IN ('file_opened', 'file_read') AND json_valid(details)
  AND json_type(details, '$.file') = 'text'
GROUP BY case_ref, event, json_extract(details, '$.file'), uid, COALESCE(json_extract(details, '$.staff'), 0);
