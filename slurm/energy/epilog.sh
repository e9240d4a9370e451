#!/usr/bin/env bash
# Slurm Epilog (root, every node of the job, after its processes are gone): stop the sampler, read the
# energy counters if the sampler could not (killed, crashed), write the node summary and its line for
# EpilogSlurmctld.
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if ! out="$(hpcai_energy finish --job-id "$SLURM_JOB_ID" --node "$SLURMD_NODENAME" 2>&1)"; then
  energy_log "finish failed on ${SLURMD_NODENAME:-?}: $out"
else
  energy_log "${SLURMD_NODENAME:-?}: $out"
fi
exit 0
