# custos.track_table: a business table whose every change goes into the hash-chained ledger,
# against the same table untracked, in the same run.

capture_table_sql() {
  cat <<SQL
CREATE TABLE $1 (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL, customer text NOT NULL,
                 amount numeric(12, 2) NOT NULL, status text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
SQL
}

bench_capture() {
  local db=bench_capture tmp t
  tmp=$(mktemp -d)
  bench_db $db
  { capture_table_sql orders_untracked; capture_table_sql orders_tracked; capture_table_sql orders_grouped; } | cpsql -d $db >/dev/null
  cpsql -d $db -c "SELECT custos.track_table('orders_tracked')" -c "SELECT custos.track_table('orders_grouped', rows_per_event => 100)" >/dev/null
  for t in orders_untracked orders_tracked orders_grouped; do
    cat >"$tmp/batch-$t.sql" <<SQL
INSERT INTO $t (tenant_id, customer, amount, status)
SELECT format('00000000-0000-4000-8000-%s', lpad((g % 10)::text, 12, '0'))::uuid, 'customer ' || g, g % 997, 'open'
  FROM generate_series(1, 1000) g;
SQL
    cat >"$tmp/one-$t.sql" <<SQL
\\set t random(0, 9)
INSERT INTO $t (tenant_id, customer, amount, status)
VALUES (format('00000000-0000-4000-8000-%s', lpad(:t::text, 12, '0'))::uuid, 'customer', 42.50, 'open');
SQL
  done
  # The storage floor: the events one tracked batch records (1,000 events of 10 tenants), written
  # again by a plain INSERT into a table of the same columns and primary key, without the chain, in
  # the order capture writes them (tenant by tenant). Each batch gives them new seqs (from a
  # sequence with a backend-local cache of 1,000, a small cost of its own), so that they are
  # appended at the end of each tenant's range as custos appends.
  cpsql -d $db -f "$tmp/batch-orders_tracked.sql" >/dev/null
  cpsql -d $db -c "CREATE TABLE events_source AS SELECT * FROM custos.events WHERE entity_type = 'public.orders_tracked' AND action = 'insert' ORDER BY tenant_id, seq" \
    -c "CREATE TABLE events_plain (LIKE custos.events INCLUDING DEFAULTS)" \
    -c "ALTER TABLE events_plain ADD PRIMARY KEY (tenant_id, seq)" \
    -c "CREATE SEQUENCE events_plain_seq CACHE 1000" >/dev/null
  cat >"$tmp/batch-events_plain.sql" <<SQL
INSERT INTO events_plain
SELECT tenant_id, nextval('events_plain_seq'), id, occurred_at, recorded_at, actor, db_role, txid, action, entity_type,
       entity_id, severity, details, ip_address, user_agent, prev_hash, hash
  FROM events_source;
SQL
  echo "  1,000-row INSERT batches over 10 tenants, 1 client: medians of 5 interleaved rounds of 200 batches"
  capture_batch_rate() { rows_per_second $db "$tmp/batch-$1.sql" 200 1000; }
  ROUNDS=5 interleaved capture_batch_rate orders_untracked orders_tracked orders_grouped events_plain
  report "untracked table" "${MEDIAN[orders_untracked]}" "rows/s"
  report_paired "tracked by custos (event + chain per row)" orders_tracked "rows/s" "of untracked" orders_untracked
  report_paired "tracked, rows_per_event => 100" orders_grouped "rows/s" "of untracked" orders_untracked
  report_paired "the same events into a plain table, no chain (storage floor)" events_plain "rows/s" "of untracked" orders_untracked
  # A business row costs 1/untracked, its event at least 1/floor: capture cannot pass f / (1 + f).
  awk -v cs="${ROUND_VALUES[events_plain]}" -v bs="${ROUND_VALUES[orders_untracked]}" 'BEGIN {
    n = split(cs, c, " "); split(bs, b, " ")
    for (i = 1; i <= n; i++) { f = c[i] / b[i]; r[i] = f / (1 + f) }
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (r[j] < r[i]) { t = r[i]; r[i] = r[j]; r[j] = t }
    printf "  %-58s %12s %-8s  %.2fx of untracked (median of rounds)\n", "ceiling for one event per row, given the floor", "", "", r[int((n + 1) / 2)]
  }'
  echo "  single-row inserts, 8 clients, 10 tenants: medians of 5 interleaved rounds of ${BENCH_SECONDS}s"
  capture_single_tps() { pgbench_tps $db postgres 8 "$tmp/one-$1.sql"; }
  ROUNDS=5 interleaved capture_single_tps orders_untracked orders_tracked
  report "untracked table" "${MEDIAN[orders_untracked]}" "tps"
  report_paired "tracked by custos" orders_tracked "tps" "of untracked" orders_untracked
  echo "  one INSERT of 1,000,000 rows over 10 tenants: time, and the backend's peak private memory"
  local big="INSERT INTO %s (tenant_id, customer, amount, status)
    SELECT format('00000000-0000-4000-8000-%%s', lpad((g %% 10)::text, 12, '0'))::uuid, 'customer ' || g, g %% 997, 'open'
      FROM generate_series(1, 1000000) g"
  local plain_ms tracked_ms
  plain_ms=$(time_sql $db "$(printf "$big" orders_untracked)")
  tracked_ms=$(time_sql $db "$(printf "$big" orders_tracked)")
  report "untracked table" "$plain_ms" "ms"
  report "tracked by custos (1,000,000 events)" "$tracked_ms" "ms" "of untracked" "$plain_ms"
  local idle
  idle=$(backend_peak_kb $db "SELECT 1")
  report "peak private backend memory, tracked (a second time)" "$(backend_peak_kb $db "$(printf "$big" orders_tracked)")" "kB" "of an idle backend" "$idle"
  echo "  verification of one tenant's captured events (10 tenants written together), after a checkpoint"
  cpsql -d postgres -c "CHECKPOINT" >/dev/null
  local t3="00000000-0000-4000-8000-000000000003" events ms
  events=$(cpsql -d $db -At -c "SELECT max(seq) FROM custos.events WHERE tenant_id = '$t3'")
  ms=$(time_sql $db "SELECT * FROM custos.verify_chain('$t3')")
  report "verify_chain of $events events" "$(awk -v ms="$ms" -v n="$events" 'BEGIN {printf "%.0f", n / (ms / 1000)}')" "events/s"
  # (verify_chain reports its progress as notices on long chains: not wanted here)
  PGOPTIONS="-c client_min_messages=warning" cpsql -d $db -At -c "SELECT '  events recorded: ' || sum(v.checked) || ', every chain verifies: ' || bool_and(v.ok)
    FROM (SELECT DISTINCT tenant_id FROM custos.events) t, custos.verify_chain(t.tenant_id) v"
  rm -rf "$tmp"
}
