#!/usr/bin/env bash
# The project's test command: set up everything (packages, .venv, dev cluster), then static checks
# (ruff, mypy, import layers) and the whole pytest suite against the real dev cluster.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/bootstrap.sh

echo "== static checks"
.venv/bin/ruff check hpc_aidc tests bench
.venv/bin/mypy
.venv/bin/lint-imports --no-cache >/dev/null && echo "import layers: kept"

echo "== tests"
mkdir -p artifacts
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing, a run that tests nothing must not pass" >&2
  exit 1
fi
exit "$rc"
