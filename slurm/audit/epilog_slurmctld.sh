#!/usr/bin/env bash
# Submission audit (run by slurm/epilog_slurmctld.sh as SlurmUser, once per job on the controller): append
# the job's record (uid, user, account, partition, job id, submit time, sha256 of its batch script) to the
# audit log named by the root-owned site profile's [cluster].audit_log. Identity comes from the variables
# slurmctld sets here, never from the job. Bounded in time; problems are logged, never fatal.
set -euo pipefail
# shellcheck source=slurm/energy/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../energy/common.sh"  # the same trusted settings: HPCAI_PYTHON, HPCAI_SITE

main() {
  local out
  # Jobs cancelled while pending are recorded too, a bounded number per run (energy.env may set the budget):
  # a backlog of thousands is worked off by the following epilogs, none overruns this timeout.
  if ! out="$(timeout 30 "$HPCAI_PYTHON" -I -m hpc_aidc.cli.main admin audit-record \
      --sweep-jobs "${HPCAI_AUDIT_SWEEP_JOBS:-200}" --sweep-seconds "${HPCAI_AUDIT_SWEEP_SECONDS:-10}" 2>&1)"; then
    energy_log "audit: record failed: $out"
  elif [[ "$out" == *"left for later epilogs"* ]]; then
    energy_log "audit: ${out##*; }"
  fi
}

main || true
exit 0
