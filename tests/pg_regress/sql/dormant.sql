\set SHOW_CONTEXT never
SET ROLE regress_admin;
BEGIN;
SELECT custos.set_tenant('e0000000-0000-4000-8000-00000000000e') IS NOT NULL AS tenant_set;
SELECT custos.upsert_identities('[
  {"user_id": "root", "is_privileged": true, "roles": ["admin"], "created_at": "2020-01-01T00:00:00Z", "last_active_at": "2020-02-01T00:00:00Z"},
  {"user_id": "svc", "is_service_account": true, "created_at": "2020-01-01T00:00:00Z", "last_active_at": "2020-03-01T00:00:00Z"},
  {"user_id": "ana", "mfa_enabled": true, "created_at": "2020-01-01T00:00:00Z", "last_active_at": "2099-01-01T00:00:00Z"}]');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('e0000000-0000-4000-8000-00000000000e') IS NOT NULL AS tenant_set;
SELECT custos.upsert_identities('[
  {"user_id": "root", "is_privileged": true, "roles": ["admin"], "created_at": "2020-01-01T00:00:00Z", "last_active_at": "2020-02-01T00:00:00Z"},
  {"user_id": "svc", "is_service_account": true, "created_at": "2020-01-01T00:00:00Z", "last_active_at": "2020-03-01T00:00:00Z"},
  {"user_id": "ana", "mfa_enabled": true, "created_at": "2020-01-01T00:00:00Z"}]');
-- reasons[1] counts days, which grow with the clock: the rest of the explanation is stable.
SELECT user_id, never_active, status, risk_level, reasons[2:] AS other_reasons FROM custos.dormant_users() ORDER BY user_id;
SELECT dimension, value, identities, dormant, privileged_dormant FROM custos.dormant_summary();
SELECT reviewed_user_id, review_decision FROM custos.mark_reviewed('svc', 'disable', 'moved to OIDC');
SELECT custos.mark_reviewed('nobody', 'keep');
\echo :LAST_ERROR_SQLSTATE
COMMIT;
BEGIN;
SELECT custos.set_tenant('e0000000-0000-4000-8000-00000000000e') IS NOT NULL AS tenant_set;
SELECT custos.mark_reviewed('svc', 'maybe');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('e0000000-0000-4000-8000-00000000000e') IS NOT NULL AS tenant_set;
SELECT count(*) FROM custos.dormant_users(lim => 0);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('e0000000-0000-4000-8000-00000000000e') IS NOT NULL AS tenant_set;
SELECT count(*) FROM custos.dormant_users(order_by => 'mood');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('e0000000-0000-4000-8000-00000000000e') IS NOT NULL AS tenant_set;
SELECT custos.upsert_identities('[{"user_id": "x", "last_active_at": "-infinity"}]');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT custos.set_tenant('e0000000-0000-4000-8000-00000000000e') IS NOT NULL AS tenant_set;
SELECT custos.upsert_identities('[{"user_id": "x"}, {"user_id": "x"}]');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- No tenant: no rows, not an error; and an identity cannot be written without one.
SELECT count(*) FROM custos.dormant_users();
INSERT INTO custos.identities (user_id) VALUES ('x');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
