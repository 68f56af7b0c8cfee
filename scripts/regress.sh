#!/usr/bin/env bash
# Golden SQL tests of the public surface (pg_regress): tests/pg_regress/sql/*.sql run in order
# against a throwaway cluster, and their output must equal tests/pg_regress/expected/*.out.
#   bash scripts/regress.sh            run them (scripts/test.sh does, on each major)
#   bash scripts/regress.sh --accept   write the current output as the expected one (review it!)
# PG_BIN chooses the major (default 15); SKIP_INSTALL=1 when custos is installed already.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PGRX_HOME="$ROOT/pgrx-config" PATH="$HOME/.cargo/bin:$PATH"
source "$ROOT/scripts/lib/cluster.sh"
TESTS=(setup tenancy ledger capture dormant protection anomaly insights jobs)
[ "${SKIP_INSTALL:-0}" = 1 ] || install_extension
cluster_start "shared_preload_libraries = 'custos'"
cpsql -d postgres -c "CREATE DATABASE custos_regress" >/dev/null
out=$(mktemp -d /tmp/custos-regress-XXXXXX)
cp -r "$ROOT/tests/pg_regress/sql" "$ROOT/tests/pg_regress/expected" "$out/"
chown -R postgres: "$out"
status=0
runuser -u postgres -- "$("$PG_BIN/pg_config" --pkglibdir)/pgxs/src/test/regress/pg_regress" \
  --use-existing --bindir="$PG_BIN" --host="$PGHOST" --port="$PGPORT" --user=postgres --dbname=custos_regress \
  --inputdir="$out" --outputdir="$out" "${TESTS[@]}" || status=$?
if [ "${1:-}" = --accept ]; then
  for t in "${TESTS[@]}"; do cp "$out/results/$t.out" "$ROOT/tests/pg_regress/expected/$t.out"; done
  echo "accepted: tests/pg_regress/expected/*.out"
elif [ "$status" != 0 ]; then
  cat "$out/regression.diffs" 2>/dev/null || true
fi
rm -rf "$out"
[ "${1:-}" = --accept ] || exit "$status"
