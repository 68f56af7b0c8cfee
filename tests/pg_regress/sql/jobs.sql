-- Jobs and webhooks: jobs run by hand (as pg_cron would), the embedding queue, integrations
-- checked when configured, and how each refuses bad input. (Workers are tested against a
-- preloaded cluster: tests/integration/tests/workers.rs.)
\set SHOW_CONTEXT never
SET ROLE regress_admin;
BEGIN;
SELECT custos.set_tenant('f1000000-0000-4000-8000-00000000000f') IS NOT NULL AS tenant_set;
SELECT custos.upsert_identities('[{"user_id": "q1", "department": "finance"}, {"user_id": "q2"}]');
SELECT kind, item, state, generation FROM custos.embedding_queue ORDER BY item;
SELECT items, outcome, error FROM custos.run_job('embedding_refresh');
SELECT count(*) AS left_in_queue FROM custos.embedding_queue;
SELECT items, outcome, error FROM custos.run_job('checkpoint_publication');
SELECT items, outcome, error FROM custos.run_job('anomaly_detection');
SELECT job, outcome, run_by FROM custos.job_runs ORDER BY id;
SELECT integration, length(signing_secret) AS secret_hex_length
  FROM custos.set_integration('siem', 'generic', 'https://siem.example.com/in', 'medium');
SELECT name, kind, url, signed, min_severity, topics FROM custos.integration_list;
SELECT custos.health() ?& ARRAY['workers', 'embedding_queue', 'notifications', 'breakers', 'jobs'] AS health_has_every_part;
COMMIT;
BEGIN;
SELECT custos.set_tenant('f1000000-0000-4000-8000-00000000000f') IS NOT NULL AS tenant_set;
SELECT * FROM custos.run_job('vacuum');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('f1000000-0000-4000-8000-00000000000f') IS NOT NULL AS tenant_set;
SELECT * FROM custos.set_integration('chat', 'slack', 'http://hooks.example.com/x');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('f1000000-0000-4000-8000-00000000000f') IS NOT NULL AS tenant_set;
SELECT * FROM custos.set_integration('chat', 'slack', 'https://169.254.169.254/latest/meta-data');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('f1000000-0000-4000-8000-00000000000f') IS NOT NULL AS tenant_set;
SELECT * FROM custos.set_integration('Chat!', 'slack', 'https://hooks.example.com/x');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- Without a tenant a custos admin runs nothing (a superuser would run it for every tenant).
SELECT * FROM custos.run_job('retention');
\echo :LAST_ERROR_SQLSTATE
-- Writers do not run jobs.
SET ROLE regress_writer;
SELECT * FROM custos.run_job('retention');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
