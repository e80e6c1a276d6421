#!/usr/bin/env bash
# Bring up drytorch's one-node SLURM 22.05 test cluster on localhost:
# munge + MariaDB + slurmdbd (for sacct) + slurmctld + slurmd, started by hand (no systemd).
#
# Usage (as root):  bash slurm/cluster/up.sh      then  bash slurm/cluster/down.sh
#
# - Installs the Debian packages it needs when they are missing (apt-get).
# - Installs slurm.conf from this folder as /etc/slurm/slurm.conf.
# - Idempotent: when the cluster is already up with this slurm.conf it exits 0 at once;
#   when it is up with another slurm.conf it is restarted with this one.
# - A cold start begins from an empty job state and accounting database (job ids from 1),
#   unless DRYTORCH_SLURM_KEEP_STATE=1.
# - `srun --mpi=pmix` works (mpi_pmix plugin + libpmix-dev).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONF="$HERE/slurm.conf"
CLUSTER=$(sed -n 's/^ClusterName=//p' "$CONF")
LOGDIR=/var/log/slurm
export DEBIAN_FRONTEND=noninteractive

[ "$(id -u)" = 0 ] || { echo "slurm up.sh: must run as root" >&2; exit 1; }

t0=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

on_error() {
  echo "slurm up.sh: FAILED; last lines of the logs:" >&2
  for f in "$LOGDIR"/slurmctld.log "$LOGDIR"/slurmd.log "$LOGDIR"/slurmdbd.log "$LOGDIR"/mariadb.log; do
    [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }
  done
}
trap on_error ERR

node_state() { timeout 10 sinfo -h -p debug -o '%T' 2>/dev/null | head -n1; }

is_up() {
  cmp -s "$CONF" /etc/slurm/slurm.conf || return 1
  command -v scontrol >/dev/null || return 1
  timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP' || return 1
  # slurmd answering: the node is usable
  node_state | grep -Eq '^(idle|mixed|allocated|completing)' || return 1
  # slurmdbd answering: sacct works
  timeout 10 sacctmgr -n list cluster format=cluster 2>/dev/null | grep -qw "$CLUSTER" || return 1
}

if is_up; then
  echo "slurm up.sh: already up ($(elapsed "$t0")s)"
  exit 0
fi

# ---------------------------------------------------------------- packages
PKGS=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server libpmix-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "slurm up.sh: installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
t1=$(date +%s.%N)
echo "slurm up.sh: packages ready ($(elapsed "$t0")s)"

# ------------------------------------------------- stop whatever is half up
# A cluster that is partly up (or up with another slurm.conf) is stopped first; the
# daemons below are then all started fresh. munge and MariaDB are kept when alive.
if [ -f /run/slurmctld.pid ] || [ -f /run/slurmd.pid ] || [ -f /run/slurmdbd.pid ]; then
  KEEP_BASE=1 bash "$HERE/down.sh" >/dev/null 2>&1 || true
fi

mkdir -p /etc/slurm /var/spool/slurmd /var/spool/slurmctld "$LOGDIR" /run/munge /run/mysqld
chown munge:munge /run/munge
chown mysql:mysql /run/mysqld

# ---------------------------------------------------------------- munge
# The Debian postinst creates /etc/munge/munge.key; make one if it is missing.
if [ ! -s /etc/munge/munge.key ]; then
  mungekey -c -f -k /etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged --force
  for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# ---------------------------------------------------------------- MariaDB (for slurmdbd)
if ! mariadb-admin ping >/dev/null 2>&1; then
  /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file=/run/mysqld/mysqld.pid \
    >>"$LOGDIR/mariadb.log" 2>&1 &
  for _ in $(seq 1 300); do mariadb-admin ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

# ---------------------------------------------------------------- configuration
cat > /etc/slurm/slurmdbd.conf <<'EOC'
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
EOC
chmod 600 /etc/slurm/slurmdbd.conf
cp "$CONF" /etc/slurm/slurm.conf
chmod 644 /etc/slurm/slurm.conf
# A cold start is a fresh cluster: the saved job state, slurmd's credential state and the
# accounting database go. Otherwise jobs of an earlier life (whose daemons were killed) run
# again, and job ids restart below ids that sacct still knows, so sacct answers for an old
# job with the new one's id. DRYTORCH_SLURM_KEEP_STATE=1 keeps them.
if [ "${DRYTORCH_SLURM_KEEP_STATE:-0}" != 1 ]; then
  rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*
  mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db;"
elif [ -f /var/spool/slurmctld/clustername ] && [ "$(cat /var/spool/slurmctld/clustername)" != "$CLUSTER" ]; then
  # slurmctld refuses to start on a state directory saved under another ClusterName
  rm -rf /var/spool/slurmctld/*
fi

# ---------------------------------------------------------------- SLURM daemons
slurmdbd
# slurmdbd listens on 6819 once its schema is ready
for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/6819) 2>/dev/null && break; sleep 0.1; done
slurmctld
for _ in $(seq 1 100); do timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.1; done
slurmd -N localhost
for _ in $(seq 1 300); do
  st=$(node_state || true)
  case "$st" in
    idle|mixed|allocated) break ;;
    drain*) scontrol update NodeName=localhost State=RESUME 2>/dev/null || true ;;
  esac
  sleep 0.1
done
node_state | grep -Eq '^(idle|mixed|allocated)'
# slurmctld registers the cluster in slurmdbd on its first contact
for _ in $(seq 1 100); do
  sacctmgr -n list cluster format=cluster 2>/dev/null | grep -qw "$CLUSTER" && break; sleep 0.1
done
sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER"
pkgs_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
echo "slurm up.sh: cluster '$CLUSTER' up: packages ${pkgs_s}s, daemons $(elapsed "$t1")s"
