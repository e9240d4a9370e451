#!/usr/bin/env bash
# Start again any dev cluster slurmd that died. Slurm 22.05's slurmd has aborted here on a heap check
# (malloc in nodelist_find, under bursts of job launches); its slurmstepds and so its jobs live on, and a
# slurmd back within SlurmdTimeout finds them again, so the node never goes DOWN and no job is lost.
# up.sh starts this after the cluster is up and stops it while it (re)starts daemons itself.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=slurm/devcluster/common.sh
source "$HERE/common.sh"

while sleep 2; do
  for i in 1 2 3 4; do
    alive "$DEV_RUN/slurmd-n$i.pid" "$SLURMD_BIN" && continue
    log "$(date -Is) slurmd n$i is not running: starting it again"
    /usr/sbin/slurmd -N "n$i" || log "slurmd n$i did not start (see $DEV_STATE/log/slurmd-n$i.log)"
  done
done
