# shellcheck shell=bash
# Shared by the energy prolog/epilog scripts (sourced). Settings come from an admin-owned file so the
# scripts run unchanged on any site: /etc/hpcai/energy.env (override with $HPCAI_ENERGY_CONF), e.g.
#   HPCAI_PYTHON=/opt/hpcai/venv/bin/python   the interpreter that has hpc-aidc installed
#   HPCAI_ENERGY_INTERVAL=1                  seconds between samples
#   HPCAI_ENERGY_LOG=/var/log/hpcai-energy.log
#   HPCAI_SITE=/etc/hpcai/site.toml
# Slurm drains a node whose prolog or epilog fails, so energy problems are logged, never fatal.
conf="${HPCAI_ENERGY_CONF:-/etc/hpcai/energy.env}"
if [ -r "$conf" ]; then
  # shellcheck source=/dev/null
  . "$conf"
fi
HPCAI_PYTHON="${HPCAI_PYTHON:-python3}"
HPCAI_ENERGY_INTERVAL="${HPCAI_ENERGY_INTERVAL:-1}"
HPCAI_ENERGY_LOG="${HPCAI_ENERGY_LOG:-/dev/null}"
export HPCAI_SITE="${HPCAI_SITE:-/etc/hpcai/site.toml}"

hpcai_energy() {
  "$HPCAI_PYTHON" -m hpc_aidc.cli.main energy "$@"
}

energy_log() {
  printf '%s %s job=%s: %s\n' "$(date -Is)" "$(basename "$0")" "${SLURM_JOB_ID:-?}" "$*" >>"$HPCAI_ENERGY_LOG" 2>/dev/null || true
}
