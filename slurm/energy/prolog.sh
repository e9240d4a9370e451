#!/usr/bin/env bash
# Slurm Prolog (root, every node of the job, with PrologFlags=Alloc at allocation time): start this
# node's energy sampler for this run of the job. `energy sample --detach` returns once the sampler is
# in its own session (slurmd kills the prolog's process group when the prolog exits) and has made the
# run's record directory, root's own, before the job's user can act. Never fails the prolog: a node is
# not drained because energy could not be measured.
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

main() {
  local out
  if ! out="$(timeout 30 "$HPCAI_PYTHON" -I -m hpc_aidc.cli.main energy sample --detach \
      --job-id "${SLURM_JOB_ID:-}" --node "${SLURMD_NODENAME:-}" --interval "$HPCAI_ENERGY_INTERVAL" \
      --user "${SLURM_JOB_USER:-}" --account "${SLURM_JOB_ACCOUNT:-}" --source prolog \
      --log "$HPCAI_ENERGY_LOG" </dev/null 2>&1)"; then
    energy_log "could not start the sampler on ${SLURMD_NODENAME:-?}: $out"
  elif [ -n "$out" ]; then
    energy_log "$out"
  fi
}

main || true
exit 0
