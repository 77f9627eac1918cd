-- The event feed (`workcopy events`), as in the SQLite schema: every
-- case-log record gets a global, gap-free number in commit order. Each
-- record's insert takes the next number with
-- `UPDATE feed_head SET seq = seq + 1 RETURNING seq` in its own transaction,
-- after the case's row lock: the counter row's lock orders the committers,
-- so a number becomes visible only after every smaller one, and a
-- transaction that rolls back gives its number back.
CREATE TABLE feed_head (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);

ALTER TABLE case_events ADD COLUMN feed_seq BIGINT;

-- Records written before the feed, numbered by the second they were written
-- in (each case's records in their order), cases in the same second by reference.
UPDATE case_events SET feed_seq = numbered.n
FROM (SELECT case_ref AS r, seq AS s, ROW_NUMBER() OVER (ORDER BY left(at, 19), case_ref, seq) AS n FROM case_events) AS numbered
WHERE case_events.case_ref = numbered.r AND case_events.seq = numbered.s;

CREATE UNIQUE INDEX case_events_feed ON case_events (feed_seq);

INSERT INTO feed_head (id, seq) SELECT 1, COALESCE(MAX(feed_seq), 0) FROM case_events;
