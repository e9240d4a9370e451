#!/usr/bin/env bash
# Slurm EpilogSlurmctld (SlurmUser, once per job on the controller, after the end): combine the nodes'
# summary lines into one and store it with the job in slurmdbd, so `sacct -o admincomment` carries it.
# One sacctmgr call per job; node epilogs never write accounting themselves, so none overwrites another.
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

nodes="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | paste -sd, -)"
if ! line="$(hpcai_energy combine --job-id "$SLURM_JOB_ID" --nodes "$nodes" --wait 60 2>&1)"; then
  energy_log "combine failed: $line"
  exit 0
fi
if ! out="$(sacctmgr -i modify job where jobid="$SLURM_JOB_ID" set AdminComment="$line" 2>&1)"; then
  energy_log "sacctmgr failed: $out"
  exit 0
fi
energy_log "stored: $line"
exit 0
