# Helpers for benchmarks. Each bench/<name>.sh defines bench_<name>, which prints its own lines
# through `report`.

BENCH_SECONDS=${BENCH_SECONDS:-5}

# bench_db NAME: a fresh database with custos installed.
bench_db() {
  cpsql -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" \
    -c "CREATE DATABASE $1" >/dev/null
  cpsql -d "$1" -c "CREATE EXTENSION custos CASCADE" >/dev/null 2>&1
}

# bench_warm_up: brings a new cluster to the state of one that has been writing for a while, so
# that no contender pays for what only a fresh cluster costs. Every shared buffer is written once
# (the kernel zero-fills a page of shared memory the first time it is touched: 4-5x as often per
# row for a contender that writes 4-5x the bytes), and WAL segments of min_wal_size are made in
# advance (a new segment is zero-filled and fsynced in the foreground by whoever needs it, 16 MB
# at a time: again in proportion to the WAL a contender writes). Written through a table of
# shared_buffers' size, with WAL, then dropped; the checkpoint recycles the segments.
bench_warm_up() {
  cpsql -d postgres -q -c "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS bench_warm_up" \
    -c "CREATE TABLE bench_warm_up (pad text)" -c "ALTER TABLE bench_warm_up ALTER pad SET STORAGE PLAIN" \
    -c "INSERT INTO bench_warm_up SELECT repeat('x', 1900)
          FROM generate_series(1, pg_size_bytes(current_setting('shared_buffers')) / 1950)" \
    -c "DROP TABLE bench_warm_up" -c "CHECKPOINT" >/dev/null
}

# bench_restart_with [SETTING ...]: restarts the cluster with these settings on top of its own
# (none: as it started), then warms it up again (a restart gives back shared memory).
bench_restart_with() {
  cpsql -d postgres -q -c "ALTER SYSTEM RESET ALL" >/dev/null
  local line
  for line in "$@"; do
    cpsql -d postgres -q -c "ALTER SYSTEM SET ${line%% =*} = ${line#*= }" >/dev/null
  done
  cluster_restart
  bench_warm_up
}

# pgbench_tps DB USER CLIENTS SCRIPT_FILE [extra pgbench args]: transactions per second.
pgbench_tps() {
  local db=$1 user=$2 clients=$3 script=$4; shift 4
  pgbench -n -U "$user" -c "$clients" -j "$clients" -T "$BENCH_SECONDS" -f "$script" "$@" "$db" 2>&1 \
    | awk '/^tps = / {printf "%.0f", $3; found=1} END {if (!found) exit 1}'
}

# time_sql DB SQL: wall milliseconds of one statement, measured by the server's clock.
time_sql() {
  cpsql -d "$1" -At -c "DO \$\$ DECLARE t0 timestamptz := clock_timestamp(); BEGIN EXECUTE \$q\$$2\$q\$;
    RAISE NOTICE 'bench-ms %', round(extract(epoch FROM clock_timestamp() - t0) * 1000, 2); END \$\$" 2>&1 \
    | sed -n 's/^NOTICE: *bench-ms //p'
}

# backend_peak_kb DB SQL: peak private memory (kB) of the backend that ran SQL: its peak resident
# set (VmHWM) less the shared buffers it has mapped (RssShmem), which grow with what it read, not
# with what it holds.
backend_peak_kb() {
  cpsql -d "$1" -At -c "$2" -c "SELECT (regexp_match(s, 'VmHWM:\s+(\d+)'))[1]::int - (regexp_match(s, 'RssShmem:\s+(\d+)'))[1]::int
    FROM pg_read_file('/proc/' || pg_backend_pid() || '/status') s" | tail -1
}

# time_pgbench_ms DB SCRIPT TRANSACTIONS: wall milliseconds of running SCRIPT that many times, 1 client.
time_pgbench_ms() {
  local start end
  start=$(date +%s.%N)
  pgbench -n -U postgres -c 1 -t "$3" -f "$2" "$1" >/dev/null 2>&1 || { echo "pgbench failed on $2" >&2; return 1; }
  end=$(date +%s.%N)
  awk -v s="$start" -v e="$end" 'BEGIN {printf "%.0f", (e - s) * 1000}'
}

# interleaved FN CONTENDER...: this machine's timings drift between runs (by up to 40% within
# minutes), so the contenders take turns, ROUNDS rounds (default 3) of `FN contender` each (FN
# prints one number). MEDIAN[contender] holds each one's median, ROUND_VALUES[contender] the
# values of every round, for ratios taken within a round (see report_paired). Each measurement
# starts after a CHECKPOINT: otherwise the buffers one contender dirtied are written out, by a
# checkpoint or the background writer, during whichever contender runs next.
declare -A MEDIAN ROUND_VALUES
interleaved() {
  local fn=$1 round c
  shift
  for c in "$@"; do ROUND_VALUES[$c]=""; done
  for round in $(seq 1 "${ROUNDS:-3}"); do
    for c in "$@"; do
      cpsql -d postgres -c "CHECKPOINT" >/dev/null
      ROUND_VALUES[$c]+="$("$fn" "$c") "
    done
  done
  for c in "$@"; do MEDIAN[$c]=$(tr ' ' '\n' <<<"${ROUND_VALUES[$c]}" | median); done
}

# report_paired LABEL CONTENDER UNIT BASE_LABEL BASE_CONTENDER: the contender's median, and the
# median of its ratio to the baseline measured next to it in each round (drift cancels out),
# with every round's ratio.
report_paired() {
  awk -v l="$1" -v v="${MEDIAN[$2]}" -v u="$3" -v bl="$4" -v bv="${MEDIAN[$5]}" \
      -v cs="${ROUND_VALUES[$2]}" -v bs="${ROUND_VALUES[$5]}" 'BEGIN {
    n = split(cs, c, " "); split(bs, b, " ")
    for (i = 1; i <= n; i++) r[i] = (b[i] > 0 ? c[i] / b[i] : 0)
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (r[j] < r[i]) { t = r[i]; r[i] = r[j]; r[j] = t }
    rounds = ""
    for (i = 1; i <= n; i++) rounds = rounds sprintf("%s%.2f", (i > 1 ? " " : ""), c[i] / (b[i] > 0 ? b[i] : 1))
    printf "  %-58s %12s %-8s  %.2fx %s (%s; rounds: %s)\n", l, v, u, r[int((n + 1) / 2)], bl, bv, rounds
  }'
}

# rows_per_second DB SCRIPT TRANSACTIONS ROWS_PER_TRANSACTION: rows/s of running SCRIPT, 1 client.
rows_per_second() {
  local ms
  ms=$(time_pgbench_ms "$1" "$2" "$3") || return 1
  awk -v ms="$ms" -v n="$3" -v r="$4" 'BEGIN {printf "%.0f", n * r / (ms / 1000)}'
}

# median: the median of the numbers on standard input, one a line.
median() {
  sort -n | awk 'NF {a[++n] = $1} END {if (n) print a[int((n + 1) / 2)]}'
}

# report_faster LABEL MS BASELINE_LABEL BASELINE_MS: a latency, with how many times faster than the baseline.
report_faster() {
  awk -v l="$1" -v v="$2" -v bl="$3" -v bv="$4" \
    'BEGIN {printf "  %-58s %12s %-8s  %.0fx faster than %s (%s ms)\n", l, v, "ms", (v > 0 ? bv / v : 0), bl, bv}'
}

# report LABEL VALUE UNIT [BASELINE_LABEL BASELINE_VALUE]: one line, with the ratio if a baseline is given.
report() {
  if [ $# -ge 5 ]; then
    awk -v l="$1" -v v="$2" -v u="$3" -v bl="$4" -v bv="$5" \
      'BEGIN {printf "  %-58s %12s %-8s  %.2fx %s (%s)\n", l, v, u, (bv > 0 ? v / bv : 0), bl, bv}'
  else
    printf '  %-58s %12s %s\n' "$1" "$2" "$3"
  fi
}
