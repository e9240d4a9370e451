#!/usr/bin/env bash
# Slurm Epilog (root, every node of the job, after its processes are gone): stop this run's sampler,
# read the energy counters if the sampler could not (killed, crashed), write the node summary and its
# line for EpilogSlurmctld. Never fails the epilog (that would drain the node).
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

main() {
  local out
  if ! out="$(timeout 60 "$HPCAI_PYTHON" -I -m hpc_aidc.cli.main energy finish \
      --job-id "${SLURM_JOB_ID:-}" --node "${SLURMD_NODENAME:-}" 2>&1)"; then
    energy_log "finish failed on ${SLURMD_NODENAME:-?}: $out"
  else
    energy_log "${SLURMD_NODENAME:-?}: $out"
  fi
}

main || true
exit 0
