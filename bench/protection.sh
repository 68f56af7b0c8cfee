# Ledger data protection: ingest with field encryption on against off, streaming exports of
# 1,000,000 events with the backend's peak memory, and retention over 1,000,000 events.

PROTECTION_MASTER_KEY=1111111111111111111111111111111111111111111111111111111111111111

# protection_batch_script TENANT_OFFSET: 1,000 events over 10 tenants, with an email in details.
protection_batch_script() {
  cat <<SQL
INSERT INTO custos.events (tenant_id, action, entity_type, entity_id, actor, details, ip_address, user_agent)
SELECT format('00000000-0000-4000-8000-%s', lpad(($1 + g % 10)::text, 12, '0'))::uuid, 'profile.update', 'user', 'u' || g % 50,
       'user' || g % 50, jsonb_build_object('email', 'user' || g % 50 || '@example.com', 'field', 'title', 'size', g),
       '10.1.2.3', 'Mozilla/5.0 (X11; Linux x86_64) custos-bench'
  FROM generate_series(1, 1000) g;
SQL
}

bench_protection() {
  local db=bench_protection tmp t
  tmp=$(mktemp -d)
  bench_db $db
  # The key from a file the server reads (key settings are refused in catalogs and config files).
  local keyfile="$CLUSTER_DIR/bench-master.key"
  printf '%s' "$PROTECTION_MASTER_KEY" >"$keyfile"
  chown postgres: "$keyfile"; chmod 600 "$keyfile"
  cpsql -d postgres -c "ALTER DATABASE $db SET custos.master_key_file = '$keyfile'" >/dev/null
  for t in $(seq 10 19); do
    cpsql -d $db -c "BEGIN" -c "SELECT custos.set_tenant(format('00000000-0000-4000-8000-%s', lpad('$t', 12, '0'))::uuid)" \
      -c "SELECT custos.set_setting('ledger.encrypt', 'true')" -c "COMMIT" >/dev/null
  done
  protection_batch_script 0 >"$tmp/off.sql"
  protection_batch_script 10 >"$tmp/on.sql"
  echo "  ingest, batches of 1,000 events over 10 tenants, 1 client: medians of 5 interleaved rounds of 200 batches"
  protection_rate() { rows_per_second $db "$tmp/$1.sql" 200 1000; }
  ROUNDS=5 interleaved protection_rate off on
  report "encryption off" "${MEDIAN[off]}" "rows/s"
  report_paired "encryption on (ip, user agent, details.email sealed)" on "rows/s" "of off" off
  cpsql -d $db -At -c "SELECT '  stored ip_address of an encrypted event: ' || left(ip_address, 60) || '...' FROM custos.events WHERE tenant_id = '00000000-0000-4000-8000-000000000010' LIMIT 1"

  echo "  export of one tenant's 1,000,000 events (COPY to /dev/null on the server), peak backend memory"
  local big="00000000-0000-4000-8000-000000000099"
  cpsql -d $db -c "INSERT INTO custos.events (tenant_id, action, entity_type, entity_id, details, ip_address, user_agent)
    SELECT '$big', 'document.update', 'document', 'doc-' || g, jsonb_build_object('field', 'title', 'old', 'Draft ' || g, 'new', 'Final ' || g),
           '10.1.2.3', 'Mozilla/5.0 custos-bench' FROM generate_series(1, 1000000) g" >/dev/null
  local idle ms kb format
  idle=$(backend_peak_kb $db "SELECT 1")
  report "idle backend (baseline)" "$idle" "kB"
  for format in csv jsonl; do
    ms=$(time_sql $db "SELECT custos.set_tenant('$big'); COPY (SELECT * FROM custos.export_events('$format')) TO '/dev/null'")
    kb=$(backend_peak_kb $db "SELECT custos.set_tenant('$big'); COPY (SELECT * FROM custos.export_events('$format')) TO '/dev/null'")
    report "export_events('$format'), 1,000,000 events" "$(awk -v ms="$ms" 'BEGIN {printf "%.0f", 1000000 / (ms / 1000)}')" "events/s"
    report "  peak private backend memory during the $format export" "$kb" "kB" "of idle" "$idle"
  done
  kb=$(backend_peak_kb $db "SELECT custos.set_tenant('$big'); COPY (SELECT * FROM custos.export_events('csv', until => (SELECT occurred_at FROM custos.events WHERE tenant_id = '$big' AND seq = 100000))) TO '/dev/null'")
  report "  peak private backend memory, csv export of the first 100,000" "$kb" "kB" "of idle" "$idle"

  echo "  retention: 1,000,000 events past the archive horizon (aged behind the guards), 1,000 kept"
  cpsql -d $db >/dev/null <<SQL
ALTER EVENT TRIGGER custos_guard_ledger DISABLE;
ALTER TABLE custos.events DISABLE TRIGGER append_only;
UPDATE custos.events SET recorded_at = recorded_at - interval '8 years' WHERE tenant_id = '$big' AND seq <= 999000;
ALTER TABLE custos.events ENABLE ALWAYS TRIGGER append_only;
ALTER EVENT TRIGGER custos_guard_ledger ENABLE ALWAYS;
CREATE TABLE plain_copy AS SELECT * FROM custos.events WHERE tenant_id = '$big';
CREATE INDEX ON plain_copy (tenant_id, seq);
VACUUM ANALYZE custos.events, plain_copy;
SQL
  local plain
  plain=$(time_sql $db "DELETE FROM plain_copy WHERE tenant_id = '$big' AND seq <= 999000")
  ms=$(time_sql $db "SELECT * FROM custos.apply_retention('$big')")
  report "plain DELETE of 999,000 rows (baseline)" "$plain" "ms"
  report "custos.apply_retention, 999,000 events" "$ms" "ms" "of plain DELETE" "$plain"
  cpsql -d $db -At -c "SELECT '  after retention: ' || checked || ' events verify from the anchor: ' || ok FROM custos.verify_chain('$big')"
  rm -rf "$tmp"
}
