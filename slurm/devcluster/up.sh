#!/usr/bin/env bash
# Bring up the embedded dev cluster: munge, MariaDB, slurmdbd, slurmctld and four slurmd (n1..n4)
# on this one host, each node with 4 placeholder GPUs declared as GRES. Idempotent: every step checks
# before it acts, so running it again on a live cluster changes nothing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=slurm/devcluster/common.sh
source "$HERE/common.sh"

[ "$(id -u)" = 0 ] || die "the dev cluster needs root (it installs packages and starts daemons); run it with sudo"

install_packages() {
  local missing=()
  local pkg bin
  for pair in slurmctld:slurmctld slurmd:slurmd slurm-client:sbatch slurmdbd:slurmdbd munge:munged mariadb-server:mariadbd; do
    pkg="${pair%%:*}"; bin="${pair##*:}"
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("$pkg")
  done
  apt_install "${missing[@]}"
}

# apt_install PKG...: install the named Debian packages (none: nothing to do).
apt_install() {
  [ "$#" -gt 0 ] || return 0
  log "installing $* (Debian packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_users() {
  local u
  for u in "${DEV_USERS[@]}"; do
    getent passwd "$u" >/dev/null || useradd --create-home --shell /bin/bash "$u"
  done
}

ensure_hosts() {
  # Node names resolve to the loopback address their slurmd answers on, so the first host of
  # SLURM_JOB_NODELIST is a real rendezvous address, as on a cluster.
  local i line
  for i in 1 2 3 4; do
    line="127.0.1.$i n$i"
    grep -qE "^127\.0\.1\.${i}[[:space:]]+n${i}\$" /etc/hosts || echo "$line" >>/etc/hosts
  done
}

# slurm_version: the running Slurm's MAJOR.MINOR (22.05 on Debian 12; 24.11 and 26.05 in chroot.sh's chroots).
slurm_version() {
  local v
  v="$(/usr/sbin/slurmctld -V 2>/dev/null | grep -oE '[0-9]+\.[0-9]+' | head -n 1)" || true
  [ -n "$v" ] || die "cannot tell the Slurm version (slurmctld -V)"
  printf '%s\n' "$v"
}

# at_least VERSION MIN: VERSION (MAJOR.MINOR) is MIN or newer.
at_least() {
  local a="$1" b="$2"
  [[ "$a" =~ ^[0-9]+\.[0-9]+$ && "$b" =~ ^[0-9]+\.[0-9]+$ ]] || return 1
  [ "$((10#${a%%.*}))" -gt "$((10#${b%%.*}))" ] ||
    { [ "$((10#${a%%.*}))" -eq "$((10#${b%%.*}))" ] && [ "$((10#${a#*.}))" -ge "$((10#${b#*.}))" ]; }
}

# HPCAI_DEVCLUSTER_CGROUP=1: processes tracked and confined by cgroups (proctrack/cgroup, task/cgroup with
# ConstrainCores and ConstrainDevices: a job opens only the GPU device files it was given). Default: none
# (a container rarely lets slurmd make cgroups). On cgroup v1 the job cgroups are made in the machine's own
# hierarchy (/sys/fs/cgroup/*/slurm_nN).
CGROUP="${HPCAI_DEVCLUSTER_CGROUP:-0}"
case "$CGROUP" in 0|1) ;; *) die "HPCAI_DEVCLUSTER_CGROUP must be 0 or 1, not '$CGROUP'" ;; esac

# process_tracking: slurm.conf's ProctrackType and TaskPlugin lines (with their comment).
process_tracking() {
  if [ "$CGROUP" = 1 ]; then
    printf '%s\n' "# cgroups (HPCAI_DEVCLUSTER_CGROUP=1): processes tracked, CPUs and GPU devices confined (cgroup.conf)." \
      "ProctrackType=proctrack/cgroup" "TaskPlugin=task/cgroup,task/affinity"
  else
    printf '%s\n' "# No cgroups in this container: track processes by parent pid, no task binding." \
      "ProctrackType=proctrack/linuxproc" "TaskPlugin=task/none"
  fi
}

# version_settings VERSION: the slurm.conf lines only some Slurm versions need, each on its own line (none
# for 22.05, whose slurm.conf stays as it always was).
version_settings() {
  # 24.11 and later check MailProg at start ("Configured MailProg is invalid": no /bin/mail here).
  if at_least "$1" 24.11; then printf '%s\n' "MailProg=/bin/true"; fi
  # Per-user RPC rate limiting (23.02 and later; root and SlurmUser are exempt), as a busy centre runs it: a
  # bucket of 30 RPCs refilled at 2 a second. The Slurm-facing tests then run under it.
  if at_least "$1" 23.02; then printf '%s\n' "SlurmctldParameters=rl_enable,rl_bucket_size=30,rl_refill_rate=2"; fi
}

write_configs() {
  local host version settings
  host="$(hostname)"
  version="$(slurm_version)"
  settings="$(version_settings "$version")"
  mkdir -p /etc/slurm "$DEV_STATE"/{ctld,spool,log,gpu} "$DEV_RUN" "$DEV_JOBS"
  # Root's, not writable by users: root makes each user's folder (ensure_user_folders), since a user who
  # could make their own could make another's and own that user's job tree.
  chown root:root "$DEV_JOBS"
  chmod 0755 "$DEV_JOBS"
  # Only slurmctld's state is the SlurmUser's. The log and run folders stay root's (secure_root_dir, at the
  # start): slurmctld and slurmdbd open their log and pid files as root, then hand the files (not the
  # folders) to the SlurmUser, and root's daemons and scripts write and kill through these folders.
  chown "$SLURM_USER:" "$DEV_STATE/ctld"
  # Character devices with NVIDIA's major number (195) but no driver behind them: Slurm accepts them
  # as GPU device files and sets CUDA_VISIBLE_DEVICES/SLURM_JOB_GPUS exactly as on a GPU node.
  for i in 0 1 2 3; do
    [ -c "$DEV_STATE/gpu/nvidia$i" ] || { rm -f "$DEV_STATE/gpu/nvidia$i"; mknod -m 666 "$DEV_STATE/gpu/nvidia$i" c 195 "$i"; }
  done
  # The version's settings replace their placeholder line together with the line break before it: with
  # none, the file is exactly what it was before versions were told apart.
  render "$HERE/slurm.conf.in" /etc/slurm/slurm.conf \
    "@HOST@=$host" "@STATE@=$DEV_STATE" "@RUN@=$DEV_RUN" "@SLURM_USER@=$SLURM_USER" "@CLUSTER@=$DEV_CLUSTER" \
    "@PREFIX@=$DEV_PREFIX" "@PROCESS_TRACKING@=$(process_tracking)" \
    $'\n'"@VERSION_SETTINGS@=${settings:+$'\n'}$settings"
  render "$HERE/gres.conf.in" /etc/slurm/gres.conf "@STATE@=$DEV_STATE"
  write_cgroup_conf
  SLURM_CONFIG_CHANGED=$CONFIG_CHANGED
  CONFIG_CHANGED=0
  render "$HERE/slurmdbd.conf.in" /etc/slurm/slurmdbd.conf \
    "@HOST@=$host" "@STATE@=$DEV_STATE" "@RUN@=$DEV_RUN" "@SLURM_USER@=$SLURM_USER" "@DBPASS@=$DB_PASS"
  DBD_CONFIG_CHANGED=$CONFIG_CHANGED
  chown "$SLURM_USER:" /etc/slurm/slurmdbd.conf
  chmod 600 /etc/slurm/slurmdbd.conf
}

# write_cgroup_conf: /etc/slurm/cgroup.conf with HPCAI_DEVCLUSTER_CGROUP=1; without, one up.sh wrote is removed.
write_cgroup_conf() {
  local conf=/etc/slurm/cgroup.conf
  if [ "$CGROUP" = 1 ]; then
    printf '%s\n' "# Dev cluster cgroups (HPCAI_DEVCLUSTER_CGROUP=1). Written by slurm/devcluster/up.sh." \
      "CgroupPlugin=autodetect" "ConstrainCores=yes" "ConstrainDevices=yes" "ConstrainRAMSpace=no" >"$conf.tmp"
    if cmp -s "$conf.tmp" "$conf"; then rm -f "$conf.tmp"; else mv "$conf.tmp" "$conf"; CONFIG_CHANGED=1; fi
  elif [ -f "$conf" ] && head -n 1 "$conf" | grep -q 'Written by slurm/devcluster/up.sh'; then
    rm -f "$conf"
    CONFIG_CHANGED=1
  fi
}

start_munge() {
  if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge && chown munge: /run/munge && chmod 755 /run/munge
    [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile /etc/munge/munge.key && chown munge: /etc/munge/munge.key; }
    runuser -u munge -- /usr/sbin/munged
  fi
  wait_for "munge" 20 munge -n -s 1 >/dev/null
}

# mariadb_setting NAME: the server's NAME (socket, datadir) as its config files and built-in defaults make
# it, which its clients agree with (Debian 12: /run/mysqld/mysqld.sock and /var/lib/mysql; sid moved them to
# /run/mariadbd and /var/lib/mariadb).
mariadb_setting() {
  "$MARIADBD_BIN" --verbose --help 2>/dev/null | awk -v k="$1" 'NF == 2 && $1 == k {print $2; exit}' || true
}

start_mariadb() {
  local socket datadir
  socket="$(mariadb_setting socket)"
  socket="${socket:-/run/mysqld/mysqld.sock}"
  datadir="$(mariadb_setting datadir)"
  datadir="${datadir:-/var/lib/mysql}"
  datadir="${datadir%/}"
  if ! mysqladmin --connect-timeout=2 ping >/dev/null 2>&1; then
    mkdir -p /run/mysqld "$(dirname "$socket")" && chown mysql: /run/mysqld "$(dirname "$socket")"
    [ -d "$datadir/mysql" ] || mariadb-install-db --user=mysql --datadir="$datadir" >/dev/null
    local extra=()
    # MariaDB 11.6+ turns innodb_snapshot_isolation on: a write conflict then fails slurmdbd's transaction,
    # which Slurm 26.05 warns is fatal to it. Older MariaDB (Debian 12's 10.11) keeps the old behaviour.
    if at_least "$("$MARIADBD_BIN" --version 2>/dev/null | grep -oE 'Ver [0-9]+\.[0-9]+' | cut -d' ' -f2)" 11.6; then
      extra+=(--innodb-snapshot-isolation=OFF)
    fi
    setsid /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mariadb.pid \
      --socket="$socket" --bind-address=127.0.0.1 --skip-log-error "${extra[@]}" \
      >>"$DEV_STATE/log/mariadb.log" 2>&1 </dev/null &
  fi
  wait_for "MariaDB" 60 mysqladmin --connect-timeout=2 ping
  mysql -u root <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL
}

start_slurmdbd() {
  # slurmdbd reads slurmdbd.conf (PrivateData among it) only at start: a changed config means a restart.
  if [ "$DBD_CONFIG_CHANGED" = 1 ] && alive "$DEV_RUN/slurmdbd.pid" "$SLURMDBD_BIN"; then
    log "config changed: restarting slurmdbd"
    signal_daemon TERM "$DEV_RUN/slurmdbd.pid" "$SLURMDBD_BIN"
    while alive "$DEV_RUN/slurmdbd.pid" "$SLURMDBD_BIN"; do sleep 0.2; done
  fi
  alive "$DEV_RUN/slurmdbd.pid" "$SLURMDBD_BIN" || /usr/sbin/slurmdbd
  wait_for "slurmdbd" 60 sacctmgr -n show cluster
}

ensure_accounting() {
  # Each add is guarded by a lookup: sacctmgr exits 1 on "Nothing new added".
  sacctmgr -n -P show cluster format=cluster | grep -qx "$DEV_CLUSTER" || sacctmgr -i add cluster "$DEV_CLUSTER" >/dev/null
  sacctmgr -n -P show qos format=name | grep -qx debug ||
    sacctmgr -i add qos debug Priority=100 MaxWall=01:00:00 >/dev/null
  local acct
  for acct in "${DEV_ACCOUNTS[@]}"; do
    sacctmgr -n -P show account "$acct" format=account | grep -qx "$acct" ||
      sacctmgr -i add account "$acct" Cluster="$DEV_CLUSTER" Description="dev project $acct" Organization=dev >/dev/null
  done
  local assoc user acct_of
  for assoc in "${DEV_ASSOCS[@]}"; do
    user="${assoc%%:*}"; acct_of="${assoc##*:}"
    sacctmgr -n -P show assoc where user="$user" account="$acct_of" format=user | grep -qx "$user" ||
      sacctmgr -i add user "$user" Account="$acct_of" Cluster="$DEV_CLUSTER" QOS=normal,debug DefaultQOS=normal >/dev/null
  done
  # Each ordinary user's first project is their default account.
  sacctmgr -i modify user where name=alice set DefaultAccount=physics >/dev/null 2>&1 || true
  sacctmgr -i modify user where name=bob set DefaultAccount=climate >/dev/null 2>&1 || true
}

restart_on_config_change() {
  # slurmctld and slurmd read slurm.conf, gres.conf and the Prolog/Epilog settings only at start
  # (EpilogSlurmctld is not picked up by `scontrol reconfigure`), so a changed config means a restart.
  [ "$SLURM_CONFIG_CHANGED" = 1 ] || return 0
  local pidfile program
  for pidfile in "$DEV_RUN"/slurmd-n?.pid "$DEV_RUN/slurmctld.pid"; do
    program="$SLURMD_BIN"
    [ "$pidfile" != "$DEV_RUN/slurmctld.pid" ] || program="$SLURMCTLD_BIN"
    if alive "$pidfile" "$program"; then
      log "config changed: restarting $(basename "$pidfile" .pid)"
      signal_daemon TERM "$pidfile" "$program"
      while alive "$pidfile" "$program"; do sleep 0.2; done
    fi
  done
}

start_slurmctld() {
  alive "$DEV_RUN/slurmctld.pid" "$SLURMCTLD_BIN" || /usr/sbin/slurmctld
  wait_for "slurmctld" 60 scontrol ping
}

start_slurmd() {
  local i
  for i in 1 2 3 4; do
    mkdir -p "$DEV_STATE/spool/n$i"
    alive "$DEV_RUN/slurmd-n$i.pid" "$SLURMD_BIN" || /usr/sbin/slurmd -N "n$i"
  done
}

wait_nodes_idle() {
  local deadline=$((SECONDS + 90)) states
  while :; do
    states="$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u)"
    if echo "$states" | grep -Eq '(down|drain|fail)'; then
      # A node that registered before its slurmd finished starting is marked down; it is healthy now.
      scontrol update nodename=n[1-4] state=resume >/dev/null 2>&1 || true
    fi
    [ "$(echo "$states" | grep -cE ' (idle|mixed|allocated)$')" -ge 4 ] && return 0
    [ "$SECONDS" -lt "$deadline" ] || die "nodes did not become idle: $states (see $DEV_STATE/log)"
    sleep 1
  done
}

write_site_profile() {
  mkdir -p /etc/hpcai
  render "$HERE/site.toml.in" /etc/hpcai/site.toml "@JOBS@=$DEV_JOBS" "@STATE@=$DEV_STATE" "@CLUSTER@=$DEV_CLUSTER"
}

ensure_project_groups() {
  # Energy records are readable by the project's members: one Unix group per Slurm account.
  local assoc user acct_of
  for acct_of in "${DEV_ACCOUNTS[@]}"; do
    getent group "$acct_of" >/dev/null || groupadd "$acct_of"
  done
  for assoc in "${DEV_ASSOCS[@]}"; do
    user="${assoc%%:*}"; acct_of="${assoc##*:}"
    [ "$user" = root ] && continue
    id -nG "$user" | tr ' ' '\n' | grep -qx "$acct_of" || usermod -aG "$acct_of" "$user"
  done
}

install_admin_kit() {
  # The Slurm-side scripts, /etc/hpcai/energy.env, the energy store, its log and the audit folder, laid down
  # by the same command real admins run, before slurmctld starts (it checks EpilogSlurmctld only at start).
  local out
  [ -x "$DEV_PYTHON" ] || die "no Python at $DEV_PYTHON to install hpc-aidc's admin kit with (run scripts/bootstrap.sh)"
  out="$(cd / && "$DEV_PYTHON" -I -m hpc_aidc.cli.main --site /etc/hpcai/site.toml admin install \
    --prefix "$DEV_PREFIX" --python "$DEV_PYTHON" --energy-log "$DEV_ENERGY_LOG" --energy-interval 1 2>&1)" ||
    die "hpcai admin install failed: $out"
  printf '%s\n' "$out" >"$DEV_STATE/admin-install.log"  # root's folder, not SlurmUser's log folder
}

ensure_user_folders() {
  # <job root>/<user> for every user with an association, made by root as a site's admins would.
  local out
  out="$(cd / && "$DEV_PYTHON" -I -m hpc_aidc.cli.main --site /etc/hpcai/site.toml admin user-folders \
    --all-associated --repair 2>&1)" || die "hpcai admin user-folders failed: $out"
}

setup_fake_nvml() {
  # No GPUs here: the energy scripts and samplers read a simulated NVML (a small C library) instead.
  local fake="$DEV_STATE/fake-nvml" src="$HERE/../../tests/monitor/fake_nvml/fake_nvml.c"
  mkdir -p "$fake"
  chmod 755 "$fake"
  if [ -f "$src" ] && { [ ! -f "$fake/libnvidia-ml.so.1" ] || [ "$src" -nt "$fake/libnvidia-ml.so.1" ]; }; then
    command -v gcc >/dev/null || die "gcc is needed to build the simulated NVML ($src)"
    gcc -O2 -shared -fPIC -Wl,-soname,libnvidia-ml.so.1 -o "$fake/libnvidia-ml.so.1.tmp" "$src" -lm
    mv "$fake/libnvidia-ml.so.1.tmp" "$fake/libnvidia-ml.so.1"
  fi
  # `devices`: the placeholder device files, so that inside a job whose devices cgroup denies some GPUs
  # (ConstrainDevices) the fake lists only the job's own, as the driver does
  { printf 'devices %s\n' "$DEV_STATE/gpu"; cat "$HERE/../energy/devcluster-fake-nvml.scenario"; } >"$fake/scenario.tmp"
  chmod 644 "$fake/scenario.tmp"
  mv "$fake/scenario.tmp" "$fake/scenario"
}

setup_audit() {
  # The submission audit log (slurm/audit): SlurmUser's EpilogSlurmctld appends to it; nobody else may write
  # the file or its directory (`hpcai admin install` made the folder); root and SlurmUser's group read.
  local dir="$DEV_STATE/audit"
  if [ -f "$dir/submissions.jsonl" ] && [ ! -L "$dir/submissions.jsonl" ]; then
    chown -h "$SLURM_USER:$(id -gn "$SLURM_USER")" "$dir/submissions.jsonl"
    chmod 0640 "$dir/submissions.jsonl"
  fi
}

write_job_submit_policy() {
  # The site policy for slurmctld (JobSubmitPlugins=lua), rendered from the site profile by hpc-aidc
  # (`hpcai admin policy`). slurmctld reloads job_submit.lua by itself when it changes: only a changed
  # slurm.conf restarts it (below).
  local out
  [ -x "$DEV_PYTHON" ] || die "no Python at $DEV_PYTHON to render job_submit.lua with (run scripts/bootstrap.sh)"
  out="$(cd / && "$DEV_PYTHON" -I -m hpc_aidc.cli.main --site /etc/hpcai/site.toml admin policy \
    --out /etc/slurm/job_submit.lua 2>&1)" || die "could not render /etc/slurm/job_submit.lua: $out"
}

install_monitoring_packages() {
  # Debian's Prometheus and node_exporter (textfile collector). Their packages would start system
  # services where an init system runs: ours listen on other loopback ports, so nothing collides.
  local missing=() pkg
  for pkg in prometheus prometheus-node-exporter; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  apt_install "${missing[@]}"
}

# start_daemon PIDFILE LOG CMD...: CMD in its own session, in the background, its pid in PIDFILE.
start_daemon() {
  local pidfile="$1" logfile="$2"; shift 2
  alive "$pidfile" && return 0
  (cd / && exec setsid "$@" >>"$logfile" 2>&1 </dev/null) &
  echo "$!" >"$pidfile"
}

# The dev cluster's one monitoring login: Prometheus scrapes node_exporter with it, admins and tests query
# Prometheus with it. Both servers ask for it (a web config): their metrics name every running job's user
# and account, which PrivateData hides from other users.
MONITORING_LOGIN=hpcai

# bcrypt_hash FILE: a bcrypt hash of the password in FILE, which is read on stdin (a command line is
# readable by every local user). Python's crypt (libxcrypt does bcrypt) or else htpasswd (apache2-utils).
bcrypt_hash() {
  local hash
  hash="$(cd / && "$DEV_PYTHON" -I -W ignore::DeprecationWarning -c 'import crypt, sys
print(crypt.crypt(sys.stdin.read().strip(), crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1024)) or "")' \
    <"$1" 2>/dev/null)" || hash=""
  if [ -z "$hash" ] && command -v htpasswd >/dev/null; then
    hash="$(htpasswd -niBC 10 "" <"$1" | tr -d ':\n')"
  fi
  case "$hash" in
    \$2*) printf '%s\n' "$hash" ;;
    *) die "cannot make a bcrypt hash for the monitoring web config (install apache2-utils for htpasswd)" ;;
  esac
}

# ensure_monitoring_login GID: $DEV_MONITORING/web/{password,web-config.yml}, root:GID 0640 in a 0750
# folder, made once (a fresh password and its hash together). node_exporter and Prometheus re-read the web
# config at every request.
ensure_monitoring_login() {
  local gid="$1" dir="$DEV_MONITORING/web" hash
  install -d -o root -g "$gid" -m 0750 "$dir"
  if [ ! -s "$dir/password" ] || [ ! -s "$dir/web-config.yml" ]; then
    (umask 077 && cd / && "$DEV_PYTHON" -I -c 'import secrets; print(secrets.token_urlsafe(24))' >"$dir/password.tmp")
    hash="$(bcrypt_hash "$dir/password.tmp")"
    printf '# Written by slurm/devcluster/up.sh: the login node_exporter and Prometheus ask for.\nbasic_auth_users:\n  %s: "%s"\n' \
      "$MONITORING_LOGIN" "$hash" >"$dir/web-config.yml.tmp"
    chown root:"$gid" "$dir/password.tmp" "$dir/web-config.yml.tmp"
    chmod 0640 "$dir/password.tmp" "$dir/web-config.yml.tmp"
    mv "$dir/password.tmp" "$dir/password"
    mv "$dir/web-config.yml.tmp" "$dir/web-config.yml"
  fi
}

# stop_unless_running_with PIDFILE ARG: stop a daemon whose command line lacks ARG (started by an older
# up.sh, e.g. without its web config), so that start_daemon starts it again as it is now.
stop_unless_running_with() {
  local pidfile="$1" arg="$2" pid
  pid="$(pid_of "$pidfile")" || return 0
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$arg" && return 0
  log "restarting $(basename "$pidfile" .pid) with $arg"
  signal_daemon TERM "$pidfile"
  while alive "$pidfile"; do sleep 0.2; done
}

start_monitoring() {
  # node_exporter serves the textfile directory the per-node metrics writers (`hpcai admin metrics`,
  # root, like the prolog) fill; Prometheus scrapes it. All on loopback; data under $DEV_MONITORING.
  # Nothing of it is readable by ordinary users: the textfile folder is root:prometheus 0750 (the writers'
  # files 0640), Prometheus's data 0700, and both servers ask for the monitoring login.
  local python="$DEV_PYTHON" i user gid web code
  mkdir -p "$DEV_MONITORING/textfile" "$DEV_MONITORING/tsdb"
  user=prometheus
  getent passwd "$user" >/dev/null || user=nobody
  gid="$(id -g "$user")"
  chown root:"$gid" "$DEV_MONITORING/textfile"
  chmod 0750 "$DEV_MONITORING/textfile"
  chown "$user:" "$DEV_MONITORING/tsdb"
  chmod 0700 "$DEV_MONITORING/tsdb"
  ensure_monitoring_login "$gid"
  web="$DEV_MONITORING/web"
  stop_unless_running_with "$DEV_RUN/node-exporter.pid" "--web.config.file=$web/web-config.yml"
  stop_unless_running_with "$DEV_RUN/prometheus.pid" "--web.config.file=$web/web-config.yml"
  # A writer started before hpc-aidc was (re)installed runs the old code (e.g. 0644 files): restart it.
  code="$(cd / && "$python" -I -c 'import hpc_aidc.monitor.exporter as m; print(m.__file__)')"
  for i in 1 2 3 4; do
    if alive "$DEV_RUN/metrics-n$i.pid" && [ "$code" -nt "$DEV_RUN/metrics-n$i.pid" ]; then
      log "restarting the metrics writer of n$i (hpc-aidc was reinstalled)"
      signal_daemon TERM "$DEV_RUN/metrics-n$i.pid"
      while alive "$DEV_RUN/metrics-n$i.pid"; do sleep 0.2; done
    fi
  done
  CONFIG_CHANGED=0
  render "$HERE/prometheus.yml.in" "$DEV_MONITORING/prometheus.yml" "@NODE_EXPORTER@=$DEV_NODE_EXPORTER_ADDR" \
    "@LOGIN@=$MONITORING_LOGIN" "@PASSWORD_FILE@=$web/password"
  if [ "$CONFIG_CHANGED" = 1 ] && alive "$DEV_RUN/prometheus.pid"; then
    signal_daemon HUP "$DEV_RUN/prometheus.pid"  # Prometheus reloads its config on SIGHUP
  fi
  start_daemon "$DEV_RUN/node-exporter.pid" "$DEV_STATE/log/node-exporter.log" \
    setpriv --reuid="$user" --regid="$gid" --init-groups -- /usr/bin/prometheus-node-exporter \
    --web.listen-address="$DEV_NODE_EXPORTER_ADDR" --web.config.file="$web/web-config.yml" \
    --collector.disable-defaults --collector.textfile --collector.textfile.directory="$DEV_MONITORING/textfile"
  start_daemon "$DEV_RUN/prometheus.pid" "$DEV_STATE/log/prometheus.log" \
    setpriv --reuid="$user" --regid="$gid" --init-groups -- /usr/bin/prometheus \
    --config.file="$DEV_MONITORING/prometheus.yml" --storage.tsdb.path="$DEV_MONITORING/tsdb" \
    --storage.tsdb.retention.time=2d --web.listen-address="$DEV_PROMETHEUS_ADDR" \
    --web.config.file="$web/web-config.yml"
  for i in 1 2 3 4; do
    start_daemon "$DEV_RUN/metrics-n$i.pid" "$DEV_STATE/log/metrics-n$i.log" \
      env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin SLURMD_NODENAME="n$i" \
      "$python" -I -m hpc_aidc.cli.main admin metrics --node "n$i" --interval 2 \
      --textfile-dir "$DEV_MONITORING/textfile" --spool "$DEV_STATE/spool/n$i"
  done
  # The password is read from its file by Python, never put on a command line.
  wait_for "Prometheus" 60 "$python" -I -c 'import base64, sys, urllib.request as u
login = base64.b64encode(f"{sys.argv[2]}:{open(sys.argv[3]).read().strip()}".encode()).decode()
u.urlopen(u.Request(sys.argv[1], headers={"Authorization": f"Basic {login}"}), timeout=2)' \
    "http://$DEV_PROMETHEUS_ADDR/-/ready" "$MONITORING_LOGIN" "$web/password"
}

stop_watchdog() {
  # up.sh restarts daemons itself (a changed config): the watchdog must not race it.
  alive "$DEV_RUN/slurmd-watchdog.pid" || return 0
  signal_daemon TERM "$DEV_RUN/slurmd-watchdog.pid"
  while alive "$DEV_RUN/slurmd-watchdog.pid"; do sleep 0.2; done
}

start_watchdog() {
  start_daemon "$DEV_RUN/slurmd-watchdog.pid" "$DEV_STATE/log/slurmd-watchdog.log" bash "$HERE/slurmd-watchdog.sh"
}

start=$SECONDS
secure_root_dir "$DEV_RUN"  # first: every pid root reads below comes from here
secure_root_dir "$DEV_STATE/log"
stop_watchdog
install_packages
install_monitoring_packages
ensure_users
ensure_project_groups
ensure_hosts
write_configs
write_site_profile
setup_fake_nvml
install_admin_kit
write_job_submit_policy
start_munge
start_mariadb
start_slurmdbd
ensure_accounting
ensure_user_folders
restart_on_config_change
start_slurmctld
start_slurmd
wait_nodes_idle
start_watchdog
setup_audit
start_monitoring
check_ctld_scripts
log "dev cluster up in $((SECONDS - start)) s"
sinfo -o '%P %D %T %G %N'
