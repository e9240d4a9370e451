#!/usr/bin/env bash
# The main job on the embedded dev cluster: set everything up, submit a 2-node job through hpcai,
# wait for it, and show what each rank printed and what Slurm accounting recorded.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/bootstrap.sh
HPCAI="$ROOT/.venv/bin/hpcai"

echo
echo "== hpcai submit run: 2 nodes x 2 GPUs, project physics"
out="$("$HPCAI" submit run --nodes 2 --gpus-per-node 2 --account physics --job-name demo --wait --json -- \
  bash -c 'echo "rank $SLURM_PROCID of $SLURM_NTASKS on $SLURMD_NODENAME, GPUs $CUDA_VISIBLE_DEVICES"')"
job_id="$(printf '%s' "$out" | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["job_id"])')"

echo "== what each rank printed"
for task in 0 1 2 3; do "$HPCAI" logs "$job_id" --task "$task" | grep '^rank '; done

echo
echo "== hpcai status $job_id"
"$HPCAI" status "$job_id"

echo
echo "== sacct (Slurm accounting, slurmdbd + MariaDB)"
sacct -X -j "$job_id" -o JobID,JobName,Account,NNodes,AllocTRES%40,State,Elapsed
