#!/usr/bin/env bash
# Sets up what is missing, then shows custos at work on a demo data set in a throwaway cluster.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PGRX_HOME="$ROOT/pgrx-config" PATH="$HOME/.cargo/bin:$PATH"
bash "$ROOT/scripts/setup.sh"
source "$ROOT/scripts/lib/cluster.sh"
echo "[demo] building and installing custos (release)"
PROFILE=release install_extension
cluster_start "track_commit_timestamp = on"  # recommended for the ledger (README, Concurrency)
cpsql -d postgres -c "CREATE DATABASE custos_demo"
echo "[demo] cluster in $CLUSTER_DIR; running demo/demo.sql"
echo
cpsql -d custos_demo -P pager=off -f "$ROOT/demo/demo.sql"
