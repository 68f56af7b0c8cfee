# The background workers: the embedding refresh against the mock OpenAI-compatible server
# answering each call in 50 ms (items per second draining a backlog; commit-to-embedded lag
# p50/p95 under a steady load), and what the queue costs the writers: ledger ingest with the
# tenant's events embedded against without (events need no trigger: a watermark), and identity
# updates with the queue trigger against without it, measured in the same run.

bench_workers() {
  local db=bench_workers url mock_pid creds ms_on ms_off
  (cd "$ROOT" && cargo build -q --release --manifest-path tests/integration/Cargo.toml --bin mock-bedrock)
  "$ROOT/tests/integration/target/release/mock-bedrock" --delay-ms 50 >"$CLUSTER_DIR/mock-workers.url" &
  mock_pid=$!
  for _ in $(seq 50); do [ -s "$CLUSTER_DIR/mock-workers.url" ] && break; sleep 0.1; done
  url=$(head -1 "$CLUSTER_DIR/mock-workers.url")
  creds="$CLUSTER_DIR/workers.credentials"
  printf 'openai_api_key = custos-test-bedrock-api-key\n' >"$creds"
  chmod 644 "$creds"
  bench_db $db
  cpsql -d $db -c "ALTER DATABASE $db SET custos.ai_credentials_file = '$creds'" \
    -c "ALTER DATABASE $db SET custos.ai_allowed_endpoints = '$url'" >/dev/null
  local tenant="SELECT custos.set_tenant('00000000-0000-4000-8000-0000000b0001');"
  cpsql -d $db -c "BEGIN; $tenant
    SELECT custos.set_setting('ai.provider', '\"openai\"'), custos.set_setting('ai.endpoint', '\"$url\"'),
           custos.set_setting('ai.embedding_model', '\"text-embedding-3-small\"'),
           custos.set_setting('ai.embedding_dimensions', '256');
    COMMIT;" >/dev/null
  cpsql -d postgres -c "ALTER SYSTEM SET custos.worker_databases = '$db'" -c "SELECT pg_reload_conf()" >/dev/null
  for _ in $(seq 100); do
    [ "$(cpsql -d postgres -At -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'custos worker $db'")" = 1 ] && break
    sleep 0.1
  done

  # A backlog of 20,000 changed identities, drained in batches of 256 (one call of 50 ms each).
  local t0 t1 n
  t0=$(date +%s%N)
  cpsql -d $db -c "BEGIN; $tenant
    SELECT custos.upsert_identities((SELECT jsonb_agg(jsonb_build_object('user_id', 'b' || g, 'department', 'd' || (g % 50),
             'roles', jsonb_build_array('r' || (g % 20)))) FROM generate_series(1, 20000) g));
    COMMIT;" >/dev/null
  for _ in $(seq 600); do
    n=$(cpsql -d $db -At -c "SELECT count(*) FROM custos.identity_embeddings")
    [ "$n" -ge 20000 ] && break
    sleep 0.1
  done
  t1=$(date +%s%N)
  report "embedding refresh, backlog of 20,000 identities (50 ms a call)" \
    "$(awk -v n="$n" -v ms="$(( (t1 - t0) / 1000000 ))" 'BEGIN {printf "%.0f", n / (ms / 1000)}')" "items/s"

  # A steady load: 25 changed identities committed every 100 ms for 20 s (250/s); the lag of
  # each from its commit to its vector.
  cpsql -d $db -c "CREATE TABLE bench_commits (user_id text PRIMARY KEY, committed_at timestamptz)" >/dev/null
  cat >"$CLUSTER_DIR/steady.sql" <<SQL
BEGIN;
$tenant
SELECT custos.upsert_identities((SELECT jsonb_agg(jsonb_build_object('user_id', 's' || :round || '_' || g,
         'department', 'steady')) FROM generate_series(1, 25) g));
INSERT INTO bench_commits SELECT 's' || :round || '_' || g, clock_timestamp() FROM generate_series(1, 25) g;
COMMIT;
SQL
  for round in $(seq 1 200); do
    cpsql -d $db -v round="$round" -f "$CLUSTER_DIR/steady.sql" >/dev/null
    sleep 0.1
  done
  for _ in $(seq 100); do
    [ "$(cpsql -d $db -At -c "SELECT count(*) FROM custos.identity_embeddings WHERE user_id LIKE 's%'")" -ge 5000 ] && break
    sleep 0.1
  done
  cpsql -d $db -At -F ' ' -c "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY lag)::numeric, 0),
                                     round(percentile_cont(0.95) WITHIN GROUP (ORDER BY lag)::numeric, 0), count(*)
      FROM (SELECT extract(epoch FROM e.embedded_at - c.committed_at) * 1000 AS lag
              FROM bench_commits c JOIN custos.identity_embeddings e ON e.user_id = c.user_id) x" | {
    read -r p50 p95 embedded
    report "commit-to-embedded lag at 250 changes/s: p50" "$p50" "ms"
    report "  p95 ($embedded of 5,000 embedded)" "$p95" "ms" "the goal" 2000
  }

  # What the queue costs writers. Ledger ingest: 200 batches of 100 events, the tenant's events
  # embedded (a watermark, no trigger) or not, taking turns.
  cpsql -d postgres -c "ALTER SYSTEM SET custos.worker_databases = ''" -c "SELECT pg_reload_conf()" >/dev/null
  ingest() {
    cpsql -d $db -c "BEGIN; $tenant SELECT custos.set_setting('jobs.embed_events', '$1'); COMMIT;" >/dev/null
    PGOPTIONS="-c custos.tenant_id=00000000-0000-4000-8000-0000000b0001" time_sql $db "SELECT count(*) FROM (
        SELECT custos.record_events((SELECT jsonb_agg(jsonb_build_object('action', 'x', 'entity_type', 'y', 'entity_id', 'e' || g))
                                       FROM generate_series(1, 100) g)) FROM generate_series(1, 200)) x"
  }
  ms_off=0; ms_on=0
  for _ in 1 2 3; do
    ms_off=$(awk -v a="$ms_off" -v b="$(ingest false)" 'BEGIN {print a + b}')
    ms_on=$(awk -v a="$ms_on" -v b="$(ingest true)" 'BEGIN {print a + b}')
  done
  report "ledger ingest, 60,000 events: embedded by the workers" "$ms_on" "ms" "without" "$ms_off"
  # Identity updates that change the profile, 20,000 at a time, queue trigger on or off.
  update() {
    cpsql -d $db -c "BEGIN; $tenant SELECT custos.set_setting('jobs.embed_identities', '$1'); COMMIT;" >/dev/null
    time_sql $db "UPDATE custos.identities SET department = department || 'x' WHERE user_id LIKE 'b%'"
  }
  ms_off=0; ms_on=0
  for _ in 1 2 3; do
    ms_off=$(awk -v a="$ms_off" -v b="$(update false)" 'BEGIN {print a + b}')
    ms_on=$(awk -v a="$ms_on" -v b="$(update true)" 'BEGIN {print a + b}')
  done
  report "identity updates, 3 x 20,000: with the queue trigger" "$ms_on" "ms" "without" "$ms_off"
  kill "$mock_pid" 2>/dev/null || true
}
