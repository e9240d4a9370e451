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
#   HPCAI_AUDIT_SWEEP_JOBS=200               jobs that never ran, audited per EpilogSlurmctld at most
#   HPCAI_AUDIT_SWEEP_SECONDS=10             and for this long at most (slurm/audit/README.md)
# Slurm drains a node whose prolog or epilog fails, so energy problems are logged, never fatal: each
# script runs its work in main() and exits 0 whatever happened.
cd /
umask 022
HPCAI_ENERGY_CONF=/etc/hpcai/energy.env
unset HPCAI_PYTHON HPCAI_ENERGY_INTERVAL HPCAI_ENERGY_LOG HPCAI_AUDIT_SWEEP_JOBS HPCAI_AUDIT_SWEEP_SECONDS \
  PYTHONPATH PYTHONHOME PYTHONSTARTUP
if [ -f "$HPCAI_ENERGY_CONF" ] && [ ! -L "$HPCAI_ENERGY_CONF" ] &&
   [ "$(stat -c '%u' "$HPCAI_ENERGY_CONF")" = 0 ] && [ $((0$(stat -c '%a' "$HPCAI_ENERGY_CONF") & 022)) = 0 ]; then
  # shellcheck source=/dev/null
  . "$HPCAI_ENERGY_CONF"
fi
HPCAI_PYTHON="${HPCAI_PYTHON:-python3}"
HPCAI_ENERGY_INTERVAL="${HPCAI_ENERGY_INTERVAL:-1}"
HPCAI_ENERGY_LOG="${HPCAI_ENERGY_LOG:-/dev/null}"
export HPCAI_SITE="${HPCAI_SITE:-/etc/hpcai/site.toml}"

# log_path_safe PATH: true when appending to PATH cannot be turned against us. `>>` follows links, so
# whoever owns a folder on the way (or may write it) could swap the log for a link to any file and make root
# append there: every folder from / down must be root's or ours, writable by nobody else (a world-writable one
# only with the sticky bit and only above the log's own folder), and PATH itself, if there, a regular file.
log_path_safe() {
  local path="$1" dir facts uid gid mode first=1
  case "$path" in /*) ;; *) return 1 ;; esac
  if [ -e "$path" ] || [ -L "$path" ]; then
    { [ -f "$path" ] && [ ! -L "$path" ]; } || return 1
  fi
  dir="$(dirname -- "$path")"
  while :; do
    { [ -d "$dir" ] && [ ! -L "$dir" ]; } || return 1
    facts="$(stat -c '%u %g %a' -- "$dir")" || return 1
    read -r uid gid mode <<<"$facts"
    { [ "$uid" = 0 ] || [ "$uid" = "$EUID" ]; } || return 1
    if [ $((0$mode & 020)) != 0 ] && [ "$gid" != 0 ]; then return 1; fi
    if [ $((0$mode & 02)) != 0 ]; then
      { [ "$first" = 0 ] && [ $((0$mode & 01000)) != 0 ]; } || return 1
    fi
    [ "$dir" = / ] && break
    dir="$(dirname -- "$dir")"
    first=0
  done
}

energy_log() {
  local line
  line="$(printf '%s %s job=%s: %s' "$(date -Is)" "$(basename "$0")" "${SLURM_JOB_ID:-?}" "$*")"
  [ "$HPCAI_ENERGY_LOG" = /dev/null ] && return 0
  if log_path_safe "$HPCAI_ENERGY_LOG"; then
    printf '%s\n' "$line" >>"$HPCAI_ENERGY_LOG" 2>/dev/null || true
  else
    # never written through: said on stderr (slurmd's log at debug level), the message with it
    printf 'hpcai: not logging to %s (a folder on the way, or the file, is not root'"'"'s alone): %s\n' \
      "$HPCAI_ENERGY_LOG" "$line" >&2 || true
  fi
}
