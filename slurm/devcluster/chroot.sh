#!/usr/bin/env bash
# The dev cluster on a current Slurm: a Debian chroot (trixie: Slurm 24.11, sid: Slurm 26.05) in private
# namespaces, running this checkout's own up.sh inside it, so one set of scripts serves every version.
#
#   chroot.sh VERSION build              debootstrap + packages (idempotent; redone only when the list changes)
#   chroot.sh VERSION up [--cgroup|--no-cgroup]   namespaces, mounts, then up.sh inside (--cgroup: proctrack
#                                        and task cgroup, as HPCAI_DEVCLUSTER_CGROUP=1; the default is that variable)
#   chroot.sh VERSION down               down.sh inside, then the namespaces go (every mount and process with them)
#   chroot.sh VERSION status             status.sh inside
#   chroot.sh VERSION run CMD...         CMD inside, e.g. `chroot.sh 24.11 run sinfo`
#   chroot.sh VERSION shell              an interactive shell inside
#
# VERSION: 24.11 (Debian trixie) or 26.05 (Debian sid). The chroot lives in /var/lib/hpcai-chroots/SUITE.
# Namespaces: mount (private: nothing is ever mounted on the host), pid (the holder is pid 1; when it goes,
# every process of the cluster goes), UTS (its own hostname) and net (its own loopback: the daemons use the
# same ports and 127.0.1.x addresses as the host's dev cluster without meeting it). Bound in read-only: the
# host's Python 3.11 (the venv's interpreter) and /opt/hpcai/venv; read-write: this checkout (the test suite
# writes artifacts/ in it); each at the path it has here.
# Shared libraries that Python needs and the suite renamed (libffi.so.8, libexpat.so.1 ...) are copied in
# from the host (/usr/local/lib/hpcai-host-libs). The admin kit, /etc/slurm, MariaDB, munge and the
# cluster's state are the chroot's own. Only one cluster at a time should run with cgroups: on cgroup v1 the
# job cgroups are made in the host's hierarchy (/sys/fs/cgroup/*/slurm_nN), which `down` removes.
set -euo pipefail

# physical paths: hpc_aidc/share/slurm in a checkout is a link to slurm/, and the checkout is bound in as is
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO="$(cd "$HERE/../.." && pwd -P)"  # the folder holding slurm/ (a checkout, or hpc_aidc/share in a wheel)
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
BASE="${HPCAI_CHROOT_BASE:-/var/lib/hpcai-chroots}"
RUN_DIR="/run/hpcai-chroots"
HOST_PREFIX="${HPCAI_DEV_PREFIX:-/opt/hpcai}"
CHROOT_PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What up.sh needs (install_packages, install_monitoring_packages, setup_fake_nvml, its helpers), the shell
# tools the scripts call, and lua5.1 for the job_submit.lua tests. Inside, up.sh finds them all and never
# calls apt (the private network namespace has no way out).
PACKAGES=(slurmctld slurmd slurmdbd slurm-client slurm-wlm-basic-plugins munge mariadb-server mariadb-client
  prometheus prometheus-node-exporter lua5.1 gcc libc6-dev procps iproute2 util-linux hostname passwd
  ca-certificates curl less g++ ninja-build git python3)
# (g++, ninja: DeepSpeed's CPU Adam op; git: environment capture; python3: users' commands, as on a node)
BUILD_REVISION=1  # bump to force the package step again

log() { printf '[chroot] %s\n' "$*" >&2; }
die() { printf '[chroot] error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '3,11p' "$SELF" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[ "$#" -ge 2 ] || usage
VERSION="$1"; ACTION="$2"; shift 2
case "$VERSION" in
  24.11) SUITE=trixie ;;
  26.05) SUITE=sid ;;
  *) die "unknown Slurm version '$VERSION' (24.11 or 26.05; 22.05 is the host's own: slurm/devcluster/up.sh)" ;;
esac
DIR="$BASE/$SUITE"
PIDFILE="$RUN_DIR/$SUITE.pid"
ROOTFILE="$RUN_DIR/$SUITE.root"  # the REPO bound in by the running holder: its scripts are the ones inside
STAMP="$DIR/etc/hpcai-chroot.stamp"
INNER_HOSTNAME="hpcai-$SUITE"

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, namespaces, chroot)"

# mirror: the host's own Debian mirror (deb822 sources, then sources.list), deb.debian.org otherwise
mirror() {
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri="$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri="$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list)"
  fi
  printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}


# holder_pid: the host pid of the namespace holder (pid 1 inside), when it runs; fails otherwise.
holder_pid() {
  local pid
  [ -f "$PIDFILE" ] || return 1
  pid="$(head -c 32 "$PIDFILE" | tr -d '[:space:]')"
  [[ "$pid" =~ ^[1-9][0-9]*$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # it is ours: its root (seen from the host) is the host's, and it runs in a mount namespace of its own
  [ "$(readlink "/proc/$pid/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "/chroot.sh $VERSION _holder" || return 1
  printf '%s\n' "$pid"
}

# inner_root: the folder holding slurm/ that the running holder bound in (this one's, for a holder started
# before the file was written).
inner_root() {
  local root
  root="$(head -n 1 "$ROOTFILE" 2>/dev/null)" || true
  printf '%s\n' "${root:-$REPO}"
}

# inside CMD...: CMD chrooted in the holder's namespaces, with a clean environment (HPCAI_* passed on).
inside() {
  local pid env=(HOME=/root LANG=C.UTF-8 "PATH=$CHROOT_PATH" "TERM=${TERM:-dumb}") var
  pid="$(holder_pid)" || die "the $VERSION chroot is not up (chroot.sh $VERSION up)"
  for var in $(compgen -e); do
    case "$var" in HPCAI_CHROOT_BASE) ;; HPCAI_*) env+=("$var=${!var}") ;; esac
  done
  nsenter -t "$pid" -m -p -n -u -- chroot "$DIR" /usr/bin/env -i "${env[@]}" "$@"
}

# in_build_ns [--net] CMD...: CMD chrooted with /proc and /dev, in throwaway mount+pid namespaces (--net: and
# without a network, so nothing a package's scripts start could listen on the host's ports).
in_build_ns() {
  local net=()
  if [ "${1:-}" = --net ]; then net=(--net); shift; fi
  # shellcheck disable=SC2016  # expanded by the inner bash
  unshare --mount --propagation private --pid --fork "${net[@]}" -- bash -c '
    set -euo pipefail
    dir="$1"; shift
    mount -t proc proc "$dir/proc"
    mount --rbind /dev "$dir/dev"
    mount -t tmpfs -o mode=755 tmpfs "$dir/run"
    mkdir -p "$dir/run/lock"
    exec chroot "$dir" /usr/bin/env -i HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"' _ "$DIR" "$@"
}

build() {
  local want t
  # a heavy step on a shared machine: everything below (and what it starts) at the lowest CPU and I/O priority
  renice -n 19 -p "$$" >/dev/null
  ionice -c3 -p "$$"
  command -v debootstrap >/dev/null || {
    log "installing debootstrap on the host"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  install -d -o root -g root -m 0755 "$BASE" "$BASE/logs"
  if [ -d "$DIR/debootstrap" ] || { [ -d "$DIR" ] && [ ! -x "$DIR/usr/bin/apt-get" ]; }; then
    ! holder_pid >/dev/null || die "the $VERSION chroot is up: chroot.sh $VERSION down first"
    log "removing the unfinished debootstrap in $DIR"
    rm -rf --one-file-system -- "$DIR"
  fi
  if [ ! -d "$DIR" ]; then
    log "debootstrap $SUITE into $DIR (log: $BASE/logs/$SUITE.debootstrap.log)"
    t=$SECONDS
    debootstrap --variant=minbase "$SUITE" "$DIR" "$(mirror)" >"$BASE/logs/$SUITE.debootstrap.log" 2>&1 ||
      die "debootstrap failed (see $BASE/logs/$SUITE.debootstrap.log)"
    log "debootstrap: $((SECONDS - t)) s"
  fi
  chmod 0755 "$BASE" "$DIR"
  # never start a service from a package's scripts
  printf '#!/bin/sh\nexit 101\n' >"$DIR/usr/sbin/policy-rc.d"
  chmod 0755 "$DIR/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$DIR/etc/resolv.conf"
  local conf
  for conf in /etc/apt/apt.conf.d/99artifact-registry /etc/apt/apt.conf.d/99farm-no-dep11; do
    [ ! -f "$conf" ] || cp "$conf" "$DIR/etc/apt/apt.conf.d/"
  done
  # HTTPS may go through an intercepting proxy whose CA the host trusts (pip, curl)
  mkdir -p "$DIR/usr/local/share/ca-certificates"
  for conf in /usr/local/share/ca-certificates/*.crt; do
    [ ! -f "$conf" ] || cp "$conf" "$DIR/usr/local/share/ca-certificates/"
  done
  printf '127.0.0.1 localhost\n127.0.0.1 %s\n::1 localhost ip6-localhost ip6-loopback\n' "$INNER_HOSTNAME" >"$DIR/etc/hosts.new"
  if [ -f "$DIR/etc/hosts" ]; then
    grep -vE '^(127\.0\.0\.1|::1)[[:space:]]' "$DIR/etc/hosts" >>"$DIR/etc/hosts.new" || true
  fi
  mv "$DIR/etc/hosts.new" "$DIR/etc/hosts"
  printf '%s\n' "$INNER_HOSTNAME" >"$DIR/etc/hostname"
  want="$(printf '%s\n' "$SUITE" "$BUILD_REVISION" "${PACKAGES[@]}" | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    log "installing packages into $DIR (log: $BASE/logs/$SUITE.apt.log)"
    t=$SECONDS
    # download with the network, install without it (policy-rc.d and no network: nothing starts on the host)
    in_build_ns apt-get update -q >"$BASE/logs/$SUITE.apt.log" 2>&1 || die "apt-get update failed (see $BASE/logs/$SUITE.apt.log)"
    in_build_ns apt-get install -y -q --download-only --no-install-recommends "${PACKAGES[@]}" >>"$BASE/logs/$SUITE.apt.log" 2>&1 ||
      die "apt-get download failed (see $BASE/logs/$SUITE.apt.log)"
    in_build_ns --net apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"$BASE/logs/$SUITE.apt.log" 2>&1 ||
      die "apt-get install failed (see $BASE/logs/$SUITE.apt.log)"
    in_build_ns --net update-ca-certificates >>"$BASE/logs/$SUITE.apt.log" 2>&1
    in_build_ns --net apt-get clean
    printf '%s\n' "$want" >"$STAMP"
    log "packages: $((SECONDS - t)) s"
  fi
  log "built $DIR: $(in_build_ns --net sh -c 'slurmctld -V; mariadbd --version' | tr '\n' ' ')"
}

# bind_ro SRC DST: SRC bound read-only at DST (DST made as an empty file or folder where missing).
bind_ro() {
  local src="$1" dst="$2"
  if [ -d "$src" ]; then mkdir -p "$dst"; else [ -e "$dst" ] || { mkdir -p "$(dirname "$dst")"; : >"$dst"; }; fi
  mount --bind "$src" "$dst"
  mount -o remount,bind,ro "$dst"
}

# Runs as pid 1 of the new namespaces (chroot.sh VERSION _holder): mounts, then waits until it is told to go.
holder() {
  ip link set lo up
  # The nodes' addresses (all of 127/8 reaches lo anyway) as addresses of lo: with 127.0.0.1 alone, glibc's
  # getaddrinfo(AI_ADDRCONFIG) counts no IPv4 address here, and slurmdbd then fails to listen ("Address
  # family not supported by protocol").
  local i
  for i in 1 2 3 4; do ip addr add "127.0.1.$i/32" dev lo; done
  # One interface that is not loopback, as every real node has: OpenMPI 5's daemons (prted) never use
  # loopback, so with lo alone `mpirun` cannot start them. A veth pair with both ends in this namespace and a
  # documentation address (TEST-NET-1, never routed): its traffic stays in this namespace.
  ip link add hpcai0 type veth peer name hpcai1
  ip addr add 192.0.2.1/32 dev hpcai0
  ip link set hpcai1 up
  ip link set hpcai0 up
  hostname "$INNER_HOSTNAME"
  mount -t proc proc "$DIR/proc"
  mount --rbind /sys "$DIR/sys"
  mount --rbind /dev "$DIR/dev"
  mount -t tmpfs -o mode=1777,size=64m tmpfs "$DIR/dev/shm"
  mount -t tmpfs -o mode=755,size=256m tmpfs "$DIR/run"
  mkdir -p "$DIR/run/lock"
  # the venv's interpreter is the host's Python 3.11 (a bookworm binary: the newer glibc inside runs it)
  bind_ro /usr/bin/python3.11 "$DIR/usr/bin/python3.11"
  bind_ro /usr/lib/python3.11 "$DIR/usr/lib/python3.11"
  [ ! -d /etc/python3.11 ] || bind_ro /etc/python3.11 "$DIR/etc/python3.11"
  # Python 3.11's headers (DeepSpeed's ops compile against them)
  for inc in /usr/include/python3.11 /usr/include/x86_64-linux-gnu/python3.11; do
    [ ! -d "$inc" ] || bind_ro "$inc" "$DIR$inc"
  done
  # Debian's ensurepip installs pip from these wheels (`python3.11 -m venv`)
  [ ! -d /usr/share/python-wheels ] || bind_ro /usr/share/python-wheels "$DIR/usr/share/python-wheels"
  # the venv only: the admin kit `hpcai admin install` lays down under the prefix is the chroot's own
  mkdir -p "$DIR$HOST_PREFIX"
  bind_ro "$HOST_PREFIX/venv" "$DIR$HOST_PREFIX/venv"
  # the checkout writable, as on the host: the test suite run inside writes artifacts/ and __pycache__ there
  mkdir -p "$DIR$REPO"
  mount --bind "$REPO" "$DIR$REPO"
  echo ready >"$DIR/run/hpcai-chroot.ready"
  trap 'exit 0' TERM INT
  # pid 1 reaps the orphans of the namespace (bash waits for any child)
  while :; do sleep 3600 & wait $! || true; done
}

# host_libs: shared libraries the host's Python 3.11 needs that the chroot lacks (a bookworm soname that
# the newer suite renamed), copied from the host into /usr/local/lib/hpcai-host-libs (only what is missing,
# so nothing of the suite's own is shadowed).
host_libs() {
  local missing lib path dest="$DIR/usr/local/lib/hpcai-host-libs"
  # shellcheck disable=SC2016  # expanded inside
  missing="$({ inside sh -c 'ldd /usr/bin/python3.11 /usr/lib/python3.11/lib-dynload/*.so 2>/dev/null' || true; } |
    awk '/=> not found/ {print $1}' | sort -u)"
  [ -n "$missing" ] || return 0
  mkdir -p "$dest"
  for lib in $missing; do
    # the first match, reading to the end (an early exit would end ldconfig with SIGPIPE: under pipefail
    # that failed the assignment and stopped this script without a word)
    path="$(ldconfig -p | awk -v l="$lib" '!found && $1 == l && /x86-64/ {print $NF; found = 1}')"
    [ -n "$path" ] || { log "warning: $lib (needed by Python 3.11) is on neither side"; continue; }
    log "copying the host's $lib into the chroot (Python 3.11 needs it)"
    cp -L "$path" "$dest/$lib"
  done
  printf '%s\n' /usr/local/lib/hpcai-host-libs >"$DIR/etc/ld.so.conf.d/zz-hpcai-host-libs.conf"
  inside ldconfig
}

up() {
  local cgroup="${HPCAI_DEVCLUSTER_CGROUP:-0}" pid upid t
  while [ "$#" -gt 0 ]; do
    case "$1" in
      --cgroup) cgroup=1 ;;
      --no-cgroup) cgroup=0 ;;
      *) die "up: unknown option $1" ;;
    esac
    shift
  done
  [ -f "$STAMP" ] || build
  [ -x "$HOST_PREFIX/venv/bin/python" ] || die "no venv at $HOST_PREFIX/venv (scripts/bootstrap.sh makes it on the host)"
  install -d -o root -g root -m 0755 "$RUN_DIR"
  t=$SECONDS
  if ! pid="$(holder_pid)"; then
    rm -f "$PIDFILE"
    log "starting the $VERSION namespaces ($DIR)"
    setsid unshare --mount --propagation private --pid --net --uts --fork -- \
      bash "$SELF" "$VERSION" _holder </dev/null >>"$BASE/logs/$SUITE.holder.log" 2>&1 &
    upid=$!
    for _ in $(seq 1 100); do
      pid="$(pgrep -P "$upid" -x bash || true)"
      [ -z "$pid" ] || break
      sleep 0.1
    done
    [ -n "$pid" ] || die "the namespace holder did not start (see $BASE/logs/$SUITE.holder.log)"
    printf '%s\n' "$pid" >"$PIDFILE"
    printf '%s\n' "$REPO" >"$ROOTFILE"
    for _ in $(seq 1 100); do
      nsenter -t "$pid" -m -- test -f "$DIR/run/hpcai-chroot.ready" 2>/dev/null && break
      kill -0 "$pid" 2>/dev/null || die "the namespace holder failed (see $BASE/logs/$SUITE.holder.log)"
      sleep 0.1
    done
    nsenter -t "$pid" -m -- test -f "$DIR/run/hpcai-chroot.ready" ||
      die "the namespace holder was not ready after 10 s (see $BASE/logs/$SUITE.holder.log)"
    holder_pid >/dev/null || die "the namespace holder is not running (see $BASE/logs/$SUITE.holder.log)"
  fi
  [ "$(inner_root)" = "$REPO" ] ||
    die "the $VERSION chroot runs the scripts of $(inner_root), not of $REPO: chroot.sh $VERSION down first"
  host_libs
  log "running up.sh inside ($(inside slurmctld -V))"
  HPCAI_DEVCLUSTER_CGROUP="$cgroup" inside bash "$REPO/slurm/devcluster/up.sh"
  log "$VERSION chroot cluster up in $((SECONDS - t)) s (chroot.sh $VERSION run CMD...)"
}

# remove_cgroups: the folders slurmd's cgroup plugins made (cgroup v1 is not namespaced: they are in the
# host's hierarchy). rmdir only: a cgroup that still holds a process is never removed. Not while another
# chroot's holder runs: the folders could be its slurmds'.
remove_cgroups() {
  local d other pid
  for other in "$RUN_DIR"/*.pid; do
    { [ -f "$other" ] && [ "$other" != "$PIDFILE" ]; } || continue
    pid="$(head -c 32 "$other" | tr -d '[:space:]')"
    if [[ "$pid" =~ ^[1-9][0-9]*$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q '/chroot\.sh .* _holder'; then
      log "another chroot is up ($(basename "$other" .pid)): its cgroups, if any, are left alone"
      return 0
    fi
  done
  for d in /sys/fs/cgroup/*/slurm_n[1-4] /sys/fs/cgroup/*/slurm; do
    [ -d "$d" ] || continue
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || log "warning: could not remove every cgroup under $d"
  done
}

down() {
  local pid
  if pid="$(holder_pid)"; then
    inside bash "$(inner_root)/slurm/devcluster/down.sh" || log "down.sh failed inside: stopping the namespaces anyway"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    log "the $VERSION namespaces are gone (with every mount and process in them)"
  else
    log "the $VERSION chroot is not up"
  fi
  rm -f "$PIDFILE" "$ROOTFILE"
  remove_cgroups
}

case "$ACTION" in
  build) build ;;
  up) up "$@" ;;
  down) down ;;
  status)
    holder_pid >/dev/null || { echo "the $VERSION chroot ($DIR) is not up"; exit 3; }
    inside bash "$(inner_root)/slurm/devcluster/status.sh"
    ;;
  run) [ "$#" -gt 0 ] || die "run: no command"; inside "$@" ;;
  shell) inside bash -l ;;
  _holder) holder ;;
  *) usage ;;
esac
