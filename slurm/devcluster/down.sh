#!/usr/bin/env bash
# Stop every daemon the dev cluster started, by pid file; state and accounting data are kept.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=slurm/devcluster/common.sh
source "$HERE/common.sh"

# stop NAME PIDFILE [PROGRAM]: TERM, then KILL, the daemon PIDFILE names (only as pid_of allows: see common.sh).
stop() {
  local name="$1" pidfile="$2" pid
  pid="$(pid_of "$pidfile" "${3:-}")" || return 0
  kill "$pid"
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || { log "stopped $name ($pid)"; return 0; }; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  log "killed $name ($pid)"
}

stop "slurmd watchdog" "$DEV_RUN/slurmd-watchdog.pid"  # first: it would start the slurmds again
for i in 1 2 3 4; do stop "metrics writer n$i" "$DEV_RUN/metrics-n$i.pid"; done
stop prometheus "$DEV_RUN/prometheus.pid"
stop node_exporter "$DEV_RUN/node-exporter.pid"
for i in 1 2 3 4; do stop "slurmd n$i" "$DEV_RUN/slurmd-n$i.pid" "$SLURMD_BIN"; done
stop slurmctld "$DEV_RUN/slurmctld.pid" "$SLURMCTLD_BIN"
stop slurmdbd "$DEV_RUN/slurmdbd.pid" "$SLURMDBD_BIN"
stop mariadb /run/mysqld/mariadb.pid "$MARIADBD_BIN"
stop munged /run/munge/munged.pid "$MUNGED_BIN"
