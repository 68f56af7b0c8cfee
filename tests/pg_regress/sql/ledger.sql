\set SHOW_CONTEXT never
SET ROLE regress_writer;
BEGIN;
SELECT custos.set_tenant('b0000000-0000-4000-8000-00000000000b') IS NOT NULL AS tenant_set;
SELECT custos.set_actor('ana');
SELECT seq, length(hash) AS hash_bytes FROM custos.record_event('login', 'user', 'ana', '{"mfa": true}');
SELECT custos.record_events('[{"action": "report.export", "entity_type": "report", "entity_id": "q3"},
                              {"action": "logout", "entity_type": "user"}]');
INSERT INTO custos.events (action, entity_type, entity_id) VALUES ('invoice.void', 'invoice', 'inv-7');
COMMIT;
BEGIN;
SELECT custos.set_tenant('b0000000-0000-4000-8000-00000000000b') IS NOT NULL AS tenant_set;
INSERT INTO custos.events (seq, action, entity_type) VALUES (99, 'x', 'y');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('b0000000-0000-4000-8000-00000000000b') IS NOT NULL AS tenant_set;
SELECT custos.record_event('x', 'y', severity => 'dire');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('b0000000-0000-4000-8000-00000000000b') IS NOT NULL AS tenant_set;
SELECT custos.record_event('x', 'y', details => '[1, 2]');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('b0000000-0000-4000-8000-00000000000b') IS NOT NULL AS tenant_set;
SELECT custos.record_events('{"action": "x"}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('b0000000-0000-4000-8000-00000000000b') IS NOT NULL AS tenant_set;
SELECT custos.record_events('[{"action": "x", "entity_type": "y", "colour": "red"}]');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- No tenant, no event.
SELECT custos.record_event('x', 'y');
\echo :LAST_ERROR_SQLSTATE
-- Writers cannot read the ledger back.
BEGIN;
SELECT custos.set_tenant('b0000000-0000-4000-8000-00000000000b') IS NOT NULL AS tenant_set;
SELECT count(*) FROM custos.timeline();
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;
SET ROLE regress_auditor;
BEGIN;
SELECT custos.set_tenant('b0000000-0000-4000-8000-00000000000b') IS NOT NULL AS tenant_set;
SELECT ok, checked, first_broken_seq, reason FROM custos.verify_chain('b0000000-0000-4000-8000-00000000000b');
SELECT ok, checked, first_broken_seq, reason FROM custos.verify_chain('b0000000-0000-4000-8000-00000000000b', 2, 3);
SELECT ok, checked, first_broken_seq, reason FROM custos.verify_chain('b0000000-0000-4000-8000-00000000000b', 1, 10);
SELECT custos.settled_seq('b0000000-0000-4000-8000-00000000000b');
SELECT seq, actor, db_role, action, entity_type, entity_id, severity, details FROM custos.timeline() ORDER BY seq;
SELECT count(*) AS reads_logged FROM custos.access_log;
SELECT ok, checked FROM custos.verify_access_log('b0000000-0000-4000-8000-00000000000b');
SELECT count(*) AS alerts FROM custos.alerts;
COMMIT;
BEGIN;
SELECT custos.set_tenant('b0000000-0000-4000-8000-00000000000b') IS NOT NULL AS tenant_set;
SELECT * FROM custos.verify_chain('b0000000-0000-4000-8000-00000000000b', 0);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('b0000000-0000-4000-8000-00000000000b') IS NOT NULL AS tenant_set;
SELECT * FROM custos.verify_chain('b0000000-0000-4000-8000-00000000000b', 5, 2);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('b0000000-0000-4000-8000-00000000000b') IS NOT NULL AS tenant_set;
SELECT * FROM custos.verify_chain('c0000000-0000-4000-8000-00000000000c');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('b0000000-0000-4000-8000-00000000000b') IS NOT NULL AS tenant_set;
SELECT custos.checkpoint('b0000000-0000-4000-8000-00000000000b');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('b0000000-0000-4000-8000-00000000000b') IS NOT NULL AS tenant_set;
SELECT * FROM custos.verify_checkpoint('custos-checkpoint v1 tenant=b0000000-0000-4000-8000-00000000000b', '00');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('b0000000-0000-4000-8000-00000000000b') IS NOT NULL AS tenant_set;
SELECT * FROM custos.event('00000000-0000-4000-8000-000000000000');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('b0000000-0000-4000-8000-00000000000b') IS NOT NULL AS tenant_set;
SELECT count(*) FROM custos.timeline(min_severity => 'dire');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('b0000000-0000-4000-8000-00000000000b') IS NOT NULL AS tenant_set;
UPDATE custos.alerts SET status = 'resolved';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;
-- A malformed checkpoint text (checked with the configured key).
SET custos.checkpoint_signing_key = '1111111111111111111111111111111111111111111111111111111111111111';
SELECT * FROM custos.verify_checkpoint('not a checkpoint');
\echo :LAST_ERROR_SQLSTATE
RESET custos.checkpoint_signing_key;
-- Append-only, for the superuser too.
UPDATE custos.events SET action = 'x';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM custos.events;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE custos.events;
\echo :LAST_ERROR_SQLSTATE
DROP EXTENSION custos;
\echo :LAST_ERROR_SQLSTATE
