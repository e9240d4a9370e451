# shellcheck shell=bash disable=SC2034  # sourced: the variables are used by the scripts that source it
# Shared settings and helpers for the dev cluster scripts (sourced, not run).
DEV_CLUSTER="devcluster"
DEV_STATE="${HPCAI_DEVCLUSTER_STATE:-/var/lib/hpcai-devcluster}"
DEV_RUN="/run/hpcai-devcluster"
DEV_JOBS="/srv/hpcai/jobs"
# The admin kit is installed as on a real cluster (`hpcai admin install`): root-owned scripts under the
# prefix, run by the prefix's venv (scripts/bootstrap.sh makes it), so slurm.conf names nothing in the checkout.
DEV_PREFIX="${HPCAI_DEV_PREFIX:-/opt/hpcai}"
DEV_PYTHON="${HPCAI_DEV_PYTHON:-$DEV_PREFIX/venv/bin/python}"
DEV_ENERGY_LOG="/var/log/hpcai/energy.log"
SLURM_USER="slurm"
DB_PASS="devcluster-only"
DEV_USERS=(alice bob)
DEV_ACCOUNTS=(physics climate)
# user:account associations; root belongs to both projects so tests can submit to either.
DEV_ASSOCS=(root:physics root:climate alice:physics bob:climate)
# Monitoring (hpc-aidc admin kit): Prometheus and node_exporter on loopback, one metrics writer per node.
DEV_MONITORING="$DEV_STATE/monitoring"
DEV_PROMETHEUS_ADDR="127.0.0.1:19090"
DEV_NODE_EXPORTER_ADDR="127.0.0.1:19100"

log() { printf '[devcluster] %s\n' "$*" >&2; }
die() { printf '[devcluster] error: %s\n' "$*" >&2; exit 1; }

# The daemons' programs: a pid read from a file another account can write counts only while /proc shows it
# running the program it should (see pid_of).
SLURMCTLD_BIN=/usr/sbin/slurmctld
SLURMD_BIN=/usr/sbin/slurmd
SLURMDBD_BIN=/usr/sbin/slurmdbd
MUNGED_BIN=/usr/sbin/munged
MARIADBD_BIN=/usr/sbin/mariadbd

# pid_of PIDFILE [PROGRAM]: print the live pid PIDFILE names, when root may signal it; fail otherwise. Root keeps
# its pid files in $DEV_RUN, root's alone; a pid another account could have written (slurmctld and slurmdbd
# write theirs as SlurmUser, munged and MariaDB in folders of their own) counts only when /proc/PID/exe is
# PROGRAM, so neither a planted number nor a reused pid makes root signal some other process. A pid file that
# is a link or not a regular file, or in a folder others may write, never counts without PROGRAM.
pid_of() {
  local file="$1" program="${2:-}" pid facts
  { [ -f "$file" ] && [ ! -L "$file" ]; } || return 1
  pid="$(timeout 2 head -c 32 -- "$file" 2>/dev/null | tr -d '[:space:]')" || return 1
  [[ "$pid" =~ ^[1-9][0-9]{0,9}$ ]] || return 1
  if [ -n "$program" ]; then
    # the binary itself (Debian's /usr/sbin/slurmctld is a link to slurmctld-wlm)
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f -- "$program")" ] || return 1
  else
    facts="$(stat -c '%u %a' -- "$file" "$(dirname -- "$file")" | tr '\n' ' ')" || return 1
    [[ "$facts" =~ ^0\ [0-7]+\ 0\ [0-7]*[0145][0145]\ $ ]] || return 1  # root's file, root's folder, no g/o write
  fi
  kill -0 "$pid" 2>/dev/null || return 1
  printf '%s\n' "$pid"
}

# alive PIDFILE [PROGRAM]: true when PIDFILE names a running process root may signal (pid_of).
alive() { pid_of "$@" >/dev/null; }

# signal_daemon SIGNAL PIDFILE [PROGRAM]: send SIGNAL to the daemon PIDFILE names, only as pid_of allows.
signal_daemon() {
  local pid
  pid="$(pid_of "$2" "${3:-}")" || return 0
  kill "-$1" "$pid" 2>/dev/null || true
}

# secure_root_dir DIR: DIR root's own (0755) with nothing in it that root or its daemons would follow. The run
# and log folders were the SlurmUser's before: a link left there would make root's daemons write (slurmd's pid
# file, slurmctld's chown of its log at start) or root's scripts kill through it.
secure_root_dir() {
  local dir="$1" entry
  if [ -L "$dir" ]; then rm -f -- "$dir"; fi
  mkdir -p -- "$dir"
  chown root:root -- "$dir"
  chmod 0755 -- "$dir"
  for entry in "$dir"/* "$dir"/.[!.]*; do
    { [ -e "$entry" ] || [ -L "$entry" ]; } || continue
    if [ -L "$entry" ] || [ ! -f "$entry" ]; then
      log "removing $entry from $dir (not a plain file)"
      rm -rf -- "$entry"
    fi
  done
}

# wait_for WHAT SECONDS CMD...: retry CMD once a second until it succeeds.
wait_for() {
  local what="$1" limit="$2"; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "$what did not come up within ${limit} s (logs: $DEV_STATE/log)"
    sleep 1
  done
}

# render TEMPLATE OUT KEY=VALUE...: substitute @KEY@ placeholders; writes OUT atomically and only
# when its content changes. Sets CONFIG_CHANGED=1 when it wrote, so daemons can be restarted.
CONFIG_CHANGED=0
render() {
  local template="$1" out="$2"; shift 2
  local text kv
  text="$(cat "$template")"
  for kv in "$@"; do text="${text//"${kv%%=*}"/"${kv#*=}"}"; done
  if [ -f "$out" ] && [ "$(cat "$out")" = "$text" ]; then return 0; fi
  printf '%s\n' "$text" >"$out.tmp" && mv "$out.tmp" "$out"
  CONFIG_CHANGED=1
}

# check_ctld_scripts: slurmctld (Slurm 22.05) checks PrologSlurmctld and EpilogSlurmctld once, at start, as
# SlurmUser. One it cannot execute (missing, not executable, a 0700 folder above it) gets a single line,
#   error: Invalid EpilogSlurmctld(`/root/x/epilog_slurmctld.sh`): Permission denied
# and is then silently never run. Fail with those lines, counting only those since slurmctld's last start
# (`slurmctld version ... started`): a problem fixed and restarted away does not fail forever.
check_ctld_scripts() {
  local logfile="$DEV_STATE/log/slurmctld.log" start bad
  [ -r "$logfile" ] || die "cannot read $logfile to check slurmctld's Prolog/Epilog scripts"
  # anchored at the line start (after the timestamp): user text logged mid-line forges nothing
  start="$(grep -anE '^(\[[^]]*\] )?slurmctld version [^ ]* started( on cluster [^ ]*)?$' "$logfile" \
    | tail -n 1 | cut -d: -f1 || true)"
  bad="$(tail -n "+${start:-1}" "$logfile" \
    | grep -aE '^(\[[^]]*\] )?error: Invalid (Prolog|Epilog|PrologSlurmctld|EpilogSlurmctld)\(' || true)"
  [ -z "$bad" ] || die "slurmctld will not run a script slurm.conf names (since its start, $logfile):
$bad
fix: the script must be executable by root and $SLURM_USER, with every folder above it enterable (namei -l PATH),
then restart slurmctld (scontrol reconfigure does not check it again)"
}
