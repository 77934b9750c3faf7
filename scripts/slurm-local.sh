#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, from Debian's slurm-wlm and munge, for
# resbench's `slurm` tests and for trying `--executor slurm` without a cluster:
#
#   scripts/slurm-local.sh install   # apt-get install slurm-wlm munge (root, once)
#   scripts/slurm-local.sh start     # munged, slurmctld, slurmd; prints `export SLURM_CONF=...`
#   scripts/slurm-local.sh status    # sinfo
#   scripts/slurm-local.sh stop      # the daemons, by the PIDs in their pid files
#
# No cgroups, no systemd, no accounting daemon: proctrack/linuxproc, task/none. Two fake GPUs
# (/dev/fakegpu0-1, gres.conf) so that GPU placement can be tested on a machine without one.
# Everything lives under $RESBENCH_SLURM_DIR (default /tmp/resbench-slurm).
set -euo pipefail
DIR=${RESBENCH_SLURM_DIR:-/tmp/resbench-slurm}
CONF=$DIR/slurm.conf
NODE=$(hostname -s)

die() { echo "slurm-local: $*" >&2; exit 1; }

install() {
  [ "$(id -u)" = 0 ] || die "install needs root (apt-get)"
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
}

munge_up() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  [ "$(id -u)" = 0 ] || die "munged is not running and starting it needs root"
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
  mkdir -p "$DIR" && touch "$DIR/munged.ours"  # ours to stop
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "munged did not come up"
}

write_conf() {
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  local cpus mem
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
  for i in 0 1; do [ -e /dev/fakegpu$i ] || mknod /dev/fakegpu$i c 1 3; done
  cat > "$CONF" <<EOF
ClusterName=resbench-local
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobRequeue=1
# finished jobs stay known to scontrol for an hour: their end state (TIMEOUT, CANCELLED, ...)
MinJobAge=3600
KillWait=5
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=${RESBENCH_SLURMCTLD_PORT:-6817}
SlurmdPort=${RESBENCH_SLURMD_PORT:-6818}
GresTypes=gpu
NodeName=$NODE CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  cat > "$DIR/gres.conf" <<EOF
AutoDetect=off
Name=gpu File=/dev/fakegpu[0-1]
EOF
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  command -v slurmctld >/dev/null || die "slurm-wlm is not installed (scripts/slurm-local.sh install)"
  [ "$(id -u)" = 0 ] || die "start needs root (SlurmUser=root, munged, /dev/fakegpu*)"
  munge_up
  if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"; then
    echo "export SLURM_CONF=$CONF"; return 0
  fi
  write_conf
  export SLURM_CONF=$CONF
  alive "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
  alive "$DIR/slurmd.pid" || slurmd -f "$CONF"
  for _ in $(seq 100); do
    if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
      echo "export SLURM_CONF=$CONF"; return 0
    fi
    sleep 0.2
  done
  tail -5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
  die "the node did not become idle (logs above)"
}

stop_pid() {
  local pid; pid=$(cat "$1"); kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
}

stop() {
  for d in slurmd slurmctld; do
    alive "$DIR/$d.pid" && stop_pid "$DIR/$d.pid"
  done
  if [ -e "$DIR/munged.ours" ] && alive /run/munge/munged.pid; then
    stop_pid /run/munge/munged.pid && rm -f "$DIR/munged.ours"
  fi
  return 0
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) SLURM_CONF=$CONF sinfo ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
