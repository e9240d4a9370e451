#!/usr/bin/env bash
# The project's test command: set up everything (packages, the venv, dev cluster), then static checks
# (ruff, mypy, import layers), the whole pytest suite against the host's dev cluster (Slurm 22.05), and the
# Slurm-facing part (`-m "cluster and not host_only"`) again on each newer Slurm of the matrix, in its
# chroot dev cluster.
#
#   bash scripts/test.sh [PYTEST ARGS]                          the whole suite, then the matrix
#   bash scripts/test.sh --slurm 24.11|26.05 [--cgroup] [ARGS]  the Slurm-facing part on that version only
#                                                               (--cgroup: with proctrack/task cgroup)
#
# HPCAI_SLURM_MATRIX: the entries the plain command runs after the host's suite, each VERSION or
# VERSION+cgroup (default "26.05+cgroup", what CI runs; "" for none; "24.11 26.05+cgroup" for both).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# entry_ok ENTRY: VERSION or VERSION+cgroup of a version the chroots build
entry_ok() {
  case "$1" in
    24.11|26.05|24.11+cgroup|26.05+cgroup) return 0 ;;
    *) return 1 ;;
  esac
}

only=""
matrix="${HPCAI_SLURM_MATRIX-26.05+cgroup}"
if [ "${1:-}" = "--slurm" ]; then
  [ "$#" -ge 2 ] || { echo "usage: bash scripts/test.sh --slurm 24.11|26.05 [--cgroup] [PYTEST ARGS]" >&2; exit 2; }
  only="$2"
  shift 2
  if [ "${1:-}" = "--cgroup" ]; then
    only="$only+cgroup"
    shift
  fi
  case "$only" in
    22.05) only="" matrix="" ;;  # the host's own: the plain command without the matrix
    *) entry_ok "$only" || { echo "scripts/test.sh: expected --slurm 22.05, 24.11 or 26.05, got '$only'" >&2; exit 2; } ;;
  esac
fi
for entry in $matrix; do
  entry_ok "$entry" || {
    echo "scripts/test.sh: HPCAI_SLURM_MATRIX entries are 24.11 or 26.05, each with +cgroup or not; got '$entry'" >&2
    exit 2
  }
done

bash scripts/bootstrap.sh
# The root-owned venv itself (not the checkout's .venv link): tests run the CLI as alice and bob too, who may
# not be able to enter this checkout's folder.
VENV="${HPCAI_DEV_PREFIX:-/opt/hpcai}/venv"

# pytest_status RC: 5 ("no tests ran") is a failure: a run that tests nothing must not pass.
pytest_status() {
  if [ "$1" -eq 5 ]; then
    echo "pytest collected no tests: failing, a run that tests nothing must not pass" >&2
    return 1
  fi
  return "$1"
}

# on_slurm ENTRY [PYTEST ARGS]: the Slurm-facing tests inside the chroot dev cluster of ENTRY (VERSION, or
# VERSION+cgroup: with cgroups, which the cgroup tests then require), built and brought up first, taken
# down after, whatever the outcome.
on_slurm() {
  local entry="$1" version cgroup=0 rc
  shift
  version="${entry%+cgroup}"
  [ "$version" = "$entry" ] || cgroup=1
  echo "== Slurm $version$([ "$cgroup" = 0 ] || echo ' with cgroups'): the Slurm-facing tests in its chroot dev cluster"
  bash slurm/devcluster/chroot.sh "$version" build
  bash slurm/devcluster/chroot.sh "$version" down >/dev/null 2>&1 || true  # one left up by an interrupted run
  if [ "$cgroup" = 1 ]; then
    bash slurm/devcluster/chroot.sh "$version" up --cgroup
  else
    bash slurm/devcluster/chroot.sh "$version" up --no-cgroup
  fi
  set +e
  bash slurm/devcluster/chroot.sh "$version" run /bin/bash -c \
    'cd "$1" && shift && exec env HPCAI_EXPECT_CGROUP="$1" "${@:2}"' _ "$ROOT" "$cgroup" "$VENV/bin/python" -m pytest \
    -p no:cacheprovider -m "cluster and not host_only" --junitxml="artifacts/junit-slurm-$entry.xml" "$@"
  rc=$?
  set -e
  bash slurm/devcluster/chroot.sh "$version" down || true
  pytest_status "$rc"
}

mkdir -p artifacts
if [ -n "$only" ]; then
  on_slurm "$only" "$@"
  exit $?
fi

echo "== static checks"
"$VENV/bin/ruff" check hpc_aidc tests bench scripts
"$VENV/bin/mypy"
"$VENV/bin/lint-imports" --no-cache >/dev/null && echo "import layers: kept"

echo "== tests (the host's Slurm: $(sinfo -V 2>/dev/null || echo unknown))"
set +e
"$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
status=0
pytest_status "$rc" || status=1
for entry in $matrix; do
  on_slurm "$entry" "$@" || status=1
done
exit "$status"
