# Row-level security cost: one tenant's rows out of 1,000,000 over 100 tenants, read through the
# custos isolation policy, against the same query with an explicit WHERE on a table without RLS.
bench_tenancy() {
  local db=bench_tenancy tmp
  tmp=$(mktemp -d)
  bench_db $db
  cpsql -d $db >/dev/null <<'SQL'
DO $$ BEGIN CREATE ROLE bench_app LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
SET client_min_messages = warning;
GRANT custos_reader TO bench_app;
CREATE TABLE items (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL, amount int);
INSERT INTO items (tenant_id, amount)
SELECT format('00000000-0000-4000-8000-%s', lpad((g % 100)::text, 12, '0'))::uuid, g % 1000
  FROM generate_series(1, 1000000) g;
CREATE INDEX ON items (tenant_id);
CREATE TABLE items_plain AS SELECT * FROM items;
CREATE INDEX ON items_plain (tenant_id);
SELECT custos.enable_tenant_isolation('items');
GRANT SELECT ON items, items_plain TO bench_app;
VACUUM ANALYZE items, items_plain;
SQL
  cat >"$tmp/rls.sql" <<'SQL'
\set t random(0, 99)
BEGIN;
SELECT custos.set_tenant(format('00000000-0000-4000-8000-%s', lpad(:t::text, 12, '0'))::uuid);
SELECT count(*), sum(amount) FROM items;
COMMIT;
SQL
  cat >"$tmp/plain.sql" <<'SQL'
\set t random(0, 99)
BEGIN;
SELECT format('00000000-0000-4000-8000-%s', lpad(:t::text, 12, '0'))::uuid;
SELECT count(*), sum(amount) FROM items_plain WHERE tenant_id = format('00000000-0000-4000-8000-%s', lpad(:t::text, 12, '0'))::uuid;
COMMIT;
SQL
  # Taking turns after a checkpoint each: run last in bench/run.sh, one measurement right after
  # the other once met a checkpoint of the earlier benchmarks' writes (see the CHANGELOG).
  tenancy_tps() { pgbench_tps $db bench_app 1 "$tmp/$1.sql"; }
  interleaved tenancy_tps plain rls
  report "10,000 of 1,000,000 rows, explicit WHERE, no RLS, 1 client" "${MEDIAN[plain]}" "tps"
  report_paired "the same through custos tenant isolation (RLS), 1 client" rls "tps" "of no RLS" plain
  echo "  plan with RLS:"
  cpsql -d $db -At -c "SET ROLE bench_app; SELECT custos.set_tenant('00000000-0000-4000-8000-000000000007') IS NULL;
    EXPLAIN (COSTS OFF) SELECT count(*) FROM items" | grep -v '^f$' | sed 's/^/    /'
  rm -rf "$tmp"
}
