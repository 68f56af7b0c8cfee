\set SHOW_CONTEXT never
CREATE TABLE regress_orders (tenant_id uuid NOT NULL, id int PRIMARY KEY, total numeric);
CREATE TABLE regress_nokey (tenant_id uuid NOT NULL, id int);
CREATE TABLE regress_intkey (tenant_id int NOT NULL, id int PRIMARY KEY);
SELECT custos.track_table('regress_orders');
SELECT custos.track_table('regress_nokey');
\echo :LAST_ERROR_SQLSTATE
SELECT custos.track_table('regress_intkey');
\echo :LAST_ERROR_SQLSTATE
SELECT custos.track_table('regress_orders', rows_per_event => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT custos.track_table('custos.events');
\echo :LAST_ERROR_SQLSTATE
SELECT table_name, tenant_column, entity_type, rows_per_event, key_columns FROM custos.tracked_tables;
BEGIN;
SELECT custos.set_tenant('d0000000-0000-4000-8000-00000000000d') IS NOT NULL AS tenant_set;
INSERT INTO regress_orders VALUES ('d0000000-0000-4000-8000-00000000000d', 1, 9.50), ('d0000000-0000-4000-8000-00000000000d', 2, 12);
UPDATE regress_orders SET total = 10 WHERE id = 1;
DELETE FROM regress_orders WHERE id = 2;
COMMIT;
SELECT seq, action, entity_type, entity_id, details FROM custos.events
 WHERE tenant_id = 'd0000000-0000-4000-8000-00000000000d' ORDER BY seq;
SELECT custos.untrack_table('regress_orders');
SELECT custos.untrack_table('regress_orders');
\echo :LAST_ERROR_SQLSTATE
