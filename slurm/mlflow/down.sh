#!/usr/bin/env bash
# Stop the private MLflow server started by up.sh in this folder. Idempotent.
# `down.sh --purge` also deletes its folder (DRYTORCH_MLFLOW_DIR, default /tmp/drytorch-mlflow).
set -uo pipefail
DIR=${DRYTORCH_MLFLOW_DIR:-/tmp/drytorch-mlflow}
if [ -s "$DIR/server.pid" ]; then
  pid=$(cat "$DIR/server.pid")
  # up.sh started it with setsid: its pid is its process group's id
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null
  fi
  rm -f "$DIR/server.pid" "$DIR/url"
fi
if [ "${1:-}" = --purge ]; then
  rm -rf "$DIR"
fi
echo "mlflow down.sh: stopped" >&2
exit 0
