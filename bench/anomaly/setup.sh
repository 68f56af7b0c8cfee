#!/usr/bin/env bash
# The anomaly benchmark's inputs, made idempotently (a second run only checks):
#  - a venv with pinned scikit-learn, numpy and rdata (bench/anomaly/requirements.txt);
#  - Debian's r-cran-mlbench unpacked, and its BreastCancer, Shuttle and Satellite converted to
#    CSV as in Liu, Ting & Zhou 2008 / ODDS (bench/anomaly/datasets.py checks the counts);
#  - the synthetic speed table (1,000,000 x 8) and the labelled synthetic audit stream.
# Run as root (apt-get). Paths can be moved with ANOMALY_VENV and ANOMALY_DATA.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${ANOMALY_VENV:-/opt/custos/bench-venv}
DATA=${ANOMALY_DATA:-/opt/custos}
MLBENCH=$DATA/mlbench

# Debian's python3 (python3-venv is its package); another python3 on PATH (pyenv) is not used.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)

apt_ready=
apt_update() { [ -n "$apt_ready" ] || { apt-get update -qq >/dev/null; apt_ready=1; }; }

# 1. The venv.
if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
  echo "[anomaly setup] installing python3-venv"
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
[ -x "$VENV/bin/python" ] || { echo "[anomaly setup] creating $VENV"; "$PY" -m venv "$VENV"; }
stamp=$VENV/.custos-requirements
if ! cmp -s "$HERE/requirements.txt" "$stamp"; then
  echo "[anomaly setup] installing $(grep -c '==' "$HERE/requirements.txt") pinned packages into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$HERE/requirements.txt"
  cp "$HERE/requirements.txt" "$stamp"
fi

# 2. mlbench's data sets.
data_dir=$MLBENCH/root/usr/lib/R/site-library/mlbench/data
if [ ! -f "$data_dir/Shuttle.rda" ]; then
  mkdir -p "$MLBENCH"
  rm -f "$MLBENCH"/r-cran-mlbench_*.deb
  echo "[anomaly setup] fetching r-cran-mlbench"
  # Downloaded as root into a root-owned directory: no _apt sandbox (it could not write here).
  # Tried with the lists as they are first, then after an apt-get update.
  fetch() { (cd "$MLBENCH" && apt-get download -qq -o APT::Sandbox::User=root r-cran-mlbench); }
  fetch 2>/dev/null || { apt_update; fetch; }
  rm -rf "$MLBENCH/root"
  dpkg-deb -x "$MLBENCH"/r-cran-mlbench_*.deb "$MLBENCH/root"
fi
for f in BreastCancer Shuttle Satellite; do
  [ -f "$data_dir/$f.rda" ] || { echo "[anomaly setup] $data_dir/$f.rda is missing" >&2; exit 1; }
done
"$VENV/bin/python" "$HERE/datasets.py" "$data_dir" "$MLBENCH/csv"

# 3. The speed table and the audit stream (deterministic; kept once made).
"$VENV/bin/python" "$HERE/sklearn_baseline.py" make-speed "$DATA/anomaly/speed.csv"
"$VENV/bin/python" "$HERE/audit_stream.py" --out "$DATA/anomaly/audit"
