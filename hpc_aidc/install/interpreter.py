"""The Python that root's Slurm-side scripts run: made as PREFIX/venv on request, and asked where it
imports hpc-aidc from (every folder on that path is part of what root trusts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hpc_aidc.errors import ConfigError

_IMPORT_PATHS = ("import json, sys, hpc_aidc; "
                 "print(json.dumps([sys.executable, hpc_aidc.__file__, *[p for p in sys.path if p]]))")


def import_paths(python: str) -> list[str]:
    """The interpreter, hpc_aidc's file and sys.path as `python -I` (how the scripts run it) sees them."""
    try:
        proc = subprocess.run([python, "-I", "-c", _IMPORT_PATHS], capture_output=True, text=True, cwd="/",
                              timeout=120, check=False)
    except OSError as exc:
        raise ConfigError(f"Expected a Python interpreter at {python}. Got {exc.strerror}. Pass --python PATH "
                          "(one with hpc-aidc installed) or --venv SPEC.") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"Expected {python} -I to import hpc_aidc. Got: {last}. Install hpc-aidc into it, or "
                          "pass --venv SPEC.")
    paths: list[str] = json.loads(proc.stdout)
    return paths


def make_venv(venv: Path, requirement: str) -> str:
    """Create `venv` (root's, from the base interpreter hpcai runs on) and pip-install `requirement` (a wheel
    path or a requirement, extras allowed) into it; returns its python. Output goes to stderr."""
    base = getattr(sys, "_base_executable", sys.executable)
    python = venv / "bin" / "python"
    steps = [] if python.exists() else [[base, "-m", "venv", str(venv)]]
    steps.append([str(python), "-m", "pip", "install", "--quiet", requirement])
    for argv in steps:
        proc = subprocess.run(argv, stdout=sys.stderr, stderr=sys.stderr, cwd="/", check=False)
        if proc.returncode != 0:
            raise ConfigError(f"Expected `{' '.join(argv)}` to succeed. Got exit {proc.returncode}. See the "
                              "output above; fix the requirement or the package index.")
    return str(python)
