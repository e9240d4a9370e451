#!/usr/bin/env bash
# Slurm Prolog (root, every node of the job, with PrologFlags=Alloc at allocation time): start this
# node's energy sampler for the job, detached, so it outlives the prolog. If the job's batch script also
# starts one, the second finds the node lock taken and exits at once.
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# slurmd kills the prolog's process group once the prolog exits, so the sampler must be in its own
# session by then; on a loaded node the forked child may not have run setsid yet when the prolog ends.
# The child reports through a FIFO once it has (it runs the `sh -c` only after setsid), and we wait.
started="$(mktemp -u "${TMPDIR:-/tmp}/hpcai-prolog.XXXXXXXX")"
mkfifo -m 600 "$started"
trap 'rm -f "$started"' EXIT
if ! setsid -f sh -c 'echo started >"$0"; exec "$@"' "$started" \
    "$HPCAI_PYTHON" -m hpc_aidc.cli.main energy sample \
    --job-id "$SLURM_JOB_ID" --node "$SLURMD_NODENAME" --interval "$HPCAI_ENERGY_INTERVAL" \
    --user "${SLURM_JOB_USER:-}" --account "${SLURM_JOB_ACCOUNT:-}" --source prolog \
    </dev/null >>"$HPCAI_ENERGY_LOG" 2>&1; then
  energy_log "could not start the sampler on ${SLURMD_NODENAME:-?}"
elif ! timeout 10 sh -c 'read -r _ <"$0"' "$started"; then
  energy_log "the sampler on ${SLURMD_NODENAME:-?} did not start within 10 s"
fi
exit 0
