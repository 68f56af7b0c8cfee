#!/usr/bin/env bash
# Installs what custos needs on Debian 12, as root, downloading nothing but packages
# (Debian, crates.io). Idempotent: a second run checks and skips in seconds.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG_MAJOR=15
PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
PGVECTOR_VERSION=0.8.0
PGRX_VERSION=0.18.1
export PGRX_HOME="$ROOT/pgrx-config"
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '[setup] %s\n' "$*"; }
[ "$(id -u)" = 0 ] || { echo "setup.sh must run as root (it installs packages)" >&2; exit 1; }

# 1. Debian packages: PostgreSQL 15 with server headers, build tools, libclang for bindgen,
#    python3 for the export-verification test.
pkgs=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR postgresql-contrib sudo build-essential
      libclang-dev clang pkg-config dpkg-dev libssl-dev python3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "debian packages present"
fi
# Debian's postgresql package may have created and started a default cluster; custos never uses it.

# 2. pgvector, built from Debian trixie's source package against PG 15 (not packaged for bookworm).
if [ -f "/usr/share/postgresql/$PG_MAJOR/extension/vector--$PGVECTOR_VERSION.sql" ] \
   && [ -f "/usr/lib/postgresql/$PG_MAJOR/lib/vector.so" ]; then
  say "pgvector $PGVECTOR_VERSION present"
else
  say "building pgvector $PGVECTOR_VERSION from trixie's source package"
  src_list=/etc/apt/sources.list.d/custos-trixie-src.sources
  if [ ! -f "$src_list" ]; then
    # Reuse the mirror this machine already uses for bookworm.
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '$1=="deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$mirror" ] || { echo "cannot find the Debian mirror in apt's sources" >&2; exit 1; }
    printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$mirror" > "$src_list"
  fi
  apt-get update -qq
  work=$(mktemp -d); chmod 755 "$work"   # apt's sandbox user must be able to write there
  (cd "$work" && apt-get source -qq --download-only pgvector >/dev/null \
     && ls pgvector_"$PGVECTOR_VERSION"-*.dsc >/dev/null \
     && dpkg-source --no-check -x pgvector_*.dsc src >/dev/null \
     && make -s -C src PG_CONFIG="$PG_CONFIG" OPTFLAGS="" >/dev/null \
     && make -s -C src PG_CONFIG="$PG_CONFIG" install >/dev/null)
  rm -rf "$work"
  say "pgvector installed"
fi

# 3. cargo-pgrx, exactly the version the crate pins.
if cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  say "cargo-pgrx $PGRX_VERSION present"
else
  say "installing cargo-pgrx $PGRX_VERSION (several minutes the first time)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi

# 4. pgrx configured with the system pg_config: never a download.
if grep -qs "pg$PG_MAJOR = \"$PG_CONFIG\"" "$PGRX_HOME/config.toml"; then
  say "pgrx configured ($PGRX_HOME)"
else
  cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG" >/dev/null
  say "pgrx configured with $PG_CONFIG"
fi
