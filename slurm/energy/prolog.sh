#!/usr/bin/env bash
# Slurm Prolog (root, every node of the job, with PrologFlags=Alloc at allocation time): start this
# node's energy sampler for the job, detached, so it outlives the prolog. If the job's batch script also
# starts one, the second finds the node lock taken and exits at once.
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if ! setsid -f "$HPCAI_PYTHON" -m hpc_aidc.cli.main energy sample \
    --job-id "$SLURM_JOB_ID" --node "$SLURMD_NODENAME" --interval "$HPCAI_ENERGY_INTERVAL" \
    --user "${SLURM_JOB_USER:-}" --account "${SLURM_JOB_ACCOUNT:-}" --source prolog \
    </dev/null >>"$HPCAI_ENERGY_LOG" 2>&1; then
  energy_log "could not start the sampler on ${SLURMD_NODENAME:-?}"
fi
exit 0
