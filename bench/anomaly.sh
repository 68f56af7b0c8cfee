# Anomaly scoring: custos's Isolation Forest against scikit-learn's, measured in the same run.
#  - accuracy: mean AUC over seeds 1-10 on breastw, shuttle and satellite (Liu, Ting & Zhou 2008 /
#    ODDS, from Debian's r-cran-mlbench), custos.if_train + if_score_query next to scikit-learn's
#    IsolationForest(100 trees, 256 samples); goal: within 0.01;
#  - speed on 1,000,000 x 8 rows: if_train, if_score_query over the table (goals <= 1 s each, and
#    >= 5x scikit-learn's single-threaded score_samples), one if_score call (goal < 50 us);
#  - a labelled synthetic audit stream (10 tenants, a month, four kinds of injected incident):
#    train_anomaly_model and score_events per tenant, AUC per kind and precision at the top 1 %.
# Inputs (venv, data sets, stream) are made by bench/anomaly/setup.sh, idempotently.

ANOMALY_VENV=${ANOMALY_VENV:-/opt/custos/bench-venv}
ANOMALY_DATA=${ANOMALY_DATA:-/opt/custos}
ANOMALY_SEEDS=${ANOMALY_SEEDS:-10}
ANOMALY_SINCE=2026-10-02T00:00:00Z # the audit stream's month (audit_stream.py's defaults)
ANOMALY_UNTIL=2026-11-01T00:00:00Z

# anomaly_line LABEL VALUE [UNIT [NOTE]]: a line in report's columns, with free text after it.
anomaly_line() {
  printf '  %-58s %12s %-8s  %s\n' "$1" "$2" "${3:-}" "${4:-}"
}

# anomaly_ms DB SQL: time_sql, except that a failure stops the benchmark with the error shown
# (time_sql keeps only its NOTICE line).
anomaly_ms() {
  local ms
  ms=$(time_sql "$1" "$2") || true
  if [ -z "$ms" ]; then
    echo "anomaly: no timing from: $2" >&2
    cpsql -d "$1" -c "$2" >/dev/null # shows the error, if it is one
    return 1
  fi
  echo "$ms"
}

# anomaly_median3 DB SQL: the median of three anomaly_ms.
anomaly_median3() {
  local i v out=""
  for i in 1 2 3; do
    v=$(anomaly_ms "$1" "$2") || return 1
    out+="$v"$'\n'
  done
  median <<<"$out"
}

# anomaly_goal VALUE OP LIMIT UNIT: "goal OP LIMIT UNIT: met" or "... MISSED".
anomaly_goal() {
  awk -v v="$1" -v op="$2" -v g="$3" -v u="$4" 'BEGIN {
    ok = (op == "<=" ? v <= g : op == "<" ? v < g : op == ">=" ? v >= g : v > g)
    printf "goal %s %s%s: %s", op, g, u, (ok ? "met" : "MISSED") }'
}

# anomaly_times VALUE BASELINE: "Nx faster than" or "Nx slower than" (lower is faster).
anomaly_times() {
  awk -v v="$1" -v b="$2" 'BEGIN {
    if (v <= 0 || b <= 0) printf "?x against"; else if (v <= b) printf "%.1fx faster than", b / v; else printf "%.1fx slower than", v / b }'
}

# anomaly_columns CSV: "f1, f2, ..., fk" for the features of a CSV's header.
anomaly_columns() {
  head -1 "$1" | tr ',' '\n' | grep '^f' | paste -sd, - | sed 's/,/, /g'
}

# anomaly_load DB TABLE CSV: (re)creates TABLE (id, label if the CSV has it, features float8) and
# COPYs the CSV into it; prints the wall milliseconds of the COPY.
anomaly_load() {
  local db=$1 table=$2 csv=$3 cols defs t0 t1
  cols=$(anomaly_columns "$csv")
  defs=$(sed 's/\(f[0-9]*\)/\1 float8/g' <<<"$cols")
  if head -1 "$csv" | grep -q ',label,'; then defs="label int NOT NULL, $defs"; fi
  cpsql -d "$db" -c "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS $table" \
    -c "CREATE TABLE $table (id bigint PRIMARY KEY, $defs)"
  t0=$(date +%s%N)
  cpsql -d "$db" -c "\\copy $table FROM '$csv' WITH (FORMAT csv, HEADER true)"
  t1=$(date +%s%N)
  cpsql -d "$db" -c "VACUUM ANALYZE $table"
  echo $(((t1 - t0) / 1000000))
}

bench_anomaly() {
  local db=bench_anomaly here="$ROOT/bench/anomaly" py="$ANOMALY_VENV/bin/python" tmp
  local csv_dir="$ANOMALY_DATA/mlbench/csv" speed_csv="$ANOMALY_DATA/anomaly/speed.csv"
  local audit_dir="$ANOMALY_DATA/anomaly/audit"
  tmp=$(mktemp -d)
  echo "  inputs (bench/anomaly/setup.sh):"
  bash "$here/setup.sh" | sed 's/^/  /'
  bench_db $db
  if [ "$(cpsql -d $db -At -c "SELECT count(*) FROM pg_proc WHERE proname IN ('if_train', 'if_score_query',
        'if_score', 'train_anomaly_model', 'score_events') AND pronamespace = 'custos'::regnamespace")" != 5 ]; then
    echo "anomaly: custos with if_train, if_score_query, if_score, train_anomaly_model and score_events is not installed" >&2
    rm -rf "$tmp"
    return 1
  fi

  anomaly_accuracy
  anomaly_speed
  anomaly_audit
  rm -rf "$tmp"
}

# Mean AUC over seeds 1..ANOMALY_SEEDS, custos next to scikit-learn.
anomaly_accuracy() {
  local name model cols seed n sk sk_sd mine mine_sd out
  echo "  accuracy: mean AUC over seeds 1-$ANOMALY_SEEDS, 100 trees, 256 samples (scikit-learn single-threaded)"
  out=$("$py" "$here/sklearn_baseline.py" accuracy "$csv_dir" "$ANOMALY_SEEDS")
  for name in breastw shuttle satellite; do
    model=$name
    cols=$(anomaly_columns "$csv_dir/$name.csv")
    anomaly_load $db $name "$csv_dir/$name.csv" >/dev/null
    : >"$tmp/train_ms" ; : >"$tmp/score_ms"
    for seed in $(seq 1 "$ANOMALY_SEEDS"); do
      anomaly_ms $db "SELECT custos.if_train('$model', 'SELECT $cols FROM $name ORDER BY id', 100, 256, $seed)" >>"$tmp/train_ms"
      # Rows are numbered 1..n in the query's order, which is id's.
      cpsql -d $db -At -c "SELECT t.label, s.score
          FROM custos.if_score_query('$model', 'SELECT $cols FROM $name ORDER BY id') s
          JOIN $name t ON t.id = s.row_number" >"$tmp/$name.$seed"
      n=$(wc -l <"$tmp/$name.$seed")
      [ "$n" = "$(cpsql -d $db -At -c "SELECT count(*) FROM $name")" ] \
        || { echo "anomaly: if_score_query on $name gave $n rows that join the table" >&2; return 1; }
    done
    anomaly_ms $db "SELECT count(*) FROM custos.if_score_query('$model', 'SELECT $cols FROM $name ORDER BY id')" >"$tmp/score_ms"
    read -r sk sk_sd < <(awk -v n=$name '$1 == "auc" && $2 == n {print $3, $4}' <<<"$out")
    mine=$("$py" "$here/evaluate.py" auc $(for s in $(seq 1 "$ANOMALY_SEEDS"); do echo "$tmp/$name.$s"; done) | awk '{print $2, $3}')
    read -r mine mine_sd <<<"$mine"
    echo "  $name ($(cpsql -d $db -At -c "SELECT count(*) || ' rows, ' || sum(label) || ' anomalies' FROM $name"), $(tr -cd ',' <<<"$cols" | wc -c | awk '{print $1 + 1}') features)"
    anomaly_line "scikit-learn IsolationForest, mean AUC (sd $sk_sd)" "$sk" ""
    anomaly_line "custos if_train + if_score_query, mean AUC (sd $mine_sd)" "$mine" "" \
      "$(awk -v a="$mine" -v b="$sk" 'BEGIN {d = a - b; printf "%+.4f vs scikit-learn; goal within 0.01: %s", d, (d <= 0.01 && d >= -0.01 ? "met" : "MISSED")}')"
    anomaly_line "  if_train (median of $ANOMALY_SEEDS), if_score_query" "$(median <"$tmp/train_ms")" "ms" "if_score_query $(cat "$tmp/score_ms") ms"
  done
}

# 1,000,000 x 8: training, scoring the table, one call.
anomaly_speed() {
  local cols ms load_ms sk fit_s score_s one_us train_ms score_ms scan_ms deform_ms loop_ms base_ms
  cols=$(anomaly_columns "$speed_csv")
  echo "  speed: 1,000,000 rows x 8 (99 % N(0, I), 1 % uniform on [-6, 6]), 100 trees, 256 samples"
  load_ms=$(anomaly_load $db speed "$speed_csv")
  anomaly_line "COPY the table in (\\copy from CSV)" "$load_ms" "ms"
  # scikit-learn while the server is idle; single-threaded, OpenBLAS' kernel overrides left out.
  sk=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$py" "$here/sklearn_baseline.py" speed "$speed_csv")
  fit_s=$(awk '$1 == "sklearn_fit_s" {print $2}' <<<"$sk")
  score_s=$(awk '$1 == "sklearn_score_s" {print $2}' <<<"$sk")
  one_us=$(awk '$1 == "sklearn_score_one_us" {print $2}' <<<"$sk")
  local fit_ms score_sk_ms
  fit_ms=$(awk -v s="$fit_s" 'BEGIN {printf "%.0f", s * 1000}')
  score_sk_ms=$(awk -v s="$score_s" 'BEGIN {printf "%.0f", s * 1000}')

  train_ms=$(anomaly_median3 $db "SELECT custos.if_train('speed', 'SELECT $cols FROM speed', 100, 256, 1)")
  score_ms=$(anomaly_median3 $db "SELECT count(*) FROM custos.if_score_query('speed', 'SELECT $cols FROM speed')")
  scan_ms=$(anomaly_median3 $db "SELECT count(*) FROM (SELECT $cols FROM speed) s")
  deform_ms=$(anomaly_median3 $db "SELECT count(*) FROM speed WHERE ($(sed 's/, / + /g' <<<"$cols")) IS NOT NULL")

  anomaly_line "scikit-learn fit (single-threaded, median of 3)" "$fit_ms" "ms"
  anomaly_line "custos.if_train (median of 3)" "$train_ms" "ms" \
    "$(awk -v a="$train_ms" -v b="$fit_ms" 'BEGIN {printf "%.2fx scikit-learn fit", (b > 0 ? a / b : 0)}'); $(anomaly_goal "$train_ms" "<=" 1000 " ms")"
  anomaly_line "scikit-learn score_samples, all rows (median of 3)" "$score_sk_ms" "ms"
  anomaly_line "custos.if_score_query, all rows, count(*) (median of 3)" "$score_ms" "ms" \
    "$(anomaly_times "$score_ms" "$score_sk_ms") scikit-learn; $(anomaly_goal "$score_ms" "<=" 1000 " ms"); $(anomaly_goal "$(awk -v a="$score_ms" -v b="$score_sk_ms" 'BEGIN {printf "%.2f", (a > 0 ? b / a : 0)}')" ">=" 5 x)"
  anomaly_line "  floor: count(*) of the same query (no column read)" "$scan_ms" "ms"
  anomaly_line "  floor: the 8 columns read (sum IS NOT NULL)" "$deform_ms" "ms"

  # One call: a plpgsql loop of 100,000 if_score calls on varying rows, divided by 100,000 (the
  # loop alone, building the same arrays, is shown next to it). The DO blocks end in "$d$ ", not
  # "$d$": time_sql wraps the SQL in $q$...$q$ inside DO $$...$$, and "$d$$q$" would hold "$$".
  local body="x := (i % 1000) * 0.006 - 3;"
  local arr="ARRAY[x, -x, 0.5 * x, 1 - x, x * x - 2, 0.25 * x, -0.5 * x, x + 0.1]::float8[]"
  loop_ms=$(anomaly_ms $db "DO \$d\$ DECLARE s float8 := 0; x float8; BEGIN FOR i IN 1..100000 LOOP $body
      s := s + custos.if_score('speed', $arr); END LOOP;
      IF s IS NULL THEN RAISE EXCEPTION 'if_score gave NULL'; END IF; END \$d\$ ")
  base_ms=$(anomaly_ms $db "DO \$d\$ DECLARE s float8 := 0; x float8; BEGIN FOR i IN 1..100000 LOOP $body
      s := s + array_length($arr, 1); END LOOP; END \$d\$ ")
  anomaly_line "scikit-learn score_samples on one row (median of 200)" "$one_us" "us"
  anomaly_line "custos.if_score, one row (100,000 calls in a plpgsql loop)" \
    "$(awk -v ms="$loop_ms" 'BEGIN {printf "%.2f", ms * 1000 / 100000}')" "us" \
    "$(anomaly_times "$(awk -v ms="$loop_ms" 'BEGIN {print ms * 1000 / 100000}')" "$one_us") scikit-learn; $(anomaly_goal "$(awk -v ms="$loop_ms" 'BEGIN {printf "%.2f", ms * 1000 / 100000}')" "<" 50 " us")"
  anomaly_line "  the loop alone, same arrays, no call" "$(awk -v ms="$base_ms" 'BEGIN {printf "%.2f", ms * 1000 / 100000}')" "us"
}

# The labelled audit stream: record it, train and score each tenant, judge against the labels.
anomaly_audit() {
  local f tenant events=0 t0 t1 want got out first=1
  local since="'$ANOMALY_SINCE'::timestamptz" until="'$ANOMALY_UNTIL'::timestamptz"
  echo "  synthetic audit stream: 10 tenants, $ANOMALY_SINCE to $ANOMALY_UNTIL, injected incidents labelled"
  t0=$(date +%s%N)
  for f in "$audit_dir"/*.jsonl; do
    tenant=$(basename "$f" .jsonl)
    "$py" "$here/batches.py" sql "$tenant" "$f" 2000 | cpsql -d $db >/dev/null
    events=$((events + $(wc -l <"$f")))
  done
  t1=$(date +%s%N)
  anomaly_line "record_events, 2,000 a transaction ($events events)" \
    "$(awk -v n=$events -v ns=$((t1 - t0)) 'BEGIN {printf "%.0f", n / (ns / 1e9)}')" "events/s"
  # seq i of each tenant must be line i of its file, or the labels would not line up.
  for f in "$audit_dir"/*.jsonl; do
    tenant=$(basename "$f" .jsonl)
    want="$(wc -l <"$f") $("$py" "$here/batches.py" fingerprint "$f")"
    got=$(cpsql -d $db -At -c "SELECT count(*) || ' ' || md5(string_agg(action || '|' || coalesce(entity_id, ''), E'\\n' ORDER BY seq))
            FROM custos.events WHERE tenant_id = '$tenant' AND seq BETWEEN 1 AND (SELECT count(*) FROM custos.events WHERE tenant_id = '$tenant')")
    [ "$want" = "$got" ] || { echo "anomaly: tenant $tenant's events are not its file in order (want $want, got $got)" >&2; return 1; }
  done

  cpsql -d $db -c "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS audit_scores" \
    -c "CREATE TABLE audit_scores (tenant uuid, seq bigint, score float8)"
  : >"$tmp/audit_times"
  for f in "$audit_dir"/*.jsonl; do
    tenant=$(basename "$f" .jsonl)
    out=$(cpsql -d $db -At -c "DO \$\$ DECLARE t0 timestamptz; info jsonb; BEGIN
        PERFORM custos.set_tenant('$tenant');
        t0 := clock_timestamp();
        SELECT jsonb_agg(to_jsonb(m)) INTO info FROM custos.train_anomaly_model($since, $until) m;
        RAISE NOTICE 'train-ms % %', round(extract(epoch FROM clock_timestamp() - t0) * 1000, 2), left(info::text, 300);
        t0 := clock_timestamp();
        INSERT INTO audit_scores SELECT '$tenant', s.seq, s.score FROM custos.score_events($since, $until) s;
        RAISE NOTICE 'score-ms %', round(extract(epoch FROM clock_timestamp() - t0) * 1000, 2);
      END \$\$" 2>&1) || { echo "$out" >&2; return 1; }
    echo "$out" | sed -n 's/^NOTICE: *train-ms \([0-9.]*\) .*/train \1/p; s/^NOTICE: *score-ms //p' \
      | paste -sd' ' - >>"$tmp/audit_times"
    if [ -n "$first" ]; then
      first=
      echo "  train_anomaly_model's answer for tenant $tenant: $(echo "$out" | sed -n 's/^NOTICE: *train-ms [0-9.]* //p')"
    fi
  done
  cpsql -d $db -At -c "SELECT tenant, seq, score FROM audit_scores" >"$tmp/audit_scores"
  out=$("$py" "$here/evaluate.py" audit "$audit_dir" "$tmp/audit_scores")
  anomaly_line "train_anomaly_model per tenant (median of 10; max)" "$(awk '{print $2}' "$tmp/audit_times" | median)" "ms" \
    "max $(awk '{print $2}' "$tmp/audit_times" | sort -n | tail -1) ms"
  anomaly_line "score_events per tenant, ~11,000 events (median of 10; max)" "$(awk '{print $3}' "$tmp/audit_times" | median)" "ms" \
    "max $(awk '{print $3}' "$tmp/audit_times" | sort -n | tail -1) ms"
  awk '$1 == "unscored" {printf "  WARNING: %s labelled events got no score from score_events (left out)\n", $2}' <<<"$out"
  echo "  per injected kind, pooled over tenants: AUC against normal events; how many in their tenant's top 1 %"
  awk '$1 == "kind" {printf "  %-58s %12s %-8s  %d of %d in the top 1 %%\n", "  " $2, $3, "AUC", $4, $5}' <<<"$out"
  awk '$1 == "auc_all" {printf "  %-58s %12s %-8s\n", "  any injected kind", $2, "AUC"}' <<<"$out"
  awk '$1 == "precision_top1" {printf "  %-58s %12s %-8s  %d of %d; at most %s with this many incidents\n",
    "precision at the top 1 % of scores (per tenant, pooled)", $2, "", $3, $4, $5}' <<<"$out"
}
