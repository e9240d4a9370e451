# shellcheck shell=bash
# Shared by the energy prolog/epilog scripts (sourced). These run as root (prolog, epilog) or as the
# SlurmUser (EpilogSlurmctld), so nothing here comes from a user: the settings file has a fixed path and
# is used only when root owns it and nobody else can write it, Python runs isolated (-I: no PYTHON*
# variables, no user site-packages, not the current directory on sys.path), from /.
#   /etc/hpcai/energy.env, e.g.
#   HPCAI_PYTHON=/opt/hpcai/venv/bin/python   the interpreter that has hpc-aidc installed
#   HPCAI_ENERGY_INTERVAL=1                  seconds between samples
#   HPCAI_ENERGY_LOG=/var/log/hpcai-energy.log
#   HPCAI_SITE=/etc/hpcai/site.toml
# Slurm drains a node whose prolog or epilog fails, so energy problems are logged, never fatal: each
# script runs its work in main() and exits 0 whatever happened.
cd /
umask 022
HPCAI_ENERGY_CONF=/etc/hpcai/energy.env
unset HPCAI_PYTHON HPCAI_ENERGY_INTERVAL HPCAI_ENERGY_LOG PYTHONPATH PYTHONHOME PYTHONSTARTUP
if [ -f "$HPCAI_ENERGY_CONF" ] && [ ! -L "$HPCAI_ENERGY_CONF" ] &&
   [ "$(stat -c '%u' "$HPCAI_ENERGY_CONF")" = 0 ] && [ $((0$(stat -c '%a' "$HPCAI_ENERGY_CONF") & 022)) = 0 ]; then
  # shellcheck source=/dev/null
  . "$HPCAI_ENERGY_CONF"
fi
HPCAI_PYTHON="${HPCAI_PYTHON:-python3}"
HPCAI_ENERGY_INTERVAL="${HPCAI_ENERGY_INTERVAL:-1}"
HPCAI_ENERGY_LOG="${HPCAI_ENERGY_LOG:-/dev/null}"
export HPCAI_SITE="${HPCAI_SITE:-/etc/hpcai/site.toml}"

energy_log() {
  printf '%s %s job=%s: %s\n' "$(date -Is)" "$(basename "$0")" "${SLURM_JOB_ID:-?}" "$*" >>"$HPCAI_ENERGY_LOG" 2>/dev/null || true
}
