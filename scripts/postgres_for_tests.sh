#!/usr/bin/env bash
# Start a throw-away PostgreSQL cluster on 127.0.0.1 for the service tests and print its URL.
# Usage: scripts/postgres_for_tests.sh start DIR [PORT]   → prints postgresql+psycopg://…
#        scripts/postgres_for_tests.sh stop DIR
# The cluster trusts local connections only (it listens on loopback and a private socket
# folder) and lives in DIR; `stop` shuts it down and removes DIR. Run as root (CI): the
# server runs as the `postgres` user the Debian package creates.
set -euo pipefail
action=${1:?start or stop}
dir=${2:?cluster folder}
port=${3:-55432}
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case "$action" in
  start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_pg "$bin/initdb" -D "$dir/data" -U medai --auth=trust -E UTF8 >/dev/null
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off" start >/dev/null
    echo "postgresql+psycopg://medai@127.0.0.1:$port/postgres"
    ;;
  stop)
    as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    rm -rf "$dir"
    ;;
  *) echo "unknown action $action (start or stop)" >&2; exit 2 ;;
esac
