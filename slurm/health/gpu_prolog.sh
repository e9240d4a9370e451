#!/usr/bin/env bash
# Slurm Prolog part (root, every node of the job, at allocation with PrologFlags=Alloc): check the job's
# GPUs (SLURM_JOB_GPUS) through NVML before anything of the job runs on them, with `hpcai doctor`'s
# verdicts, draining only for what lasts (`hpcai admin gpu-health --catalogue`): a GPU that is missing, has
# uncorrectable ECC errors or retired pages, pending or failed row remapping, a hardware slowdown (thermal,
# power brake) still there after 5 s of samples, or a critical Xid the driver reports meanwhile, is bad; a
# slowdown that clears (a hot previous job) is logged only. Then the node is drained with a reason
# naming the GPU and the fault (`hpcai admin gpu-health --drain`), and this script exits 1: Slurm requeues
# the job (with SchedulerParameters=nohold_on_prolog_fail it is not held) and it runs on another node.
# A failure of the check itself (no NVML, a crash, a timeout) is logged and never fails the prolog, so a
# node is never drained because the tool broke. Settings and logging as for the energy scripts
# (/etc/hpcai/energy.env, root-owned only; python -I from /).
set -euo pipefail
# shellcheck source=../energy/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../energy/common.sh"

# Exit status of `hpcai admin gpu-health` for "a GPU of this job is bad" (nothing else exits 3).
UNHEALTHY=3

main() {
  local out rc=0
  [ -n "${SLURM_JOB_GPUS:-}" ] || return 0  # no GPUs in this job on this node: nothing to check
  out="$(timeout 30 "$HPCAI_PYTHON" -I -m hpc_aidc.cli.main admin gpu-health --prolog --drain \
      --node "${SLURMD_NODENAME:-}" --job-id "${SLURM_JOB_ID:-}" --gpus "${SLURM_JOB_GPUS:-}" \
      </dev/null 2>&1)" || rc=$?
  if [ "$rc" = "$UNHEALTHY" ] && [[ "$out" == *"UNHEALTHY: "* ]]; then
    energy_log "gpu-health on ${SLURMD_NODENAME:-?}: ${out##*UNHEALTHY: }; job requeued"
    return "$UNHEALTHY"
  fi
  if [ "$rc" != 0 ]; then
    energy_log "gpu-health could not check ${SLURMD_NODENAME:-?} (exit $rc); job allowed: $out"
  elif [ -n "$out" ]; then
    energy_log "gpu-health on ${SLURMD_NODENAME:-?}: ${out//$'\n'/; }; job allowed"  # notes: what passed
  fi
  return 0
}

rc=0
main || rc=$?
if [ "$rc" = "$UNHEALTHY" ]; then
  exit 1
fi
exit 0
