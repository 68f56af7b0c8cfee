# Throwaway PostgreSQL clusters for the demo, the integration tests and the benchmarks: 15 unless
# PG_BIN names another major's programs (scripts/test.sh runs the integration tests on 18 too).
# Source this file, then `cluster_start [extra postgresql.conf lines...]`; the cluster listens only
# on a Unix socket in its own directory (no TCP port to collide with), and is stopped and removed
# when the calling script exits.
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

cluster_start() {
  CLUSTER_DIR=$(mktemp -d /tmp/custos-cluster-XXXXXX)
  chown postgres: "$CLUSTER_DIR"
  chmod 700 "$CLUSTER_DIR"
  runuser -u postgres -- "$PG_BIN/initdb" -D "$CLUSTER_DIR/data" -U postgres --auth=trust \
    -E UTF8 --locale=C.UTF-8 >"$CLUSTER_DIR/initdb.log" 2>&1 \
    || { cat "$CLUSTER_DIR/initdb.log" >&2; return 1; }
  {
    echo "listen_addresses = ''"
    echo "unix_socket_directories = '$CLUSTER_DIR'"
    echo "port = 5432"
    echo "max_connections = 100"
    echo "shared_buffers = 512MB"
    echo "fsync = on"
    for line in "$@"; do echo "$line"; done
  } >>"$CLUSTER_DIR/data/postgresql.conf"
  trap cluster_stop EXIT
  # Started without RUST_BACKTRACE unless CLUSTER_ENV says otherwise (the integration tests set it
  # on purpose: custos must keep backtraces out of error DETAILs whatever the environment).
  env -u RUST_BACKTRACE ${CLUSTER_ENV:-} runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" \
    -l "$CLUSTER_DIR/server.log" -w start >/dev/null \
    || { cat "$CLUSTER_DIR/server.log" >&2; return 1; }
  export PGHOST="$CLUSTER_DIR" PGPORT=5432 PGUSER=postgres
}

cluster_restart() {
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -l "$CLUSTER_DIR/server.log" -w restart -m fast >/dev/null
}

cluster_stop() {
  [ -n "${CLUSTER_DIR:-}" ] || return 0
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$CLUSTER_DIR"
  CLUSTER_DIR=
}

# psql with the settings every script wants: stop at the first error, quiet, no psqlrc.
cpsql() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }

# Builds and installs the extension into the PostgreSQL of $PG_BIN. PROFILE=release for the demo
# and benchmarks.
install_extension() {
  local profile_flag=()
  [ "${PROFILE:-debug}" = release ] && profile_flag=(--release)
  local log
  log=$(mktemp)
  (cd "$ROOT" && CC=clang cargo pgrx install "${profile_flag[@]}" --pg-config "$PG_BIN/pg_config" >"$log" 2>&1) \
    || { cat "$log" >&2; rm -f "$log"; return 1; }
  rm -f "$log"
  # Earlier releases' install scripts (frozen), so that an upgrade from each can be tested;
  # cargo pgrx installs the current version's script and the upgrade scripts itself.
  cp "$ROOT"/sql/releases/custos--*.sql "$("$PG_BIN/pg_config" --sharedir)/extension/"
}
