#!/usr/bin/env bash
# Which dev cluster daemons run, and what sinfo says. Exit 0 only when all of them run.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=slurm/devcluster/common.sh
source "$HERE/common.sh"

rc=0
check() {
  local pid
  if pid="$(pid_of "$2" "${3:-}")"; then printf '%-12s running (pid %s)\n' "$1" "$pid"; else printf '%-12s stopped\n' "$1"; rc=1; fi
}
check munged /run/munge/munged.pid "$MUNGED_BIN"
check mariadb /run/mysqld/mariadb.pid "$MARIADBD_BIN"
check slurmdbd "$DEV_RUN/slurmdbd.pid" "$SLURMDBD_BIN"
check slurmctld "$DEV_RUN/slurmctld.pid" "$SLURMCTLD_BIN"
for i in 1 2 3 4; do check "slurmd n$i" "$DEV_RUN/slurmd-n$i.pid" "$SLURMD_BIN"; done
check watchdog "$DEV_RUN/slurmd-watchdog.pid"
if [ "$rc" = 0 ]; then sinfo -N -o '%N %P %T %G'; fi
exit "$rc"
