#!/usr/bin/env bash
# Benchmarks: `bash bench/run.sh [name ...]` (default: all). Starts its own cluster with a release
# build, runs each named benchmark from bench/<name>.sh, and prints figures with the ratio against
# a baseline measured in the same run. Not part of the test run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PGRX_HOME="$ROOT/pgrx-config" PATH="$HOME/.cargo/bin:$PATH"
bash "$ROOT/scripts/setup.sh" >/dev/null
source "$ROOT/scripts/lib/cluster.sh"
source "$ROOT/bench/lib.sh"

names=("$@")
if ((${#names[@]} == 0)); then
  for f in "$ROOT"/bench/*.sh; do
    n=$(basename "$f" .sh)
    [[ $n == run || $n == lib ]] || names+=("$n")
  done
fi
for n in "${names[@]}"; do
  [ -f "$ROOT/bench/$n.sh" ] || { echo "no benchmark named '$n' (see bench/*.sh)" >&2; exit 2; }
done

echo "[bench] building custos (release)"
PROFILE=release install_extension
cluster_start "shared_preload_libraries = 'custos'" "synchronous_commit = on" "track_commit_timestamp = on" "min_wal_size = 2GB" "max_wal_size = 4GB" "checkpoint_timeout = 30min" "shared_buffers = 2GB"
bench_warm_up
echo "[bench] $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(psql -XAtc 'select version()' postgres | cut -d, -f1)"
for n in "${names[@]}"; do
  source "$ROOT/bench/$n.sh"
  printf '\n## %s\n' "$n"
  "bench_${n}"
done
