#!/usr/bin/env bash
# Start a private MLflow tracking server for drytorch's tests (the MLflow tracker), with a
# SQLite backend, and print its URL on stdout (the only thing printed there; messages go
# to stderr):
#
#   export DRYTORCH_TEST_MLFLOW_URL=$(bash slurm/mlflow/up.sh)
#   -> http://127.0.0.1:41923
#
# This is also how a cluster without internet gets a server of its own: run it on a login
# or service node and point MLflow(tracking_uri=...) at the URL it prints.
#
# Settings: DRYTORCH_MLFLOW_DIR (default /tmp/drytorch-mlflow: runs in mlflow.db, artifacts
# in artifacts/, log in server.log, pid in server.pid, URL in url), DRYTORCH_MLFLOW_PORT
# (default: a free port), PYTHON (default python; it must have the full `mlflow` package,
# not only mlflow-skinny). Listens on 127.0.0.1 only, one worker, telemetry off.
# Idempotent: when the server this folder records still answers, only its URL is printed.
# Stop with slurm/mlflow/down.sh (--purge also deletes the folder).
set -euo pipefail
DIR=${DRYTORCH_MLFLOW_DIR:-/tmp/drytorch-mlflow}
PY=${PYTHON:-python}
export MLFLOW_DISABLE_TELEMETRY=true
log() { echo "mlflow up.sh: $*" >&2; }
t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
# with Python rather than curl, which a minimal Debian lacks
answers() {
  "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/health", timeout=2)' \
    "$1" >/dev/null 2>&1
}

if [ -s "$DIR/url" ] && answers "$(cat "$DIR/url")"; then
  log "already up ($(elapsed)s)"
  cat "$DIR/url"
  exit 0
fi

# the server needs the SQL store (SQLAlchemy, Alembic), which mlflow-skinny lacks
if ! "$PY" -c 'import mlflow.store.tracking.sqlalchemy_store' 2>/dev/null; then
  log "$PY cannot import mlflow's SQL store: pip install mlflow (the full package)"
  exit 1
fi

PORT=${DRYTORCH_MLFLOW_PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
url="http://127.0.0.1:${PORT}"
mkdir -p "$DIR/artifacts"
rm -f "$DIR/url"

# setsid: the server and its worker form a process group of their own, which down.sh
# stops as one, and which outlives this script (and CI's phase that ran it)
setsid "$PY" -m mlflow server \
  --backend-store-uri "sqlite:///$DIR/mlflow.db" \
  --artifacts-destination "$DIR/artifacts" \
  --host 127.0.0.1 --port "$PORT" --workers 1 \
  >"$DIR/server.log" 2>&1 < /dev/null &
pid=$!
echo "$pid" > "$DIR/server.pid"

# the first start creates the database (migrations): seconds on a loaded machine
for _ in $(seq 1 600); do
  answers "$url" && break
  if ! kill -0 "$pid" 2>/dev/null; then
    log "server exited; last lines of $DIR/server.log:"
    tail -n 30 "$DIR/server.log" >&2 || true
    exit 1
  fi
  sleep 0.2
done
if ! answers "$url"; then
  log "server started but does not answer on $url after 120 s; last lines of $DIR/server.log:"
  tail -n 30 "$DIR/server.log" >&2 || true
  exit 1
fi
echo "$url" > "$DIR/url"
log "up on $url, runs in $DIR/mlflow.db ($(elapsed)s)"
echo "$url"
