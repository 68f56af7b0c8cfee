# The audit ledger against a plain table with the same columns and no chain (the ceiling), and a
# hand-written PL/pgSQL + pgcrypto chain trigger (what teams write themselves), in the same run.

LEDGER_ROW_SELECT="'document.update', 'document', 'doc-' || g,
  jsonb_build_object('field', 'title', 'old', 'Draft ' || g, 'new', 'Final ' || g, 'size', g * 7),
  '10.1.2.3'::inet, 'Mozilla/5.0 (X11; Linux x86_64) custos-bench'"

ledger_bench_schema() {
  cpsql -d "$1" >/dev/null <<'SQL'
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE SEQUENCE plain_seq;
CREATE TABLE plain_events (
    tenant_id uuid NOT NULL, seq bigint NOT NULL DEFAULT nextval('plain_seq'), id uuid NOT NULL DEFAULT gen_random_uuid(),
    occurred_at timestamptz NOT NULL DEFAULT now(), recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor text NOT NULL DEFAULT current_user, db_role text NOT NULL DEFAULT current_user,
    txid bigint NOT NULL DEFAULT txid_current(), action text NOT NULL, entity_type text NOT NULL, entity_id text,
    severity text NOT NULL DEFAULT 'info', details jsonb NOT NULL DEFAULT '{}', ip_address inet, user_agent text,
    prev_hash bytea, hash bytea, PRIMARY KEY (tenant_id, seq));
CREATE TABLE plpgsql_events (LIKE plain_events INCLUDING ALL);
ALTER TABLE plpgsql_events ALTER COLUMN seq DROP DEFAULT;
CREATE TABLE plpgsql_heads (tenant_id uuid PRIMARY KEY, seq bigint NOT NULL, hash bytea NOT NULL);
CREATE FUNCTION plpgsql_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE h record;
BEGIN
    INSERT INTO plpgsql_heads VALUES (NEW.tenant_id, 0, '\x') ON CONFLICT DO NOTHING;
    SELECT seq, hash INTO h FROM plpgsql_heads WHERE tenant_id = NEW.tenant_id FOR UPDATE;
    NEW.seq := h.seq + 1;
    NEW.prev_hash := h.hash;
    NEW.hash := digest(h.hash || convert_to(concat_ws('|', NEW.tenant_id, NEW.seq, NEW.id, NEW.occurred_at,
        NEW.recorded_at, NEW.actor, NEW.db_role, NEW.txid, NEW.action, NEW.entity_type, NEW.entity_id,
        NEW.severity, NEW.details::text, NEW.ip_address, NEW.user_agent), 'UTF8'), 'sha256');
    UPDATE plpgsql_heads SET seq = NEW.seq, hash = NEW.hash WHERE tenant_id = NEW.tenant_id;
    RETURN NEW;
END $$;
CREATE TRIGGER chain BEFORE INSERT ON plpgsql_events FOR EACH ROW EXECUTE FUNCTION plpgsql_chain();

-- The same chain written by hand to custos' documented format v1 (docs/ledger-format.md):
-- domain-separated, length-prefixed fields, so that no two rows encode alike; concat_ws above
-- is ambiguous ('a|b' + 'c' = 'a' + 'b|c'). Its hashes equal custos' own (checked below).
CREATE TABLE plpgsql_v1_events (LIKE plpgsql_events INCLUDING ALL);
CREATE TABLE plpgsql_v1_heads (tenant_id uuid PRIMARY KEY, seq bigint NOT NULL, hash bytea NOT NULL);
CREATE FUNCTION v1_field(tag int, value bytea) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT set_byte('\x00'::bytea, 0, tag) || CASE WHEN value IS NULL THEN '\xffffffff'::bytea
                                                   ELSE int4send(length(value)) || value END
$$;
CREATE FUNCTION v1_hash(prev bytea, e plpgsql_v1_events) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT sha256('custos/ledger/event/v1'::bytea || '\x00'::bytea || prev
        || v1_field(1, decode(replace(e.tenant_id::text, '-', ''), 'hex')) || v1_field(2, int8send(e.seq))
        || v1_field(3, decode(replace(e.id::text, '-', ''), 'hex'))
        || v1_field(4, timestamptz_send(e.occurred_at)) || v1_field(5, timestamptz_send(e.recorded_at))
        || v1_field(6, textsend(e.actor)) || v1_field(7, textsend(e.db_role)) || v1_field(8, int8send(e.txid))
        || v1_field(9, textsend(e.action)) || v1_field(10, textsend(e.entity_type))
        || v1_field(11, textsend(e.entity_id)) || v1_field(12, textsend(e.severity))
        || v1_field(13, textsend(e.details::text)) || v1_field(14, textsend(nullif(format('%s', e.ip_address), '')))
        || v1_field(15, textsend(e.user_agent)))
$$;
CREATE FUNCTION plpgsql_chain_v1() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE h record;
BEGIN
    INSERT INTO plpgsql_v1_heads
    VALUES (NEW.tenant_id, 0, sha256('custos/ledger/genesis/v1'::bytea || '\x00'::bytea || decode(replace(NEW.tenant_id::text, '-', ''), 'hex')))
        ON CONFLICT DO NOTHING;
    SELECT seq, hash INTO h FROM plpgsql_v1_heads WHERE tenant_id = NEW.tenant_id FOR UPDATE;
    NEW.seq := h.seq + 1;
    NEW.prev_hash := h.hash;
    NEW.hash := v1_hash(h.hash, NEW);
    UPDATE plpgsql_v1_heads SET seq = NEW.seq, hash = NEW.hash WHERE tenant_id = NEW.tenant_id;
    RETURN NEW;
END $$;
CREATE TRIGGER chain BEFORE INSERT ON plpgsql_v1_events FOR EACH ROW EXECUTE FUNCTION plpgsql_chain_v1();
SQL
}

# ledger_batch_script TABLE ROWS TENANT_OFFSET: a pgbench script inserting ROWS rows over 10 tenants.
ledger_batch_script() {
  cat <<SQL
INSERT INTO $1 (tenant_id, action, entity_type, entity_id, details, ip_address, user_agent)
SELECT format('00000000-0000-4000-8000-%s', lpad(($3 + g % 10)::text, 12, '0'))::uuid, $LEDGER_ROW_SELECT
  FROM generate_series(1, $2) g;
SQL
}

bench_ledger() {
  local db=bench_ledger tmp t
  tmp=$(mktemp -d)
  bench_db $db
  ledger_bench_schema $db

  echo "  batches of 1,000 rows over 10 tenants, 1 client: medians of 3 interleaved rounds of 100 batches"
  for t in plain_events plpgsql_events custos.events; do
    ledger_batch_script $t 1000 0 >"$tmp/$t.sql"
  done
  local plain custos
  ledger_batch_rate() { rows_per_second $db "$tmp/$1.sql" 100 1000; }
  ledger_batch_script plpgsql_v1_events 1000 0 >"$tmp/plpgsql_v1_events.sql"
  interleaved ledger_batch_rate plain_events plpgsql_events plpgsql_v1_events custos.events
  report "plain table, no chain" "${MEDIAN[plain_events]}" "rows/s"
  report_paired "PL/pgSQL + pgcrypto chain, concat_ws encoding" plpgsql_events "rows/s" "of plain" plain_events
  report_paired "PL/pgSQL chain, custos' format v1 encoding" plpgsql_v1_events "rows/s" "of plain" plain_events
  report_paired "custos.events (Rust chain, format v1)" custos.events "rows/s" "of plain" plain_events
  report_paired "custos.events against the concat_ws PL/pgSQL chain" custos.events "rows/s" "of PL/pgSQL" plpgsql_events
  report_paired "custos.events against the same encoding in PL/pgSQL" custos.events "rows/s" "of PL/pgSQL v1" plpgsql_v1_events
  # The hand-written v1 chain is a fair baseline only if it computes custos' hashes.
  cpsql -d $db -At -c "SELECT '  check: the PL/pgSQL v1 encoding reproduces custos hashes of ' || count(*) || ' events: ' || bool_and(v1_hash(e.prev_hash, row(e.*)::plpgsql_v1_events) = e.hash)
                         FROM (SELECT * FROM custos.events LIMIT 1000) e"

  echo "  single-row inserts, 8 clients, 10 tenants (synchronous_commit on): medians of 5 interleaved rounds of ${BENCH_SECONDS}s"
  for t in plain_events plpgsql_events custos.events; do
    cat >"$tmp/one-$t.sql" <<SQL
\set t random(0, 9)
INSERT INTO $t (tenant_id, action, entity_type, entity_id, details, ip_address, user_agent)
SELECT format('00000000-0000-4000-8000-%s', lpad((100 + :t)::text, 12, '0'))::uuid, $LEDGER_ROW_SELECT
  FROM (SELECT :t AS g) s;
SQL
  done
  ledger_single_tps() { pgbench_tps $db postgres 8 "$tmp/one-$1.sql"; }
  ROUNDS=5 interleaved ledger_single_tps plain_events plpgsql_events custos.events
  report "plain table" "${MEDIAN[plain_events]}" "tps"
  report_paired "PL/pgSQL + pgcrypto chain trigger" plpgsql_events "tps" "of plain" plain_events
  report_paired "custos.events" custos.events "tps" "of plain" plain_events
  # What custos loses on 10 tenants is mostly writers of one tenant waiting for each other's
  # commit: with no two clients on one tenant, only custos' own work per transaction is left.
  echo "  the same with each client on a tenant of its own (no two writers of one tenant at once): 3 rounds"
  for t in plain_events custos.events; do
    sed 's/^\\set t random(0, 9)$/\\set t 20 + :client_id/' "$tmp/one-$t.sql" >"$tmp/own-$t.sql"
  done
  ledger_own_tenant_tps() { pgbench_tps $db postgres 8 "$tmp/own-$1.sql"; }
  ROUNDS=3 interleaved ledger_own_tenant_tps plain_events custos.events
  report "plain table" "${MEDIAN[plain_events]}" "tps"
  report_paired "custos.events" custos.events "tps" "of plain" plain_events
  echo "  single-row inserts, 16 clients on one hot tenant (custos serialises a tenant's commits)"
  sed 's/random(0, 9)/random(50, 50)/' "$tmp/one-plain_events.sql" >"$tmp/hot-plain.sql"
  sed 's/random(0, 9)/random(50, 50)/' "$tmp/one-custos.events.sql" >"$tmp/hot-custos.sql"
  plain=$(pgbench_tps $db postgres 16 "$tmp/hot-plain.sql")
  custos=$(pgbench_tps $db postgres 16 "$tmp/hot-custos.sql")
  report "plain table, one tenant" "$plain" "tps"
  report "custos.events, one tenant" "$custos" "tps" "of plain" "$plain"

  echo "  1,000,000 rows: one transaction against 1,000 transactions of 1,000 rows (10 tenants)"
  ledger_batch_script custos.events 1000 1000 >"$tmp/k.sql"
  local small big
  small=$(time_pgbench_ms $db "$tmp/k.sql" 1000)
  big=$(time_sql $db "$(ledger_batch_script custos.events 1000000 2000)")
  report "1,000 x 1,000-row transactions" "$small" "ms"
  report "1 x 1,000,000-row transaction" "$big" "ms" "of 1,000 x 1,000" "$small"
  plain=$(time_sql $db "$(ledger_batch_script plain_events 1000000 2000)")
  report "(plain table, 1 x 1,000,000 rows)" "$plain" "ms"

  # Insert-time anomaly scoring (anomaly.score_on_insert): two tenants with the same 30 days of
  # history (12,000 events, ~400 in the last 24 hours) and the same model; one scores each new
  # event as it is recorded (features over the last 24 hours), the other does not.
  echo "  single-row record_event, 1 client, a tenant scoring each event at insert (anomaly.score_on_insert) against one that does not: 3 rounds"
  local scoring
  for scoring in on off; do
    local tn="00000000-0000-4000-8000-00000000a5$([ $scoring = on ] && echo 01 || echo 02)"
    cpsql -d $db -c "BEGIN; SELECT custos.set_tenant('$tn');
      SELECT custos.record_events((SELECT jsonb_agg(jsonb_build_object(
          'occurred_at', now() - interval '30 days' + g * interval '216 seconds', 'actor', 'user' || (g % 40),
          'action', (ARRAY['login', 'view', 'view', 'search', 'update', 'export'])[1 + g % 6],
          'entity_type', 'document', 'entity_id', 'doc' || (g % 300), 'ip_address', '10.2.0.' || (g % 40)) ORDER BY g)
        FROM generate_series(1, 12000) g));
      SELECT * FROM custos.train_anomaly_model(now() - interval '31 days', now(), seed => 1);
      SELECT custos.set_setting('anomaly.score_on_insert', '$([ $scoring = on ] && echo true || echo false)');
      COMMIT;" >/dev/null
    cat >"$tmp/scoring-$scoring.sql" <<SQL
\set u random(0, 39)
BEGIN;
SELECT custos.set_tenant('$tn');
SELECT custos.record_event('view', 'document', 'doc' || :u, actor => 'user' || :u, ip_address => ('10.2.0.' || :u)::inet);
COMMIT;
SQL
  done
  ledger_scoring_tps() { pgbench_tps $db postgres 1 "$tmp/scoring-$1.sql"; }
  ROUNDS=3 interleaved ledger_scoring_tps off on
  report "record_event, scoring off" "${MEDIAN[off]}" "tps"
  report_paired "record_event, scored at insert" on "tps" "of off" off
  cpsql -d $db -At -c "SELECT '  events scored at insert: ' || count(*) || ', recorded as anomalies: ' || count(*) FILTER (WHERE is_anomaly)
                         FROM custos.anomaly_predictions WHERE tenant_id = '00000000-0000-4000-8000-00000000a501'"

  echo "  verification (one backend, one core); each tenant's rows are interleaved with 9 others'"
  local ms t0="00000000-0000-4000-8000-000000002000"
  ms=$(time_sql $db "SELECT * FROM custos.verify_chain('$t0')")
  report "verify_chain of 100,000 events, first read (cold)" "$(awk -v ms="$ms" 'BEGIN {printf "%.0f", 100000 / (ms / 1000)}')" "events/s"
  ms=$(time_sql $db "SELECT * FROM custos.verify_chain('$t0')")
  report "verify_chain of the same 100,000 events again (warm)" "$(awk -v ms="$ms" 'BEGIN {printf "%.0f", 100000 / (ms / 1000)}')" "events/s"
  ms=$(time_sql $db "SELECT sum(checked) FROM generate_series(0, 9) t, custos.verify_chain(format('00000000-0000-4000-8000-%s', lpad((2000 + t)::text, 12, '0'))::uuid)")
  report "verify_chain of 1,000,000 events (10 tenants, one after another)" "$(awk -v ms="$ms" 'BEGIN {printf "%.0f", 1000000 / (ms / 1000)}')" "events/s"
  cpsql -d $db -c "$(ledger_batch_script custos.events 500000 3000 | sed 's/g % 10/0/')" >/dev/null
  ms=$(time_sql $db "SELECT * FROM custos.verify_chain('00000000-0000-4000-8000-000000003000')")
  report "verify_chain of one tenant's 500,000 contiguous events" "$(awk -v ms="$ms" 'BEGIN {printf "%.0f", 500000 / (ms / 1000)}')" "events/s"
  cpsql -d $db -At -c "SELECT 'table size: ' || pg_size_pretty(pg_total_relation_size('custos.events')) || ' for ' || count(*) || ' events' FROM custos.events" | sed 's/^/  /'

  # The cluster runs with track_commit_timestamp on (bench/run.sh), which lets a tenant's next
  # writer commit without waiting for its predecessor's flush (README, Concurrency). Last, as it
  # takes a restart: single rows without it.
  echo "  single-row inserts, 8 clients, 10 tenants, with track_commit_timestamp off (a writer waits for its predecessor's end): 3 rounds"
  bench_restart_with "track_commit_timestamp = off"
  ROUNDS=3 interleaved ledger_single_tps plain_events custos.events
  report "plain table" "${MEDIAN[plain_events]}" "tps"
  report_paired "custos.events" custos.events "tps" "of plain" plain_events
  bench_restart_with
  rm -rf "$tmp"
}
