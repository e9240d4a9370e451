#!/usr/bin/env bash
# Part of `Prolog=/opt/hpcai/slurm/prolog.d/*`, run after 20-gpu-health.sh (Slurm runs them in reverse
# name order and stops at the first that fails): start this node's energy sampler.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../energy/prolog.sh"
