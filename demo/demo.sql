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
