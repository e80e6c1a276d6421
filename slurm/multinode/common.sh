# Settings and helpers of drytorch's multi-node SLURM test cluster, sourced by up.sh,
# down.sh and node.sh in this folder. Every setting can be overridden by exporting it
# first; give up.sh, down.sh and node.sh the same values.
#
#   MN_BASE=/tmp/multinode   rendered slurm.conf (etc/), state, spool, pid files (run/),
#                            logs (log/), the private MariaDB (db/)
#   MN_NODES=3               compute nodes node1..nodeN (1-9); tests use 2 or 3 of them
#   MN_PREFIX=node           node names, which are also their hostnames
#   MN_CPUS=4                CPUs each node declares (more than the machine has: the
#                            slurm.conf accepts it with SlurmdParameters=config_overrides)
#   MN_CLUSTER=multinode     ClusterName (the one-node cluster of slurm/cluster/ is another)
#   MN_CTLD_PORT=6917 MN_SLURMD_PORT=6918 MN_DBD_PORT=6919 MN_DB_PORT=6930
#                            slurmctld, slurmd (in each node), slurmdbd, MariaDB: none of
#                            them is a port of the one-node cluster (6817-6819, 3306)
#   MN_NET=10.213.0          a /24 used only on the bridge and veths made here
#   MN_BRIDGE=mnbr0          the bridge in the root namespace, address $MN_NET.1
#   MN_SLURMD_TIMEOUT=10     SlurmdTimeout (a crashed node is marked DOWN ~25 s later)
MN_BASE=${MN_BASE:-/tmp/multinode}
MN_NODES=${MN_NODES:-3}
MN_PREFIX=${MN_PREFIX:-node}
MN_CPUS=${MN_CPUS:-4}
MN_CLUSTER=${MN_CLUSTER:-multinode}
MN_CTLD_PORT=${MN_CTLD_PORT:-6917}
MN_SLURMD_PORT=${MN_SLURMD_PORT:-6918}
MN_DBD_PORT=${MN_DBD_PORT:-6919}
MN_DB_PORT=${MN_DB_PORT:-6930}
MN_NET=${MN_NET:-10.213.0}
MN_BRIDGE=${MN_BRIDGE:-mnbr0}
MN_SLURMD_TIMEOUT=${MN_SLURMD_TIMEOUT:-10}

# derived: what clients need (SLURM_CONF), and the tag of the /etc/hosts lines up.sh adds
MN_CONF=$MN_BASE/etc/slurm.conf
MN_RUN=$MN_BASE/run
MN_LOG=$MN_BASE/log
MN_DB=$MN_BASE/db
MN_HOSTS_TAG="# drytorch-multinode:$MN_CLUSTER"

mn_node() { echo "$MN_PREFIX$1"; }          # node i's name and hostname
mn_ns() { echo "mn-$MN_PREFIX$1"; }         # its network namespace (ip netns)
mn_veth() { echo "mnv-$MN_PREFIX$1"; }      # the bridge's end of its veth (<= 15 chars)
mn_addr() { echo "$MN_NET.$((10 + $1))"; }  # its address: node1 .11, node2 .12, ...
mn_slurmd_pidfile() { echo "$MN_RUN/slurmd-$(mn_node "$1").pid"; }

mn_index() {  # mn_index node2|2 -> 2
  local i=${1#"$MN_PREFIX"}
  [[ $i =~ ^[1-9]$ ]] || { echo "multinode: no node '$1' (node1..node9, or 1..9)" >&2; return 1; }
  echo "$i"
}

mn_alive() {  # mn_alive PID: a live process; a zombie (killed, not yet reaped) is gone
  local st
  [ -n "${1:-}" ] || return 1
  st=$(sed -E 's/^[0-9]+ \(.*\) (.).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "$st" != Z ]
}

mn_pidfile_alive() {  # mn_pidfile_alive FILE [NAME]: the pid in FILE lives (and is a NAME)
  local p
  p=$(cat "$1" 2>/dev/null) && mn_alive "$p" || return 1
  [ -z "${2:-}" ] || [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$2" ]
}

mn_wait_gone() {  # mn_wait_gone PID...: wait up to 5 s for all of them to be gone
  local p
  for _ in $(seq 1 50); do
    for p in "$@"; do mn_alive "$p" && { sleep 0.1; continue 2; }; done
    return 0
  done
  return 1
}

mn_in_node() {  # mn_in_node I CMD...: run CMD in node i (its netns, hostname = node name)
  # Not `ip netns exec`: it remounts /sys, which hides /sys/fs/cgroup, and slurmd 22.05
  # then dies with "Unable to initialize cgroup plugin". nsenter joins only the network
  # namespace; unshare --uts gives a hostname of its own, set through /proc (no need for
  # the `hostname` binary).
  local i=$1; shift
  nsenter --net="/run/netns/$(mn_ns "$i")" unshare --uts -- \
    sh -c 'echo "$0" > /proc/sys/kernel/hostname && exec "$@"' "$(mn_node "$i")" "$@"
}

mn_start_slurmd() {  # start node i's slurmd (it daemonizes and stays in both namespaces)
  mkdir -p "$MN_BASE/spool/$(mn_node "$1")"
  mn_in_node "$1" slurmd -f "$MN_CONF" -N "$(mn_node "$1")"
}
