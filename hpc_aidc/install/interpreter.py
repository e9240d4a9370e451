"""The Python that root's Slurm-side scripts run: made as PREFIX/venv on request, and asked where it
imports hpc-aidc from (every folder on that path is part of what root trusts).

Asking runs the interpreter as root, so it is asked in two steps: first with -I -S (no site, so no .pth
file or sitecustomize of its site-packages runs) for its prefixes and site-packages folders, which the
caller checks; only then with -I, as the scripts run it, for hpc_aidc's file and sys.path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hpc_aidc.errors import ConfigError

_BARE = ("import json, sys, sysconfig; p = sysconfig.get_paths(); "
         "print(json.dumps([sys.executable, sys.prefix, sys.base_prefix, p['purelib'], p['platlib'], p['stdlib']]))")
_FULL = ("import json, sys, hpc_aidc; "
         "print(json.dumps([sys.executable, hpc_aidc.__file__, *[p for p in sys.path if p]]))")


def _ask(python: str, flags: list[str], code: str) -> list[str]:
    try:
        proc = subprocess.run([python, *flags, "-c", code], capture_output=True, text=True, cwd="/", timeout=120,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"Expected a working Python interpreter at {python}. Got {exc}. Pass --python PATH (one "
                          "with hpc-aidc installed) or --venv SPEC.") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"Expected {python} {' '.join(flags)} to import hpc_aidc. Got: {last}. Install hpc-aidc "
                          "into it, or pass --venv SPEC.")
    try:
        paths = json.loads(proc.stdout)
    except ValueError:
        raise ConfigError(f"Expected {python} to print its paths. Got {proc.stdout[:80]!r}. Pass another "
                          "--python.") from None
    return [str(p) for p in paths]


def bare_paths(python: str) -> list[str]:
    """The interpreter, its prefixes, site-packages and stdlib, asked without running any site code."""
    return _ask(python, ["-I", "-S"], _BARE)


def import_paths(python: str) -> list[str]:
    """The interpreter, hpc_aidc's file and sys.path as `python -I` (how the scripts run it) sees them."""
    return _ask(python, ["-I"], _FULL)


def requirement_from(spec: str, cwd: Path) -> str:
    """A pip requirement with a local wheel or folder made absolute (pip runs from /)."""
    base, bracket, extras = spec.partition("[")
    local = Path(base)
    if not local.is_absolute() and (cwd / local).exists():
        return str((cwd / local).resolve()) + bracket + extras
    return spec


def make_venv(venv: Path, requirement: str) -> str:
    """Create `venv` (root's, from the base interpreter hpcai runs on) and pip-install `requirement` (a wheel
    path or a requirement, extras allowed) into it; returns its python. Output goes to stderr."""
    base = getattr(sys, "_base_executable", sys.executable)
    python = venv / "bin" / "python"
    steps = [] if python.exists() else [[base, "-m", "venv", str(venv)]]
    steps.append([str(python), "-m", "pip", "install", "--quiet", requirement])
    for argv in steps:
        try:
            proc = subprocess.run(argv, stdout=sys.stderr, stderr=sys.stderr, cwd="/", check=False)
        except OSError as exc:
            raise ConfigError(f"Expected to run {argv[0]}. Got {exc.strerror}. Check the interpreter.") from None
        if proc.returncode != 0:
            raise ConfigError(f"Expected `{' '.join(argv)}` to succeed. Got exit {proc.returncode}. See the "
                              "output above; fix the requirement or the package index.")
    return str(python)
