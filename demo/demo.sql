-- The custos demo: three tenants of a SaaS product sharing one database.
\set QUIET on
\set VERBOSITY terse
\pset footer off
SET client_min_messages = warning;
CREATE EXTENSION custos CASCADE;

\echo '== custos demo: three tenants of one SaaS database'
SELECT extname, extversion FROM pg_extension WHERE extname IN ('custos', 'vector') ORDER BY 1;

-- Tenants and an application table that predates custos.
CREATE TABLE demo_tenants (tenant_id uuid PRIMARY KEY, name text NOT NULL);
INSERT INTO demo_tenants VALUES
    ('a1000000-0000-4000-8000-000000000001', 'Acme Corp'),
    ('b2000000-0000-4000-8000-000000000002', 'Globex'),
    ('c3000000-0000-4000-8000-000000000003', 'Initech');
CREATE TABLE invoices (id serial PRIMARY KEY, tenant_id uuid NOT NULL, customer text, amount numeric);
INSERT INTO invoices (tenant_id, customer, amount)
SELECT t.tenant_id, 'customer ' || g, (g * 37 % 1000) + 0.99
  FROM demo_tenants t, generate_series(1, 4) g;

\echo
\echo '== 1. Coverage: tables with a tenant_id column that are not isolated yet'
SELECT table_name, problem FROM custos.rls_coverage() WHERE table_name::text NOT LIKE 'custos.%';
SELECT custos.enable_tenant_isolation('invoices');
SELECT custos.enable_tenant_isolation('demo_tenants');
\echo '   after custos.enable_tenant_isolation():'
SELECT count(*) AS uncovered_tables FROM custos.rls_coverage();

-- The application connects as an ordinary role (superusers bypass row-level security).
CREATE ROLE demo_app NOLOGIN;
GRANT custos_admin TO demo_app;
GRANT SELECT, INSERT ON invoices, demo_tenants TO demo_app;
GRANT USAGE ON SEQUENCE invoices_id_seq TO demo_app;

\echo
\echo '== 2. An application server, one transaction per request, custos.set_tenant():'
BEGIN;
SET LOCAL ROLE demo_app;
\echo '   no tenant set (fail closed):'
SELECT count(*) AS invoices_visible FROM invoices;
SELECT custos.set_tenant('a1000000-0000-4000-8000-000000000001') \gset
\echo '   as Acme:'
SELECT t.name AS tenant, i.customer, i.amount FROM invoices i JOIN demo_tenants t USING (tenant_id) ORDER BY i.id;
\echo '   Acme writing a Globex row:'
\set ON_ERROR_STOP off
INSERT INTO invoices (tenant_id, customer, amount) VALUES ('b2000000-0000-4000-8000-000000000002', 'sneaky', 1);
\set ON_ERROR_STOP on
ROLLBACK;

\echo
\echo '== 3. A PostgREST request: role and JWT claims set per transaction'
CREATE ROLE demo_web NOLOGIN;
GRANT custos_reader TO demo_web;
GRANT SELECT ON invoices, demo_tenants TO demo_web;
BEGIN;
SELECT set_config('role', 'demo_web', true),
       set_config('request.jwt.claims', '{"sub":"ana@globex.example","tenant_id":"b2000000-0000-4000-8000-000000000002"}', true) \gset
SELECT custos.current_tenant() AS tenant_from_jwt, count(*) AS invoices_visible, sum(amount) AS total FROM invoices;
SELECT set_config('request.jwt.claims', '{"tenant_id":"not-a-uuid"}', true) \gset
\echo '   a malformed claim sees nothing:'
SELECT count(*) AS invoices_visible FROM invoices;
COMMIT;

\echo
\echo '== 4. Per-tenant settings: default, override, validation'
BEGIN;
SET LOCAL ROLE demo_app;
SELECT custos.set_tenant('c3000000-0000-4000-8000-000000000003') \gset
SELECT custos.set_setting('dormant.threshold_days', '45') \gset
SELECT key, value, source FROM custos.settings();
\echo '   a negative threshold:'
\set ON_ERROR_STOP off
SELECT custos.set_setting('dormant.threshold_days', '-3');
\set ON_ERROR_STOP on
ROLLBACK;
BEGIN;
SET LOCAL ROLE demo_app;
SELECT custos.set_tenant('a1000000-0000-4000-8000-000000000001') \gset
\echo '   Acme keeps the default:'
SELECT key, value, source FROM custos.settings();
COMMIT;

\echo
\echo '== 5. Audit ledger: every tenant has its own SHA-256 hash chain'
GRANT UPDATE, DELETE ON invoices TO demo_app;
CREATE ROLE demo_auditor NOLOGIN;
GRANT custos_auditor TO demo_auditor;
SELECT custos.track_table('invoices') AS tracking;
BEGIN;
SET LOCAL ROLE demo_app;
SELECT custos.set_tenant('a1000000-0000-4000-8000-000000000001'), custos.set_actor('alice@acme.example') \gset
SELECT seq FROM custos.record_event('user.login', 'user', 'alice', '{"mfa": true}', ip_address => '198.51.100.23') \gset
SELECT custos.record_events('[{"action": "report.export", "entity_type": "report", "entity_id": "q3-revenue", "severity": "medium"},
                              {"action": "role.grant", "entity_type": "user", "entity_id": "bob", "severity": "high", "details": {"role": "admin"}}]') AS recorded \gset
UPDATE invoices SET amount = amount * 1.10 WHERE customer = 'customer 2';
DELETE FROM invoices WHERE customer = 'customer 4';
COMMIT;
BEGIN;
SET LOCAL ROLE demo_app;
SELECT custos.set_tenant('b2000000-0000-4000-8000-000000000002') \gset
SELECT custos.record_event('user.login', 'user', 'ana') \gset
COMMIT;
\echo '   Acme''s chain, as its auditor sees it (the writer role cannot read it back):'
BEGIN;
SET LOCAL ROLE demo_auditor;
SELECT custos.set_tenant('a1000000-0000-4000-8000-000000000001') \gset
SELECT seq, actor, db_role, action, entity_type, entity_id, severity,
       left(encode(prev_hash, 'hex'), 12) AS prev_hash, left(encode(hash, 'hex'), 12) AS hash
  FROM custos.events ORDER BY seq;
SELECT seq, details->'old'->>'amount' AS old_amount, details->'new'->>'amount' AS new_amount, details->'changed' AS changed
  FROM custos.events WHERE action = 'update';
SELECT * FROM custos.verify_chain('a1000000-0000-4000-8000-000000000001');
\echo '   where a consumer that follows the chain by seq may read up to (every event below it is visible):'
SELECT custos.settled_seq('a1000000-0000-4000-8000-000000000001') AS settled_seq;
COMMIT;

\echo
\echo '== 6. Append-only, for every role (this is the superuser):'
\set ON_ERROR_STOP off
UPDATE custos.events SET action = 'nothing happened' WHERE seq = 2;
DELETE FROM custos.events;
ALTER TABLE custos.events DISABLE TRIGGER append_only;
\set ON_ERROR_STOP on

\echo
\echo '== 7. A signed checkpoint, to keep outside the database'
SET custos.checkpoint_signing_key = '5f1c2b9e4a3d4f5e9b7a0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5';
BEGIN;
SET LOCAL ROLE demo_auditor;
SELECT custos.set_tenant('a1000000-0000-4000-8000-000000000001') \gset
SELECT custos.checkpoint('a1000000-0000-4000-8000-000000000001') AS checkpoint \gset
COMMIT;
\echo :checkpoint
SELECT ok, seq, checked, reason FROM custos.verify_checkpoint(:'checkpoint');

\echo
\echo '== 8. A superuser edits history behind custos'' back'
BEGIN;
ALTER EVENT TRIGGER custos_guard_ledger DISABLE;
ALTER TABLE custos.events DISABLE TRIGGER append_only;
UPDATE custos.events SET details = '{"role": "viewer"}'
 WHERE tenant_id = 'a1000000-0000-4000-8000-000000000001' AND action = 'role.grant';
\echo '   verify_chain names the first broken link and raises a critical alert:'
SELECT * FROM custos.verify_chain('a1000000-0000-4000-8000-000000000001');
SELECT source, severity, title FROM custos.alerts;
\echo '   so does the checkpoint, which would still fail if every hash had been recomputed (see the tamper tests):'
SELECT ok, reason FROM custos.verify_checkpoint(:'checkpoint');
ROLLBACK;
\echo '   Globex''s chain was never touched:'
SELECT ok, checked FROM custos.verify_chain('b2000000-0000-4000-8000-000000000002');

\echo
\echo '== 9. Dormant identities: who has gone unused, riskiest first, and why'
BEGIN;
SET LOCAL ROLE demo_app;
SELECT custos.set_tenant('a1000000-0000-4000-8000-000000000001') \gset
SELECT custos.upsert_identities(jsonb_build_array(
  jsonb_build_object('user_id', 'alice', 'email', 'alice@acme.example', 'department', 'eng', 'mfa_enabled', true,
                     'last_active_at', now() - interval '2 hours', 'source', 'okta'),
  jsonb_build_object('user_id', 'root-admin', 'email', 'ops@acme.example', 'department', 'eng', 'is_privileged', true,
                     'roles', ARRAY['admin'], 'last_active_at', now() - interval '140 days', 'source', 'okta'),
  jsonb_build_object('user_id', 'ci-deployer', 'is_service_account', true, 'department', 'eng', 'mfa_enabled', false,
                     'last_active_at', now() - interval '95 days', 'source', 'local'),
  jsonb_build_object('user_id', 'bob', 'email', 'bob@acme.example', 'department', 'sales', 'status', 'deprovisioned',
                     'mfa_enabled', true, 'last_active_at', now() - interval '61 days', 'source', 'entra'),
  jsonb_build_object('user_id', 'carol', 'email', 'carol@acme.example', 'department', 'sales', 'mfa_enabled', true,
                     'has_valid_credentials', false, 'last_active_at', now() - interval '31 days', 'source', 'entra'),
  jsonb_build_object('user_id', 'dave', 'email', 'dave@acme.example', 'department', 'eng', 'status', 'provisioned',
                     'created_at', now() - interval '50 days', 'source', 'okta'),
  jsonb_build_object('user_id', 'erin', 'email', 'erin@acme.example', 'department', 'eng', 'mfa_enabled', true,
                     'created_at', now() - interval '3 days', 'source', 'okta')
)) AS upserted \gset
SELECT user_id, days_inactive, never_active, status, round(risk_score::numeric, 3) AS risk_score, risk_level, reasons
  FROM custos.dormant_users();
\echo '   erin is new (in her grace period) and alice is active: neither is listed.'
SELECT custos.set_actor('bob@acme.example'), custos.record_event('user.login', 'user', 'bob') \gset
\echo '   bob (deprovisioned, yet his credentials still work) just logged in: the ledger makes him active.'
SELECT user_id, days_inactive, risk_level FROM custos.dormant_users();
\echo '   a security analyst reviews the service account (recorded in the ledger too):'
SELECT custos.set_actor('security@acme.example') \gset
SELECT reviewed_user_id, review_decision, reviewed_by FROM custos.mark_reviewed('ci-deployer', 'disable', 'pipeline moved to OIDC');
SELECT seq, actor, action, entity_id, details FROM custos.events WHERE action = 'identity.review';
SELECT dimension, value, identities, dormant, privileged_dormant FROM custos.dormant_summary();
COMMIT;

\echo ''
\echo '== 10. Data protection: sealed fields, logged reads, erasure that keeps the chain verifiable'
SET custos.master_key = '5c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5';
BEGIN;
SELECT custos.set_tenant('d4000000-0000-4000-8000-000000000004') \gset
SELECT custos.set_setting('ledger.encrypt', 'true') \gset
SELECT custos.set_actor('frank@acme.example') \gset
INSERT INTO custos.events (action, entity_type, entity_id, details, ip_address, user_agent)
VALUES ('profile.update', 'user', 'frank', '{"email": "frank@acme.example", "field": "phone"}', '203.0.113.7', 'Mozilla/5.0');
COMMIT;
BEGIN;
SELECT custos.set_tenant('d4000000-0000-4000-8000-000000000004') \gset
\echo '   at rest (what a stolen backup shows):'
SELECT seq, actor, left(ip_address, 40) || '...' AS ip_address, left(details->>'email', 40) || '...' AS email
  FROM custos.events WHERE tenant_id = 'd4000000-0000-4000-8000-000000000004';
\echo '   through custos.timeline (opened for this tenant, and logged):'
SELECT seq, actor, ip_address, user_agent, details FROM custos.timeline();
\echo '   an exporter streams the ledger as CSV or JSON Lines (also logged):'
SELECT line FROM custos.export_events('csv') AS line;
SELECT seq, reader, function, filters, rows_returned FROM custos.access_log;
SELECT ok, checked FROM custos.verify_access_log('d4000000-0000-4000-8000-000000000004');
\echo '   rotating the tenant''s data key: new values get fresh keys, old ones stay readable'
SELECT custos.rotate_data_key('d4000000-0000-4000-8000-000000000004') AS data_key_version;
\echo '   rotating the master key: the data keys are rewrapped under the new one, values stay readable'
SET custos.master_key_previous = '5c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5';
SET custos.master_key = 'a11ce0a11ce0a11ce0a11ce0a11ce0a11ce0a11ce0a11ce0a11ce0a11ce0a11c';
SELECT * FROM custos.rewrap_data_keys();
RESET custos.master_key_previous;
SELECT seq, ip_address, details->>'email' AS email FROM custos.timeline();
\echo '   an event id carries its seq, so custos.event(id) is one primary-key lookup:'
SELECT e.id, custos.event_seq(e.id) AS seq_in_id, e.action FROM custos.events e
 WHERE tenant_id = 'd4000000-0000-4000-8000-000000000004' ORDER BY seq LIMIT 1 \gset ev_
SELECT :'ev_id' AS id, :ev_seq_in_id AS seq_in_the_id, seq, action, details->>'email' AS email FROM custos.event(:'ev_id');
\echo '   frank asks to be forgotten: his key is destroyed, the chain still verifies:'
SELECT custos.forget_subject('d4000000-0000-4000-8000-000000000004', 'frank@acme.example') AS erased;
SELECT seq, actor, action, ip_address, details, erased FROM custos.timeline();
SELECT ok, checked FROM custos.verify_chain('d4000000-0000-4000-8000-000000000004');
\echo '   retention removes what is past the 7-year horizon (nothing yet) and is refused under legal hold:'
SELECT * FROM custos.apply_retention('d4000000-0000-4000-8000-000000000004');
SELECT custos.set_setting('ledger.legal_hold', 'true') \gset
SAVEPOINT hold;
\set ON_ERROR_STOP off
SELECT * FROM custos.apply_retention('d4000000-0000-4000-8000-000000000004');
\set ON_ERROR_STOP on
ROLLBACK TO SAVEPOINT hold;
COMMIT;

\echo ''
\echo '== 11. Security and operations: what a monitoring role, a forged request and a DBA see'
\echo '   keys are never shown (key files are the recommended source), even to the superuser:'
SET custos.master_key = '5c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5c0ffee5';
SHOW custos.master_key;
RESET custos.master_key;
\echo '   a role that is not the authenticator cannot choose a tenant by setting JWT claims:'
CREATE ROLE demo_intruder NOLOGIN;
GRANT custos_reader TO demo_intruder;
GRANT demo_intruder TO CURRENT_USER;
BEGIN;
SET LOCAL SESSION AUTHORIZATION demo_intruder;
SELECT set_config('request.jwt.claims', '{"tenant_id": "a1000000-0000-4000-8000-000000000001"}', true) IS NOT NULL AS claims_set,
       custos.current_tenant() AS tenant_seen;
COMMIT;
\echo '   the public API and what stays internal (PostgREST exposes only schema custos):'
SELECT n.nspname AS schema, count(*) AS functions,
       count(*) FILTER (WHERE has_function_privilege('public', p.oid, 'EXECUTE')) AS executable_by_public
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname LIKE 'custos%' GROUP BY 1 ORDER BY 1;
\echo '   every table with user data goes into pg_dump; the ledger survives a cascade; upgrades are versioned:'
SELECT count(*) AS tables_pg_dump_carries FROM pg_extension, unnest(extconfig) WHERE extname = 'custos';
\set ON_ERROR_STOP off
BEGIN;
DROP EXTENSION vector CASCADE;
ROLLBACK;
\set ON_ERROR_STOP on
SELECT extversion AS installed, (SELECT string_agg(source || ' -> ' || target, ', ')
         FROM pg_extension_update_paths('custos') WHERE path IS NOT NULL AND target = extversion) AS upgrades_to_it
  FROM pg_extension WHERE extname = 'custos';

\echo ''
\echo '== 12. Anomaly detection: an Isolation Forest trained and scored inside the database'
\echo '   a month of Initech''s ordinary activity, then someone deletes accounts at 03:00 on a Sunday:'
BEGIN;
SELECT custos.set_tenant('c3000000-0000-4000-8000-000000000003') \gset
SELECT custos.record_events((SELECT jsonb_agg(jsonb_build_object(
           'occurred_at', timestamptz '2026-10-01 08:00Z' + (g / 60) * interval '1 day' + (g % 60) * interval '9 minutes',
           'actor', 'user' || (g % 15), 'action', (ARRAY['login', 'view', 'view', 'search', 'update'])[1 + g % 5],
           'entity_type', 'document', 'entity_id', 'doc' || (g % 40), 'ip_address', '10.1.0.' || (g % 15))
           ORDER BY g) FROM generate_series(0, 1799) g)) AS ordinary_events,
       custos.record_events((SELECT jsonb_agg(jsonb_build_object(
           'occurred_at', timestamptz '2026-10-25 03:00Z' + g * interval '30 seconds', 'actor', 'user7',
           'action', 'delete_user', 'severity', 'high', 'entity_type', 'user', 'entity_id', 'employee' || g,
           'ip_address', '198.51.100.23') ORDER BY g) FROM generate_series(1, 12) g)) AS injected_events;
\echo '   train the tenant''s model on its events (features: docs/README "Anomaly detection"):'
SELECT * FROM custos.train_anomaly_model('2026-10-01Z', '2026-11-01Z', seed => 42);
\echo '   detect: the anomalies recorded, highest first, with the features that isolate them:'
SELECT seq, round(score::numeric, 3) AS score, severity, round(confidence::numeric, 2) AS confidence,
       (SELECT string_agg(e->>'feature', ', ') FROM jsonb_array_elements(explanation) e) AS because
  FROM custos.detect_anomalies('2026-10-01Z', '2026-11-01Z') ORDER BY score DESC LIMIT 6;
SELECT count(*) AS high_severity_alerts FROM custos.alerts WHERE source = 'anomaly.detect';
COMMIT;
\echo '   the same forest on any table: which invoices look unusual?'
SELECT custos.if_train('invoice_amounts', 'SELECT amount FROM invoices', 100, 8, seed => 1) AS version;
SELECT i.customer, i.amount, round(s.score::numeric, 3) AS score
  FROM custos.if_score_query('invoice_amounts', 'SELECT amount FROM invoices ORDER BY id') s
  JOIN (SELECT row_number() OVER (ORDER BY id) AS n, * FROM invoices) i ON i.n = s.row_number
 ORDER BY s.score DESC LIMIT 3;

\echo ''
\echo '== 13. AI: PII redaction before any text leaves the database, embeddings, validated JSON answers'
BEGIN;
SELECT custos.set_tenant('c3000000-0000-4000-8000-000000000003') \gset
SELECT custos.redact('Ticket from ana@initech.example (+1 415 555 2671): card 4111 1111 1111 1111 declined, server 10.0.3.7, order ORD-2024-001234, app v2.4.1') AS what_leaves_the_database;
\echo '   embeddings (pgvector) of the redacted text; nearest first:'
WITH docs(t) AS (VALUES ('failed logins from a new IP address'), ('quarterly invoice totals by region'),
                        ('password reset requested after failed login'), ('new office opening in Lisbon'))
SELECT t AS text, round((custos.embed(t) <=> custos.embed('failed login from an unknown address'))::numeric, 3) AS cosine_distance
  FROM docs ORDER BY 2;
\echo '   a registered task answers in JSON valid against its schema. Offline, the rule-based answerer'
\echo '   fills it from the input (nothing leaves the database, nothing is logged); with ai.provider ='
\echo '   bedrock, Claude 3 Haiku answers through SigV4-signed calls, budgeted, logged in custos.ai_calls'
\echo '   and chained in the ledger as ai.call events:'
SELECT jsonb_pretty(custos.complete_json('triage_alert', jsonb_build_object(
         'alert', 'Critical: 12 accounts deleted by user7 at 03:00 from 198.51.100.23',
         'events', (SELECT jsonb_agg(action) FROM custos.events WHERE action = 'delete_user')))) AS triage;
COMMIT;

\echo ''
\echo '== 14. Similarity search and a dormant account analysed (offline embeddings and rules here;'
\echo '   Titan and Claude on Bedrock when the tenant sets ai.provider)'
BEGIN;
SELECT custos.set_tenant('a1000000-0000-4000-8000-000000000001') \gset
SELECT embedded AS identities_embedded FROM custos.embed_identities();
SELECT embedded AS events_embedded FROM custos.embed_events();
\echo '   accounts whose profiles look like root-admin''s (never names or e-mails: roles, department, activity):'
SELECT similar_user_id, round(similarity::numeric, 3) AS similarity, status, department
  FROM custos.similar_users('root-admin', 3);
\echo '   events nearest in meaning to a question (each search is in the access log):'
SELECT seq, action, entity_type, round(similarity::numeric, 3) AS similarity
  FROM custos.search_events('someone signed in', 3);
\echo '   root-admin analysed: its deterministic risk, the reasons, and what to do about it:'
SELECT risk_level, round(risk_score::numeric, 3) AS risk_score, summary, fallback, prompt_version,
       (SELECT string_agg(r->>'priority' || ': ' || (r->>'action'), E'\n') FROM jsonb_array_elements(recommendations) r) AS recommendations
  FROM custos.analyze_dormant_user('root-admin');
\echo '   the most severe event explained (sealed values stay sealed; related events around it):'
SELECT significance, what_happened, why_it_matters, jsonb_array_length(related_events) AS related
  FROM custos.explain_event((SELECT id FROM custos.events WHERE tenant_id = custos.current_tenant() ORDER BY custos_internal.severity_rank(severity) DESC, seq DESC LIMIT 1));
\echo '   the last week summarised: statistics computed in SQL, the narrative by rules offline:'
SELECT risk, summary, jsonb_pretty(highlights) AS highlights
  FROM custos.summarize('weekly');
COMMIT;

\echo ''
\echo '== 15. Background work (here by hand: with custos preloaded and custos.worker_databases set,'
\echo '   a worker per database does it within seconds, and delivers notifications)'
BEGIN;
SELECT custos.set_tenant('a1000000-0000-4000-8000-000000000001') \gset
UPDATE custos.identities SET department = 'security' WHERE user_id = 'dave';
\echo '   dave changed department: his profile is queued for a new embedding (a login alone would not be):'
SELECT kind, item, state FROM custos.embedding_queue;
SELECT items, outcome FROM custos.run_job('embedding_refresh');
\echo '   a Slack integration for critical alerts (its URL, a credential, is never shown again):'
SELECT integration FROM custos.set_integration('soc-slack', 'slack', 'https://hooks.slack.com/services/T000/B000/XXXX', 'critical');
SELECT name, kind, url, min_severity FROM custos.integration_list;
INSERT INTO custos.alerts (tenant_id, source, severity, title)
VALUES (custos.current_tenant(), 'demo', 'critical', 'privileged account used from a new country');
\echo '   the alert waits in the outbox, queued in the same transaction:'
SELECT topic, state, subject->>'title' AS title FROM custos.notifications;
\echo '   scheduled jobs, run by hand as pg_cron would (each run recorded in custos.job_runs):'
SELECT job, outcome, items, coalesce(error, '') AS note
  FROM (SELECT 'retention' AS job, r.* FROM custos.run_job('retention') r
        UNION ALL SELECT 'checkpoint_publication', r.* FROM custos.run_job('checkpoint_publication') r) x;
SELECT jsonb_pretty(custos.health() - 'checked_at' - 'jobs') AS health;
COMMIT;
