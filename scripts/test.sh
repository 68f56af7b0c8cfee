#!/usr/bin/env bash
# Sets up what is missing, then runs every test: formatting and lints, unit and property tests,
# in-database #[pg_test]s, and integration tests against a live server.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PGRX_HOME="$ROOT/pgrx-config" PATH="$HOME/.cargo/bin:$PATH"
unset RUST_BACKTRACE
bash "$ROOT/scripts/setup.sh" --pg18
source "$ROOT/scripts/lib/cluster.sh"
cd "$ROOT"

step() { printf '\n== %s\n' "$*"; }
# Every cargo test run's output also goes to a log, for the totals printed at the end.
RESULTS=$(mktemp)

step "rustfmt (the workspace, the integration tests, the fuzz targets, and the in-database tests"
# that are pulled in with include!, which cargo fmt does not reach)"
cargo fmt --check
(cd tests/integration && cargo fmt --check)
cargo fmt --check --manifest-path fuzz/Cargo.toml
rustfmt --edition 2021 --check src/*/db_tests.rs

step "clippy (-D warnings), for PostgreSQL 15 and 18, and the pure core"
cargo clippy --quiet --features "pg15 pg_test" --tests -- -D warnings
cargo clippy --quiet -p custos-core --tests -- -D warnings
(cd tests/integration && cargo clippy --quiet --tests -- -D warnings)
CC=clang cargo clippy --quiet --no-default-features --features "pg18 pg_test" --tests -- -D warnings

# The fuzz targets (scripts/fuzz.sh runs them) use custos-core: they must at least compile.
step "fuzz targets compile, clippy-clean"
cargo clippy --quiet --manifest-path fuzz/Cargo.toml --bins -- -D warnings

step "unit and property tests of the pure core (custos-core)"
cargo test -p custos-core 2>&1 | tee -a "$RESULTS"

step "unit, property and in-database tests (cargo pgrx test)"
PGRX_TEST_DATA=$(mktemp -d /tmp/custos-pgtest-XXXXXX)
chown postgres: "$PGRX_TEST_DATA"
trap 'rm -rf "$PGRX_TEST_DATA"' EXIT
cargo pgrx test pg15 --runas postgres --pgdata "$PGRX_TEST_DATA/data" 2>&1 | tee -a "$RESULTS"
rm -rf "$PGRX_TEST_DATA"

step "the same in-database tests on PostgreSQL 18 (cargo pgrx test pg18)"
# The integration tests below run on PostgreSQL 15; on 18 the whole in-database suite runs, which
# builds, installs and exercises every function in a PostgreSQL 18 cluster.
PGRX_TEST_DATA=$(mktemp -d /tmp/custos-pgtest-XXXXXX)
chown postgres: "$PGRX_TEST_DATA"
CC=clang cargo pgrx test pg18 --runas postgres --pgdata "$PGRX_TEST_DATA/data" 2>&1 | tee -a "$RESULTS"
rm -rf "$PGRX_TEST_DATA"

# Integration tests against a live server, on each major: PostgreSQL 15, then 18.
# track_commit_timestamp lets same-tenant writers commit without waiting for each other's flush
# (src/ledger/head.rs). A synchronous standby that never answers lets a test hold one commit
# between its WAL record and its visibility: sessions commit with synchronous_commit = local
# unless a test asks for the standby. Preloaded, as the README recommends (the security tests need
# custos' settings defined in every session); RUST_BACKTRACE on, which custos must keep out of
# error DETAILs; wal_level = logical for the logical-replication test.
integration() {
  step "integration tests against a live PostgreSQL $1 server"
  PG_BIN=$2
  install_extension
  step "golden SQL tests of the public surface on PostgreSQL $1 (pg_regress)"
  PG_BIN=$PG_BIN SKIP_INSTALL=1 bash "$ROOT/scripts/regress.sh"
  step "integration tests against a live PostgreSQL $1 server (continued)"
  CLUSTER_ENV="RUST_BACKTRACE=1" cluster_start "max_prepared_transactions = 10" "track_commit_timestamp = on" \
    "synchronous_standby_names = 'custos_absent_standby'" "synchronous_commit = local" \
    "shared_preload_libraries = 'custos'" "wal_level = logical"
  CUSTOS_TEST_HOST="$PGHOST" CUSTOS_TEST_PGDATA="$CLUSTER_DIR/data" CUSTOS_TEST_PG_BIN="$PG_BIN" \
    cargo test --manifest-path tests/integration/Cargo.toml --tests -- --test-threads=4 2>&1 | tee -a "$RESULTS"
  cluster_stop
}
integration 15 /usr/lib/postgresql/15/bin
integration 18 "$(dirname "$(PGRX_HOME=$PGRX_HOME cargo pgrx info pg-config pg18)")"

step "totals"
awk '/^test result:/ {for (i = 1; i <= NF; i++) {if ($i ~ /^passed;?$/) p += $(i - 1); if ($i ~ /^failed;?$/) f += $(i - 1)}}
     END {printf "%d passed, %d failed\n", p, f}' "$RESULTS"
rm -f "$RESULTS"
