\set SHOW_CONTEXT never
-- No tenant: nothing, never an error.
SELECT custos.current_tenant() IS NULL AS no_tenant;
SET ROLE regress_admin;
BEGIN;
SELECT custos.set_tenant('a0000000-0000-4000-8000-00000000000a');
SELECT custos.current_tenant();
SELECT key, value, source FROM custos.settings() WHERE key LIKE 'dormant.%' ORDER BY key;
SELECT custos.set_setting('dormant.threshold_days', '45');
SELECT custos.setting('dormant.threshold_days');
SELECT custos.set_setting('dormant.threshold_days', '"x"');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('a0000000-0000-4000-8000-00000000000a') IS NOT NULL AS tenant_set;
SELECT custos.set_setting('dormant.threshold_days', '0');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('a0000000-0000-4000-8000-00000000000a') IS NOT NULL AS tenant_set;
SELECT custos.set_setting('no.such.key', '1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('a0000000-0000-4000-8000-00000000000a') IS NOT NULL AS tenant_set;
SELECT custos.set_setting('dormant.threshold_days', 'null');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('a0000000-0000-4000-8000-00000000000a') IS NOT NULL AS tenant_set;
SELECT custos.set_setting('ledger.encrypt', 'true');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- Without a tenant, settings cannot be changed.
SELECT custos.set_setting('dormant.threshold_days', '45');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- Isolation helpers.
CREATE TABLE regress_docs (id int PRIMARY KEY, tenant_id uuid, body text);
CREATE TABLE regress_other (id int, tenant_id int);
SELECT custos.enable_tenant_isolation('regress_docs');
SELECT custos.enable_tenant_isolation('regress_other');
\echo :LAST_ERROR_SQLSTATE
SELECT custos.enable_tenant_isolation('regress_docs', 'nope');
\echo :LAST_ERROR_SQLSTATE
SELECT table_name, problem FROM custos.rls_coverage() WHERE table_name::text LIKE 'regress%';
-- Roles without a custos role get nothing.
SET ROLE regress_nobody;
SELECT custos.set_tenant('a0000000-0000-4000-8000-00000000000a');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM custos.settings();
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
