#!/usr/bin/env bash
# Failure tools for one node of drytorch's multi-node SLURM test cluster (up.sh in this
# folder), for tests of what distributed code does when a host dies or is cut off.
# NODE is `node2` or `2`; use the MN_* settings of up.sh.
#
#   node.sh pids NODE       pids of every process in the node (its network namespace)
#   node.sh crash NODE      SIGKILL all of them (slurmd, slurmstepd, tasks): the host dies.
#                           slurmctld notices after ~25 s; `scontrol update NodeName=NODE
#                           State=DOWN Reason=...` ends its jobs (NODE_FAIL) at once
#   node.sh stop NODE       SIGKILL only its slurmd; the tasks go on until slurmctld
#                           declares the node DOWN (~25 s)
#   node.sh start NODE      start its slurmd again (nothing when it runs). ReturnToService=2
#                           makes a node that was DOWN for not answering usable by itself;
#                           one set DOWN by scontrol also needs `State=RESUME`
#   node.sh net-down NODE   take its link down (a network partition; processes keep running)
#   node.sh net-up NODE     bring it back (the node returns by itself in ~10 s)
#   node.sh exec NODE CMD.. run CMD in the node (its network, hostname = the node's name)
#
# crash and stop return once the processes are really gone (a zombie counts as gone).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/common.sh"
usage="usage: node.sh pids|crash|stop|start|net-down|net-up|exec NODE [CMD...]"
[ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
cmd=$1
i=$(mn_index "$2")
shift 2
ns=$(mn_ns "$i")
[ -e "/run/netns/$ns" ] || { echo "node.sh: no namespace $ns: is the cluster up (up.sh, MN_* settings)?" >&2; exit 1; }
pidfile=$(mn_slurmd_pidfile "$i")

case $cmd in
  pids)
    ip netns pids "$ns" ;;
  crash)
    mapfile -t pids < <(ip netns pids "$ns")
    if [ ${#pids[@]} -gt 0 ]; then
      kill -9 "${pids[@]}" 2>/dev/null || true
      mn_wait_gone "${pids[@]}"
    fi ;;
  stop)
    if mn_pidfile_alive "$pidfile" slurmd; then
      p=$(cat "$pidfile")
      kill -9 "$p"
      mn_wait_gone "$p"
    fi ;;
  start)
    mn_pidfile_alive "$pidfile" slurmd || mn_start_slurmd "$i" ;;
  net-down)
    ip link set "$(mn_veth "$i")" down ;;
  net-up)
    ip link set "$(mn_veth "$i")" up ;;
  exec)
    [ $# -gt 0 ] || { echo "$usage" >&2; exit 2; }
    mn_in_node "$i" "$@" ;;
  *)
    echo "$usage" >&2; exit 2 ;;
esac
