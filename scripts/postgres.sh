#!/usr/bin/env bash
# A private PostgreSQL cluster for tests, without systemd. Idempotent: installs
# Debian's postgresql if it is missing, creates the cluster once, starts it if it is
# not running, and prints its SQLAlchemy URL. `scripts/postgres.sh stop` stops it.
#
#   HOODY_PG_DIR   where the cluster lives (default /var/tmp/hoody-pg)
#
# It listens on 127.0.0.1 and a unix socket in HOODY_PG_DIR, on a free port chosen
# the first time and kept in HOODY_PG_DIR/port. Trust auth on loopback: test use only.
set -euo pipefail

dir=${HOODY_PG_DIR:-/var/tmp/hoody-pg}

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [[ -z $bindir || ! -x $bindir/pg_ctl ]]; then
    echo "postgres.sh: installing postgresql" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
fi

# PostgreSQL refuses to run as root: run it as the postgres user when we are root.
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [[ ${1:-} == stop ]]; then
    [[ -f $dir/data/postmaster.pid ]] && as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >&2
    exit 0
fi

mkdir -p "$dir"
[[ $(id -u) -eq 0 ]] && chown postgres:postgres "$dir"
if [[ ! -f $dir/data/PG_VERSION ]]; then
    as_pg "$bindir/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
fi
if [[ ! -s $dir/port ]]; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
        >"$dir/port"
fi
port=$(cat "$dir/port")

if ! as_pg "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 \
            -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >/dev/null \
        || { tail -n 20 "$dir/server.log" >&2; exit 1; }
fi
echo "postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
