#!/usr/bin/env bash
# Tear down drytorch's multi-node SLURM test cluster made by up.sh in this folder, and
# only that: slurmctld, the slurmds and whatever still runs in the node namespaces (job
# steps, tasks), slurmdbd and the private MariaDB, the namespaces, veths and bridge, the
# tagged /etc/hosts lines, the folders under MN_BASE (and MN_BASE when left empty), and
# munged only if up.sh had to start it (and the one-node cluster does not use it now).
#
# Usage (as root):  bash slurm/multinode/down.sh       (same MN_* settings as up.sh)
#
# - Processes are ended by pid (pid files under MN_BASE, `ip netns pids`), never by name:
#   the one-node cluster's daemons of the same names are not touched.
# - MN_KEEP_LOGS=1 keeps MN_BASE/log (for a look after a failure).
# - Idempotent; exits 0 when nothing is up.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/common.sh"
log() { echo "multinode down.sh: $*" >&2; }
t0=$(date +%s.%N)
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }

stop_pids() {  # stop_pids PID...: TERM, wait up to 5 s, then KILL what is left
  local p left=()
  [ $# -gt 0 ] || return 0
  kill "$@" 2>/dev/null
  mn_wait_gone "$@" && return 0
  for p in "$@"; do mn_alive "$p" && left+=("$p"); done
  log "SIGKILL to ${left[*]}"
  kill -9 "${left[@]}" 2>/dev/null
  mn_wait_gone "${left[@]}"
}
pid_of() { [ -s "$1" ] && cat "$1"; }

# our namespaces: mn-<prefix><digit>, however many nodes the last up.sh made
our_netns() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^mn-$MN_PREFIX[1-9]$"; }

# the controller first (so that it stops talking to the nodes), then the slurmds
# shellcheck disable=SC2046
stop_pids $(pid_of "$MN_RUN/slurmctld.pid")
# shellcheck disable=SC2046
stop_pids $(for f in "$MN_RUN"/slurmd-*.pid; do pid_of "$f"; done)
for ns in $(our_netns); do
  # shellcheck disable=SC2046
  stop_pids $(ip netns pids "$ns" 2>/dev/null)
  ip netns del "$ns"
done
# a veth's bridge end goes with its namespace; delete any left over, then the bridge
for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E "^mnv-$MN_PREFIX[1-9]$"); do
  ip link del "$l" 2>/dev/null
done
ip link show "$MN_BRIDGE" >/dev/null 2>&1 && ip link del "$MN_BRIDGE"
# /etc/hosts: drop the tagged lines, rewriting the file in place (it may be a bind mount)
if grep -qF "$MN_HOSTS_TAG" /etc/hosts; then
  tmp=$(mktemp)
  grep -vF "$MN_HOSTS_TAG" /etc/hosts > "$tmp"
  cat "$tmp" > /etc/hosts
  rm -f "$tmp"
fi
# shellcheck disable=SC2046
stop_pids $(pid_of "$MN_RUN/slurmdbd.pid")
# shellcheck disable=SC2046
stop_pids $(pid_of "$MN_DB/mysqld.pid")
if [ -s "$MN_RUN/munged.started-by-up.pid" ]; then
  if mn_pidfile_alive /run/slurmctld.pid slurmctld; then
    log "leaving munged running: the one-node cluster uses it too"
  else
    stop_pids "$(cat "$MN_RUN/munged.started-by-up.pid")"
  fi
fi
# the folders up.sh made, then MN_BASE itself if nothing else is left in it
rm -rf "${MN_BASE:?}"/{etc,run,state,spool,db}
[ "${MN_KEEP_LOGS:-0}" = 1 ] || rm -rf "${MN_BASE:?}/log"
rmdir "$MN_BASE" 2>/dev/null
log "down ($(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s)"
exit 0
