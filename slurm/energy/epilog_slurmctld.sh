#!/usr/bin/env bash
# Slurm EpilogSlurmctld (SlurmUser, once per job run on the controller, after the end): combine the
# nodes' lines into the run's, and store the job's energy over all its runs in its AdminComment (next
# to what other tools keep there), so `sacct -o admincomment` carries it. When slurmdbd does not answer
# the job is spooled; every run of this script then retries the spool for a few seconds, and
# `hpcai energy backfill` (cron) does the same. Bounded in time: slurmctld is never held up for long.
set -euo pipefail
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

main() {
  local nodes out
  nodes="$(scontrol show hostnames "${SLURM_JOB_NODELIST:-}" | paste -sd, -)"
  if ! out="$(timeout 60 "$HPCAI_PYTHON" -I -m hpc_aidc.cli.main energy store-run \
      --job-id "${SLURM_JOB_ID:-}" --nodes "$nodes" --wait 20 2>&1)"; then
    energy_log "store-run failed: $out"
  else
    energy_log "$out"
  fi
  if ! out="$(timeout 20 "$HPCAI_PYTHON" -I -m hpc_aidc.cli.main energy backfill --budget 5 2>&1)"; then
    energy_log "backfill failed: $out"
  elif ! [[ "$out" == "0 stored, 0 still spooled" ]]; then
    energy_log "backfill: ${out//$'\n'/; }"
  fi
}

main || true
exit 0
