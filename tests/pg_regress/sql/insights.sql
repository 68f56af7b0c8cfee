-- Similarity search and insights: embeddings, the searches, the analyses by rules (the local
-- provider), and how each refuses bad input.
\set SHOW_CONTEXT never
SET ROLE regress_admin;
BEGIN;
SELECT custos.set_tenant('f0000000-0000-4000-8000-00000000000f') IS NOT NULL AS tenant_set;
SELECT custos.upsert_identities('[
  {"user_id": "fin1", "department": "finance", "roles": ["approver"], "created_at": "2020-01-01T00:00:00Z", "last_active_at": "2020-02-01T00:00:00Z"},
  {"user_id": "fin2", "department": "finance", "roles": ["approver"], "created_at": "2020-01-01T00:00:00Z", "last_active_at": "2020-02-02T00:00:00Z"},
  {"user_id": "root", "department": "it", "roles": ["admin"], "is_privileged": true, "created_at": "2020-01-01T00:00:00Z", "last_active_at": "2020-03-01T00:00:00Z"}]');
SELECT custos.record_events('[
  {"action": "login_failed", "entity_type": "user", "entity_id": "fin1", "details": {"reason": "bad password"}},
  {"action": "login_failed", "entity_type": "user", "entity_id": "fin2", "details": {"reason": "bad password"}},
  {"action": "role_granted", "entity_type": "user", "entity_id": "root", "severity": "high", "details": {"role": "admin"}}]');
SELECT * FROM custos.embed_identities();
SELECT * FROM custos.embed_identities();
SELECT * FROM custos.embed_events();
COMMIT;
SET ROLE regress_auditor;
BEGIN;
SELECT custos.set_tenant('f0000000-0000-4000-8000-00000000000f') IS NOT NULL AS tenant_set;
SELECT similar_user_id, similarity > 0.5 AS close FROM custos.similar_users('fin1', 1);
SELECT action, entity_id FROM custos.search_events('failed login with a bad password', 2) ORDER BY entity_id;
SELECT entity_id FROM custos.similar_events((SELECT id FROM custos.timeline() WHERE entity_id = 'fin1'), 1);
SELECT analyzed_user_id, risk_level, fallback, provider, prompt_version, jsonb_array_length(similar_users) AS similar
  FROM custos.analyze_dormant_user('root');
SELECT significance, fallback, prompt_version, jsonb_array_length(related_events) AS related
  FROM custos.explain_event((SELECT id FROM custos.timeline() WHERE action = 'role_granted'));
SELECT statistics->'events' AS events, statistics->'by_severity' AS by_severity, risk, summary, highlights, fallback
  FROM custos.summarize('weekly');
SELECT function, rows_returned FROM custos.access_log ORDER BY seq;
COMMIT;
-- Bad input, each refused with its SQLSTATE.
BEGIN;
SELECT custos.set_tenant('f0000000-0000-4000-8000-00000000000f') IS NOT NULL AS tenant_set;
SELECT * FROM custos.similar_users('nobody');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('f0000000-0000-4000-8000-00000000000f') IS NOT NULL AS tenant_set;
SELECT * FROM custos.search_events('   ');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('f0000000-0000-4000-8000-00000000000f') IS NOT NULL AS tenant_set;
SELECT * FROM custos.search_events('login', 0);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('f0000000-0000-4000-8000-00000000000f') IS NOT NULL AS tenant_set;
SELECT * FROM custos.similar_users('fin1', 1001);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('f0000000-0000-4000-8000-00000000000f') IS NOT NULL AS tenant_set;
SELECT * FROM custos.explain_event('00000000-0000-8000-8000-000000000000');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('f0000000-0000-4000-8000-00000000000f') IS NOT NULL AS tenant_set;
SELECT * FROM custos.summarize('hourly');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('f0000000-0000-4000-8000-00000000000f') IS NOT NULL AS tenant_set;
SELECT * FROM custos.analyze_dormant_user('nobody');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- Another tenant sees none of it.
BEGIN;
SELECT custos.set_tenant('f0000000-0000-4000-8000-0000000000f2') IS NOT NULL AS tenant_set;
SELECT (SELECT count(*) FROM custos.identity_embeddings) AS identity_embeddings,
       (SELECT count(*) FROM custos.event_embeddings) AS event_embeddings,
       (SELECT count(*) FROM custos.user_insights) AS insights,
       (SELECT count(*) FROM custos.rag_analysis_history) AS history,
       (SELECT count(*) FROM custos.summaries) AS summaries;
SELECT * FROM custos.similar_users('fin1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- Without a tenant, nothing.
SELECT * FROM custos.summarize('daily');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
