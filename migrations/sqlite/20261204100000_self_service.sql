-- Self-service: who registered a case, and whether it is a requester's own
-- request (the department's policy then: 'review' or 'auto'; NULL when staff
-- registered it).
ALTER TABLE cases ADD COLUMN opened_uid INTEGER;
ALTER TABLE cases ADD COLUMN self_service TEXT;
-- Cases registered before: the uid of their first record, which registered them.
UPDATE cases SET opened_uid = (SELECT e.uid FROM case_events e WHERE e.case_ref = cases.ref AND e.seq = 1);
CREATE INDEX cases_requester ON cases (requester);

-- `catalog search --sample`: the catalog's sample_id column, also kept in
-- `extra`; filled from it for files imported before.
ALTER TABLE catalog ADD COLUMN sample_id TEXT;
UPDATE catalog SET sample_id = json_extract(extra, '$.sample_id')
WHERE extra <> '' AND json_valid(extra) AND json_type(extra, '$.sample_id') = 'text'
  AND json_extract(extra, '$.sample_id') <> '';
CREATE INDEX catalog_sample ON catalog (sample_id);
-- Searches read the name indexes in order and check the department on each
-- entry, without the table; `--since` reads the submission times in order.
DROP INDEX catalog_path;
CREATE INDEX catalog_path ON catalog (path, department);
DROP INDEX catalog_base_name;
CREATE INDEX catalog_base_name ON catalog (base_name, department);
CREATE INDEX catalog_submitted ON catalog (submitted_ns, department);
