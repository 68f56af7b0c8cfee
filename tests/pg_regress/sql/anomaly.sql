\set SHOW_CONTEXT never
-- A tenant admin trains a model on a table of its own and scores with it; what psql shows for
-- each refusal.
CREATE TABLE regress_logins (tenant_id uuid NOT NULL, hour float8, failures int, bytes numeric);
INSERT INTO regress_logins SELECT 'a0000000-0000-4000-8000-00000000000a', 9 + g % 8, g % 3, 1000 + (g * 7919) % 500
  FROM generate_series(1, 600) g;
SELECT custos.enable_tenant_isolation('regress_logins');
GRANT SELECT ON regress_logins TO regress_admin, regress_writer;
SET ROLE regress_admin;
BEGIN;
SELECT custos.set_tenant('a0000000-0000-4000-8000-00000000000a') IS NOT NULL AS tenant_set;
SELECT custos.if_train('logins', 'SELECT hour, failures, bytes FROM regress_logins', 50, 128, 7) AS version;
SELECT name, version, kind, feature_names, training_rows, parameters->>'seed' AS seed, active
  FROM custos.models;
SELECT round(custos.if_score('logins', ARRAY[12, 1, 1200])::numeric, 2) AS ordinary,
       custos.if_score('logins', ARRAY[3, 40, 900000]) > 0.6 AS odd;
SELECT e->>'feature' AS feature FROM jsonb_array_elements(custos.if_explain('logins', ARRAY[12, 1, 900000], 1)) e;
SELECT count(*) AS rows_scored FROM custos.if_score_query('logins', 'SELECT hour, failures, bytes FROM regress_logins');
SELECT action, entity_id, details->>'version' AS version FROM custos.timeline() WHERE action = 'custos.model_trained';
-- Refusals.
SELECT custos.if_score('logins', ARRAY[1, 2]);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('a0000000-0000-4000-8000-00000000000a') IS NOT NULL AS tenant_set;
SELECT custos.if_train('m', 'SELECT hour FROM regress_logins', 10, 1000);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('a0000000-0000-4000-8000-00000000000a') IS NOT NULL AS tenant_set;
SELECT custos.if_train('m', 'DELETE FROM regress_logins');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('a0000000-0000-4000-8000-00000000000a') IS NOT NULL AS tenant_set;
SELECT custos.if_train('m', 'SELECT ''x''::text');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('a0000000-0000-4000-8000-00000000000a') IS NOT NULL AS tenant_set;
SELECT custos.if_train('audit_events', 'SELECT hour FROM regress_logins');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('a0000000-0000-4000-8000-00000000000a') IS NOT NULL AS tenant_set;
SELECT custos.if_score('nothing', ARRAY[1.0]);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- No tenant: nothing to score with, nothing trained (fail closed).
SELECT custos.if_train('m', 'SELECT 1');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS models_visible FROM custos.models;
RESET ROLE;
-- Redaction and the offline embedder.
SET ROLE regress_writer;
SELECT custos.redact('Call ana@example.com or +1 415 555 2671 about order ORD-2024-001234 (card 4111 1111 1111 1111, v2.4.1)');
SELECT vector_dims(custos.embed('failed login from a new address')) AS dims;
SELECT custos.embed('  ;; ');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
