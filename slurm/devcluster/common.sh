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

# alive PIDFILE: true when the pid in PIDFILE is a running process.
alive() { [ -s "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }

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
