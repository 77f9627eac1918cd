-- The event feed (`workcopy events`): every case-log record gets a global,
-- gap-free number in commit order. `feed_head` holds the last number given;
-- each record's insert takes the next one in its own transaction
-- (`UPDATE feed_head SET seq = seq + 1 RETURNING seq`), so on a server
-- database that row lock orders committers and a rollback leaves no gap.
CREATE TABLE feed_head (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);

ALTER TABLE case_events ADD COLUMN feed_seq INTEGER;

-- Records written before the feed, numbered in the order they were inserted
-- (SQLite wrote them one transaction at a time).
UPDATE case_events SET feed_seq = numbered.n
FROM (SELECT rowid AS rid, ROW_NUMBER() OVER (ORDER BY rowid) AS n FROM case_events) AS numbered
WHERE case_events.rowid = numbered.rid;

CREATE UNIQUE INDEX case_events_feed ON case_events (feed_seq);

INSERT INTO feed_head (id, seq) SELECT 1, COALESCE(MAX(feed_seq), 0) FROM case_events;
