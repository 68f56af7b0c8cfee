# Dormant identities at scale: 1,000,000 accounts over 100 tenants, and one tenant with 1,000,000.
# First page and a deep page (skip 9,000) as median latency; the full summary; against a baseline
# measured in the same run that scores every account at query time and sorts (no stored key).

# median_latency_ms DB SCRIPT: median per-transaction latency of SCRIPT run for BENCH_SECONDS.
median_latency_ms() {
  local dir
  dir=$(mktemp -d)
  chmod 777 "$dir"
  (cd "$dir" && pgbench -n -U bench_app -c 1 -T "$BENCH_SECONDS" -l --log-prefix="$dir/lat" -f "$2" "$1" >/dev/null 2>&1) \
    || { echo "pgbench failed on $2" >&2; return 1; }
  cat "$dir"/lat* | awk '{print $3 / 1000}' | median
  rm -rf "$dir"
}

bench_dormant() {
  local db=bench_dormant tmp ms
  tmp=$(mktemp -d)
  bench_db $db
  cpsql -d $db -c "DO \$\$ BEGIN CREATE ROLE bench_app LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$;
                   GRANT custos_reader TO bench_app" >/dev/null
  local many="format('00000000-0000-4000-8000-%s', lpad((g % 100)::text, 12, '0'))::uuid"
  local big="'00000000-0000-4000-8000-0000000b1900'::uuid"
  ms=$(time_sql $db "$(dormant_load_sql "$many" 1000000 m)")
  report "load 1,000,000 identities over 100 tenants (INSERT, derive trigger)" "$(awk -v ms="$ms" 'BEGIN {printf "%.0f", 1000000 / (ms / 1000)}')" "rows/s"
  ms=$(time_sql $db "$(dormant_load_sql "$big" 1000000 b)")
  report "load 1,000,000 identities into one tenant" "$(awk -v ms="$ms" 'BEGIN {printf "%.0f", 1000000 / (ms / 1000)}')" "rows/s"
  ms=$(time_sql $db "SELECT custos.set_tenant('$(echo "$big" | cut -d"'" -f2)'); SELECT custos.refresh_peer_scores()")
  report "refresh_peer_scores of the 1,000,000-account tenant" "$ms" "ms"
  cpsql -d $db -c "VACUUM ANALYZE custos.identities" >/dev/null
  ms=$(time_sql $db "SELECT custos.set_tenant('00000000-0000-4000-8000-000000000077');
    SELECT custos.upsert_identities((SELECT jsonb_agg(jsonb_build_object('user_id', 'u' || g, 'department', 'd' || g % 9,
      'last_active_at', now() - g * interval '1 hour')) FROM generate_series(1, 10000) g))")
  report "upsert_identities of 10,000 accounts in one call" "$ms" "ms"

  local t_small="00000000-0000-4000-8000-000000000042" t_big
  t_big=$(echo "$big" | cut -d"'" -f2)
  for shape in small big; do
    local t label
    if [ $shape = small ]; then t=$t_small; label="10,000-account tenant (of 100)"; else t=$t_big; label="1,000,000-account tenant"; fi
    printf 'BEGIN;\nSELECT custos.set_tenant(%s);\nSELECT * FROM custos.dormant_users();\nCOMMIT;\n' "'$t'" >"$tmp/first.sql"
    printf 'BEGIN;\nSELECT custos.set_tenant(%s);\nSELECT * FROM custos.dormant_users(skip => 9000);\nCOMMIT;\n' "'$t'" >"$tmp/deep.sql"
    printf 'BEGIN;\nSELECT custos.set_tenant(%s);\nSELECT i.user_id, x.* FROM custos.identities i, custos.explain_risk(i.is_privileged, i.last_active_at IS NULL, i.is_service_account, i.mfa_enabled, i.has_valid_credentials, i.status, i.peer_score, extract(epoch FROM now() - coalesce(i.last_active_at, i.created_at)) / 86400, i.threshold_days) x WHERE i.tenant_id = %s AND i.dormant_at <= now() ORDER BY x.risk_score DESC, i.user_id DESC LIMIT 50;\nCOMMIT;\n' "'$t'" "'$t'" >"$tmp/naive.sql"
    local first deep naive
    first=$(median_latency_ms $db "$tmp/first.sql")
    deep=$(median_latency_ms $db "$tmp/deep.sql")
    naive=$(median_latency_ms $db "$tmp/naive.sql")
    echo "  $label"
    report "first page, scored at query time and sorted (baseline)" "$naive" "ms"
    report_faster "first page, custos.dormant_users() (median)" "$first" "baseline" "$naive"
    report_faster "deep page, skip 9,000 (median)" "$deep" "baseline" "$naive"
  done
  ms=$(time_sql $db "SELECT custos.set_tenant('$t_big'); SELECT count(*) FROM custos.dormant_summary()")
  report "dormant_summary() of the 1,000,000-account tenant, first call" "$ms" "ms"
  for i in 1 2 3; do
    time_sql $db "SELECT custos.set_tenant('$t_big'); SELECT count(*) FROM custos.dormant_summary()" >>"$tmp/summary"
    echo >>"$tmp/summary"
  done
  report "dormant_summary() of the 1,000,000-account tenant (median of 3)" "$(median <"$tmp/summary")" "ms"
  cpsql -d $db -At -c "SELECT '  table ' || pg_size_pretty(pg_relation_size('custos.identities')) || ', risk index ' ||
      pg_size_pretty(pg_relation_size('custos.identities_risk')) || ', dormant_at index ' ||
      pg_size_pretty(pg_relation_size('custos.identities_dormant_at')) || ', summary index ' ||
      pg_size_pretty(pg_relation_size('custos.identities_summary')) || ', primary key ' ||
      pg_size_pretty(pg_relation_size('custos.identities_pkey'))"
  echo "  plan of the first page (1,000,000-account tenant):"
  cpsql -d $db -At -c "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT i.* FROM custos.identities i
      WHERE i.tenant_id = '$t_big' AND i.dormant_at <= now() ORDER BY i.risk_key DESC, i.user_id DESC OFFSET 0 LIMIT 50" | sed 's/^/    /'
  rm -rf "$tmp"
}

dormant_load_sql() { # TENANT_EXPR ROWS USER_PREFIX
  cat <<SQL
INSERT INTO custos.identities (tenant_id, user_id, email, display_name, source, status, is_privileged,
       is_service_account, mfa_enabled, has_valid_credentials, department, created_at, last_active_at)
SELECT $1, '$3' || g, '$3' || g || '@example.com', 'User ' || g,
       (ARRAY['entra', 'okta', 'google', 'local'])[1 + g % 4],
       (ARRAY['active', 'active', 'active', 'suspended', 'deprovisioned', 'provisioned'])[1 + g % 6],
       g % 50 = 0, g % 40 = 0, g % 3 <> 0, g % 5 <> 0, 'dept-' || (g % 30),
       now() - interval '900 days',
       CASE WHEN g % 17 = 0 THEN NULL ELSE now() - (g % 730) * interval '1 day' - (g % 1440) * interval '1 minute' END
  FROM generate_series(1, $2) g
SQL
}
