#!/usr/bin/env bash
# Stop the private PostgreSQL server started by up.sh in this folder. Idempotent.
# `down.sh --purge` also deletes its folder (DRYTORCH_PG_DIR, default /tmp/drytorch-pg).
set -uo pipefail
PGDIR=${DRYTORCH_PG_DIR:-/tmp/drytorch-pg}
BIN=
for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
  [ -x "$d/pg_ctl" ] && { BIN=$d; break; }
done
[ -n "$BIN" ] || BIN=$(dirname "$(command -v pg_ctl 2>/dev/null || echo /nonexistent/pg_ctl)")

if [ -f "$PGDIR/data/postmaster.pid" ] && [ -x "$BIN/pg_ctl" ]; then
  if [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u postgres -- "$BIN/pg_ctl" -D "$PGDIR/data" -m fast -w -t 30 stop) >/dev/null 2>&1
  else
    (cd / && "$BIN/pg_ctl" -D "$PGDIR/data" -m fast -w -t 30 stop) >/dev/null 2>&1
  fi
fi
if [ "${1:-}" = --purge ]; then
  rm -rf "$PGDIR"
fi
echo "postgres down.sh: stopped" >&2
exit 0
