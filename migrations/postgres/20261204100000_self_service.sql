-- Self-service; see migrations/sqlite/20261204100000_self_service.sql.
ALTER TABLE cases ADD COLUMN opened_uid BIGINT;
ALTER TABLE cases ADD COLUMN self_service TEXT COLLATE "C";
UPDATE cases SET opened_uid = (SELECT e.uid FROM case_events e WHERE e.case_ref = cases.ref AND e.seq = 1);
CREATE INDEX cases_requester ON cases (requester);

ALTER TABLE catalog ADD COLUMN sample_id TEXT COLLATE "C";
UPDATE catalog SET sample_id = NULLIF(extra::jsonb ->> 'sample_id', '')
WHERE extra <> '' AND jsonb_typeof(extra::jsonb -> 'sample_id') = 'string';
CREATE INDEX catalog_sample ON catalog (sample_id);
DROP INDEX catalog_path;
CREATE INDEX catalog_path ON catalog (path, department);
DROP INDEX catalog_base_name;
CREATE INDEX catalog_base_name ON catalog (base_name, department);
CREATE INDEX catalog_submitted ON catalog (submitted_ns, department);
