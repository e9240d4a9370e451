#!/usr/bin/env bash
# Slurm runs every file of slurm.conf's `Prolog=/opt/hpcai/slurm/prolog.d/*`, one after the other, in
# reverse name order (seen on Slurm 22.05): this GPU check first (a bad GPU fails the prolog, drains the
# node and requeues the job, and Slurm runs no further script), then 10-energy.sh (the energy sampler).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../health/gpu_prolog.sh"
