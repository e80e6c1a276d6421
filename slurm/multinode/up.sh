#!/usr/bin/env bash
# Bring up drytorch's multi-node SLURM 22.05 test cluster on this one machine, and print
# the path of its slurm.conf on stdout (the only thing printed there; messages go to
# stderr):
#
#   export DRYTORCH_TEST_MULTINODE_CONF=$(bash slurm/multinode/up.sh)
#   SLURM_CONF=$DRYTORCH_TEST_MULTINODE_CONF srun -N2 -n2 hostname   # node1, node2
#   -> /tmp/multinode/etc/slurm.conf
#
# Why: distributed code has to be tested on several hosts, with a node that can crash
# or be cut off, and CI has one machine. Each compute node here is a network namespace
# plus a UTS namespace (so `hostname` says node1, node2, ... and each has an address of
# its own, 10.213.0.11, .12, ...), joined by a veth to a bridge mnbr0 (10.213.0.1/24, no
# route out) in the root namespace. slurmctld, slurmdbd and a private MariaDB (so that
# sacct works: submitit needs it after a node failure) run in the root namespace, one
# slurmd in each node. The file system is shared, as on a cluster with NFS. The node
# names go into /etc/hosts (tagged lines), so that tasks resolve MASTER_ADDR=node1 and
# gloo binds to the right address without GLOO_SOCKET_IFNAME.
#
# Usage (as root):  bash slurm/multinode/up.sh      then  bash slurm/multinode/down.sh
#
# - Every client (sinfo, srun, sbatch, sacct, submitit) needs SLURM_CONF set to the path
#   printed; jobs inherit it. Without it, clients talk to the one-node cluster of
#   slurm/cluster/, which this one leaves alone: own config, ports 6917/6918/6919/6930,
#   ClusterName `multinode`, state under MN_BASE. The machine's munged is reused (one is
#   started, and noted for down.sh, only when none answers).
# - Partitions `debug` (default; PreemptMode=REQUEUE, GraceTime=20) and `urgent`
#   (preempts debug), as in the one-node cluster.
# - Settings (environment): MN_NODES=3, MN_BASE=/tmp/multinode, MN_CPUS=4, ... see
#   common.sh; give down.sh and node.sh the same ones.
# - Idempotent: when the cluster is up with these settings (every daemon alive, every
#   node usable) it only prints the path. Otherwise (anything missing, a node left down
#   by a failure test) it tears down what an earlier up.sh made, ending its jobs, and
#   starts from scratch: empty job state and accounting, job ids from 1.
# - Node failures for tests: node.sh (crash, stop, start, net-down, net-up, exec).
# - Installs the Debian packages it needs when they are missing (apt-get).
set -Eeuo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/common.sh"
export SLURM_CONF=$MN_CONF DEBIAN_FRONTEND=noninteractive
log() { echo "multinode up.sh: $*" >&2; }
t0=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="${2:-$(date +%s.%N)}" 'BEGIN{printf "%.1f", b-a}'; }

[ "$(id -u)" = 0 ] || { log "must run as root (namespaces, /etc/hosts)"; exit 1; }
[[ $MN_NODES =~ ^[1-9]$ ]] || { log "MN_NODES must be 1-9, not '$MN_NODES'"; exit 1; }
NODES=$(seq 1 "$MN_NODES")

render() {  # the slurm.conf for these settings, on stdout
  local line i
  while IFS= read -r line; do
    if [ "$line" = @NODES@ ]; then
      for i in $NODES; do
        echo "NodeName=$(mn_node "$i") NodeAddr=$(mn_addr "$i") CPUs=$MN_CPUS Boards=1" \
          "SocketsPerBoard=1 CoresPerSocket=$MN_CPUS ThreadsPerCore=1 RealMemory=4000 State=UNKNOWN"
      done
      continue
    fi
    line=${line//@BASE@/$MN_BASE}
    line=${line//@CLUSTER@/$MN_CLUSTER}
    line=${line//@CTLD_ADDR@/$MN_NET.1}
    line=${line//@CTLD_PORT@/$MN_CTLD_PORT}
    line=${line//@SLURMD_PORT@/$MN_SLURMD_PORT}
    line=${line//@DBD_PORT@/$MN_DBD_PORT}
    line=${line//@SLURMD_TIMEOUT@/$MN_SLURMD_TIMEOUT}
    printf '%s\n' "$line"
  done < "$HERE/slurm.conf"
}

usable_nodes() {  # how many nodes of `debug` are up (idle or running jobs)
  timeout 10 sinfo -h -N -p debug -o '%T' 2>/dev/null | grep -cE '^(idle|mixed|allocated|completing)$'
}
idle_nodes() { timeout 10 sinfo -h -N -p debug -o '%T' 2>/dev/null | grep -c '^idle$'; }

WHY=
is_up() {  # all of it up with these settings; else WHY says what is not
  local i
  [ -f "$MN_CONF" ] || { WHY="no $MN_CONF"; return 1; }
  cmp -s <(render) "$MN_CONF" || { WHY="other settings in $MN_CONF"; return 1; }
  mn_pidfile_alive "$MN_DB/mysqld.pid" mariadbd || { WHY="MariaDB not running"; return 1; }
  mn_pidfile_alive "$MN_RUN/slurmdbd.pid" slurmdbd || { WHY="slurmdbd not running"; return 1; }
  mn_pidfile_alive "$MN_RUN/slurmctld.pid" slurmctld || { WHY="slurmctld not running"; return 1; }
  for i in $NODES; do
    mn_pidfile_alive "$(mn_slurmd_pidfile "$i")" slurmd || { WHY="slurmd of $(mn_node "$i") not running"; return 1; }
    grep -qF "$(mn_addr "$i") $(mn_node "$i") $MN_HOSTS_TAG" /etc/hosts \
      || { WHY="$(mn_node "$i") not in /etc/hosts"; return 1; }
  done
  [ "$(usable_nodes)" = "$MN_NODES" ] || { WHY="not all nodes usable: $(sinfo -h -N -p debug -o '%N=%T' 2>&1 | tr '\n' ' ')"; return 1; }
}

on_error() {
  log "FAILED; last lines of the logs:"
  for f in "$MN_LOG"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
}

install_packages() {
  local p missing=()
  for p in slurmctld slurmd slurm-client slurmdbd munge mariadb-server iproute2; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start_munge() {  # reuse the machine's munged; start one (noted for down.sh) only if none answers
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey -c -f -k /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge; chown munge:munge /run/munge
  runuser -u munge -- /usr/sbin/munged --force
  for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  cp /run/munge/munged.pid "$MN_RUN/munged.started-by-up.pid"
  log "started munged (pid $(cat "$MN_RUN/munged.started-by-up.pid"))"
}

make_network() {  # the bridge, one namespace + veth per node, the /etc/hosts lines
  local i ns
  if ip -o addr show | grep -q " $MN_NET\."; then
    log "$MN_NET.0/24 is already used on this machine (set MN_NET)"; return 1
  fi
  ip link add "$MN_BRIDGE" type bridge
  ip addr add "$MN_NET.1/24" dev "$MN_BRIDGE"
  ip link set "$MN_BRIDGE" up
  for i in $NODES; do
    ns=$(mn_ns "$i")
    ip netns add "$ns"
    ip link add "$(mn_veth "$i")" type veth peer name eth0 netns "$ns"
    ip link set "$(mn_veth "$i")" master "$MN_BRIDGE" up
    ip -n "$ns" addr add "$(mn_addr "$i")/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
  done
  # /etc/hosts is the same file in every namespace
  for i in $NODES; do echo "$(mn_addr "$i") $(mn_node "$i") $MN_HOSTS_TAG"; done >> /etc/hosts
}

start_accounting() {  # a private MariaDB and a slurmdbd on it
  # --no-defaults: nothing from /etc/mysql, so it cannot touch the machine's own MariaDB
  # (the one-node cluster's, on 3306); own datadir, socket, pid file and port.
  local sql=(mariadb --no-defaults --socket="$MN_DB/mysqld.sock")
  mkdir -p "$MN_DB"; chown mysql:mysql "$MN_DB"
  touch "$MN_LOG/mariadb.log"; chown mysql "$MN_LOG/mariadb.log"
  mariadb-install-db --no-defaults --user=mysql --datadir="$MN_DB" --skip-test-db \
    --auth-root-authentication-method=socket >> "$MN_LOG/mariadb.log" 2>&1
  # setsid: a session of its own, outside the caller's (CI's) process group
  setsid mariadbd --no-defaults --user=mysql --datadir="$MN_DB" --socket="$MN_DB/mysqld.sock" \
    --pid-file="$MN_DB/mysqld.pid" --port="$MN_DB_PORT" --bind-address=127.0.0.1 \
    --log-error="$MN_LOG/mariadb.log" --innodb-buffer-pool-size=32M \
    --innodb-flush-log-at-trx-commit=2 < /dev/null > /dev/null 2>&1 &
  for _ in $(seq 1 300); do "${sql[@]}" -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done
  "${sql[@]}" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';
                  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
  # slurmdbd reads the slurmdbd.conf next to $SLURM_CONF
  cat > "$MN_BASE/etc/slurmdbd.conf" <<EOC
# written by slurm/multinode/up.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=$MN_DBD_PORT
SlurmUser=root
PidFile=$MN_RUN/slurmdbd.pid
LogFile=$MN_LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MN_DB_PORT
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
EOC
  chmod 600 "$MN_BASE/etc/slurmdbd.conf"
  slurmdbd
  # it listens once its schema is made
  for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$MN_DBD_PORT") 2>/dev/null && break; sleep 0.1; done
}

start_slurm() {
  local i
  # -f needs an absolute path: with a relative one slurmctld retries "cannot stat" for 60 s
  slurmctld -f "$MN_CONF"
  for _ in $(seq 1 100); do timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.1; done
  for i in $NODES; do mn_start_slurmd "$i"; done
  for _ in $(seq 1 300); do [ "$(idle_nodes)" = "$MN_NODES" ] && break; sleep 0.1; done
  [ "$(idle_nodes)" = "$MN_NODES" ] || { log "nodes not idle:"; sinfo -N >&2; return 1; }
  # slurmctld registers the cluster with slurmdbd on its first contact
  for _ in $(seq 1 100); do
    timeout 5 sacctmgr -n list cluster format=cluster 2>/dev/null | grep -qw "$MN_CLUSTER" && break; sleep 0.1
  done
  timeout 5 sacctmgr -n list cluster format=cluster | grep -qw "$MN_CLUSTER"
}

bring_up() {
  local t1 t2 t3
  install_packages
  t1=$(date +%s.%N)
  bash "$HERE/down.sh"   # a clean slate: only what an earlier up.sh made
  mkdir -p "$MN_BASE"/{etc,run,state,log,spool}
  start_munge
  make_network
  render > "$MN_CONF"
  t2=$(date +%s.%N)
  start_accounting
  t3=$(date +%s.%N)
  start_slurm
  log "cluster '$MN_CLUSTER' up, $MN_NODES nodes ($(sinfo -h -p debug -o %N)), $(elapsed "$t0")s:" \
    "packages $(elapsed "$t0" "$t1")s, clean-up+network $(elapsed "$t1" "$t2")s," \
    "MariaDB+slurmdbd $(elapsed "$t2" "$t3")s, slurmctld+slurmds $(elapsed "$t3")s"
}

if is_up; then
  log "already up ($(elapsed "$t0")s)"
else
  [ -e "$MN_BASE" ] && log "rebuilding: $WHY"
  trap on_error ERR
  # the daemons' stdout is stderr: nothing started here may hold the caller's stdout
  # (`$(bash up.sh)` would wait for it)
  bring_up >&2
  trap - ERR
fi
echo "$MN_CONF"
