#!/usr/bin/env bash
# The project's test command: set up everything (packages, the venv, dev cluster), then static checks
# (ruff, mypy, import layers) and the whole pytest suite against the real dev cluster.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/bootstrap.sh
# The root-owned venv itself (not the checkout's .venv link): tests run the CLI as alice and bob too, who may
# not be able to enter this checkout's folder.
VENV="${HPCAI_DEV_PREFIX:-/opt/hpcai}/venv"

echo "== static checks"
"$VENV/bin/ruff" check hpc_aidc tests bench scripts
"$VENV/bin/mypy"
"$VENV/bin/lint-imports" --no-cache >/dev/null && echo "import layers: kept"

echo "== tests"
mkdir -p artifacts
set +e
"$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing, a run that tests nothing must not pass" >&2
  exit 1
fi
exit "$rc"
