#!/usr/bin/env bash
# Stop drytorch's test cluster started by up.sh in this folder: cancel the jobs (so that
# no job processes outlive slurmd), then stop the daemons by their pid files, waiting for
# each to exit. Idempotent. With KEEP_BASE=1, munge and MariaDB are left running.
set -uo pipefail

alive() {  # a zombie (killed, not yet reaped) counts as gone
  local st
  st=$(sed -E 's/^[0-9]+ \(.*\) (.).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "$st" != Z ]
}

# stop PIDFILE NAME: only when the pid still belongs to a process called NAME (a stale pid
# file from an earlier machine life may name an unrelated process by now)
stop() {
  local f=$1 name=$2 p
  [ -f "$f" ] || return 0
  p=$(cat "$f" 2>/dev/null) || return 0
  { [ -n "$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$name" ] && kill "$p" 2>/dev/null; } \
    || { rm -f "$f"; return 0; }
  for _ in $(seq 1 100); do alive "$p" || { rm -f "$f"; return 0; }; sleep 0.1; done
  kill -9 "$p" 2>/dev/null
  rm -f "$f"
}

if command -v scontrol >/dev/null && timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; then
  jobs=$(timeout 10 squeue -h -o '%A' 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 100); do
      [ -z "$(timeout 5 squeue -h -t running,completing -o '%A' 2>/dev/null)" ] && break; sleep 0.1
    done
  fi
fi

stop /run/slurmd.pid slurmd
stop /run/slurmctld.pid slurmctld
stop /run/slurmdbd.pid slurmdbd
if [ "${KEEP_BASE:-0}" != 1 ]; then
  stop /run/mysqld/mysqld.pid mariadbd
  stop /run/munge/munged.pid munged
fi
echo "slurm down.sh: stopped"
exit 0
