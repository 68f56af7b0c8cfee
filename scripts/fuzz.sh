#!/usr/bin/env bash
# Fuzzes the parsers that read untrusted input (checkpoint texts, JWT claims, canonical JSON, sealed
# values, stored anomaly models) with cargo fuzz: `bash scripts/fuzz.sh [seconds per target, default 60]`. Not part of
# the test run.
# cargo fuzz wants nightly-only compiler flags; only stable Rust exists here, so RUSTC_BOOTSTRAP
# lets the stable compiler accept them.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH" RUSTC_BOOTSTRAP=1
SECONDS_PER_TARGET=${1:-60}
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
cd "$ROOT"
for target in checkpoint claims canonical_json sealed forest; do
  echo "== fuzz $target for ${SECONDS_PER_TARGET}s"
  cargo fuzz run --fuzz-dir fuzz "$target" -- -max_total_time="$SECONDS_PER_TARGET" 2>&1 | grep -E "^Done|ERROR|panicked" || true
  [ -z "$(ls -A "fuzz/artifacts/$target" 2>/dev/null)" ] || { echo "crash inputs in fuzz/artifacts/$target" >&2; exit 1; }
done
