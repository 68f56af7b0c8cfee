\set SHOW_CONTEXT never
SET ROLE regress_admin;
BEGIN;
SELECT custos.set_tenant('f0000000-0000-4000-8000-00000000000f') IS NOT NULL AS tenant_set;
SELECT custos.forget_subject('f0000000-0000-4000-8000-00000000000f', 'nobody');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('f0000000-0000-4000-8000-00000000000f') IS NOT NULL AS tenant_set;
SELECT custos.set_setting('ledger.legal_hold', 'true');
SELECT * FROM custos.apply_retention('f0000000-0000-4000-8000-00000000000f');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('f0000000-0000-4000-8000-00000000000f') IS NOT NULL AS tenant_set;
SELECT removed, through_seq FROM custos.apply_retention('f0000000-0000-4000-8000-00000000000f');
SELECT * FROM custos.set_alert_status(1, 'resolved');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('f0000000-0000-4000-8000-00000000000f') IS NOT NULL AS tenant_set;
SELECT * FROM custos.set_alert_status(1, 'gone');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;
SET ROLE regress_exporter;
BEGIN;
SELECT custos.set_tenant('b0000000-0000-4000-8000-00000000000b') IS NOT NULL AS tenant_set;
SELECT line FROM custos.export_events('csv') AS line LIMIT 1;
SELECT count(*) AS lines FROM custos.export_events('jsonl');
SELECT custos.export_subject('b0000000-0000-4000-8000-00000000000b', 'nobody');
\echo :LAST_ERROR_SQLSTATE
COMMIT;
BEGIN;
SELECT custos.set_tenant('b0000000-0000-4000-8000-00000000000b') IS NOT NULL AS tenant_set;
SELECT count(*) FROM custos.export_events('xml');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
RESET ROLE;
-- Keys are never shown.
SET custos.master_key = '1111111111111111111111111111111111111111111111111111111111111111';
SHOW custos.master_key;
RESET custos.master_key;
ALTER SYSTEM SET custos.master_key = '1111111111111111111111111111111111111111111111111111111111111111';
\echo :LAST_ERROR_SQLSTATE
