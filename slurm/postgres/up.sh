#!/usr/bin/env bash
# Start a private PostgreSQL 15 server for drytorch's tests (the SQL tracker), with a
# database `drytorch_test`, and print its SQLAlchemy URL on stdout (the only thing
# printed there; messages go to stderr):
#
#   export DRYTORCH_TEST_PG_URL=$(bash slurm/postgres/up.sh)
#   -> postgresql+psycopg://postgres@127.0.0.1:55432/drytorch_test
#
# Settings: DRYTORCH_PG_DIR (default /tmp/drytorch-pg: data in data/, log in postgres.log),
# DRYTORCH_PG_PORT (default 55432). Socket in /tmp. Authentication: trust, superuser
# `postgres`, listening on 127.0.0.1 only. fsync is off: this is a throw-away test server.
# Idempotent: when the server already answers, only the database is ensured.
# As root, the server runs as the `postgres` system user (PostgreSQL refuses root).
# Installs Debian's postgresql (15 on Debian 12) when no server binaries are found.
# Stop with slurm/postgres/down.sh (--purge also deletes the data).
set -euo pipefail
PGDIR=${DRYTORCH_PG_DIR:-/tmp/drytorch-pg}
PORT=${DRYTORCH_PG_PORT:-55432}
DB=drytorch_test
SOCKDIR=/tmp
export DEBIAN_FRONTEND=noninteractive
log() { echo "postgres up.sh: $*" >&2; }
t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

find_bindir() {
  local d
  for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  if command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir; return 0
  fi
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    dirname "$(command -v initdb)"; return 0
  fi
  return 1
}

if ! BIN=$(find_bindir); then
  [ "$(id -u)" = 0 ] || { log "no PostgreSQL server binaries; install postgresql (as root)"; exit 1; }
  log "installing postgresql"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql postgresql-client >/dev/null
  BIN=$(find_bindir)
fi
PSQL=$BIN/psql
[ -x "$PSQL" ] || PSQL=$(command -v psql)

# run a command as the server's owner: `postgres` when we are root, else ourselves
if [ "$(id -u)" = 0 ]; then
  id -u postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  as_owner() { (cd / && runuser -u postgres -- "$@"); }
else
  as_owner() { (cd / && "$@"); }
fi

url="postgresql+psycopg://postgres@127.0.0.1:${PORT}/${DB}"
answers() { "$PSQL" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -XtAqc 'SELECT 1' >/dev/null 2>&1; }

ensure_db() {
  if [ -z "$("$PSQL" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -XtAqc \
        "SELECT 1 FROM pg_database WHERE datname = '$DB'")" ]; then
    "$PSQL" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -Xqc "CREATE DATABASE $DB" >/dev/null
  fi
}

if answers; then
  ensure_db
  log "already up ($(elapsed)s)"
  echo "$url"
  exit 0
fi

mkdir -p "$PGDIR"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$PGDIR"
chmod 700 "$PGDIR"

if [ ! -s "$PGDIR/data/PG_VERSION" ]; then
  rm -rf "$PGDIR/data"
  as_owner "$BIN/initdb" -D "$PGDIR/data" -A trust -U postgres -E UTF8 --no-locale >"$PGDIR/initdb.log" 2>&1 \
    || { cat "$PGDIR/initdb.log" >&2; exit 1; }
  log "initialised $PGDIR/data"
fi

# A lock file (postmaster.pid, the socket's .lock) left by a server that was killed is
# normally ignored by postgres, but not when its pid is still taken: by another process,
# or by the dead server itself as a zombie not yet reaped. Drop such a file unless a live
# postgres owns it.
drop_stale_lock() {
  local f=$1 pid state
  [ -f "$f" ] || return 0
  pid=$(head -n1 "$f")
  state=$(sed -E 's/^[0-9]+ \(.*\) (.).*/\1/' "/proc/$pid/stat" 2>/dev/null || echo gone)
  if ! { grep -qs postgres "/proc/$pid/comm" && [ "$state" != Z ]; }; then
    rm -f "$f"
  fi
}
drop_stale_lock "$PGDIR/data/postmaster.pid"
drop_stale_lock "$SOCKDIR/.s.PGSQL.$PORT.lock"

if ! as_owner "$BIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/postgres.log" -w -t 60 start \
     -o "-p $PORT -k $SOCKDIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
     >/dev/null; then
  log "server failed to start; last lines of $PGDIR/postgres.log:"
  tail -n 30 "$PGDIR/postgres.log" >&2 || true
  exit 1
fi
for _ in $(seq 1 100); do answers && break; sleep 0.1; done
answers || { log "server started but does not answer on 127.0.0.1:$PORT"; exit 1; }
ensure_db
log "up on 127.0.0.1:$PORT, data in $PGDIR/data ($(elapsed)s)"
echo "$url"
