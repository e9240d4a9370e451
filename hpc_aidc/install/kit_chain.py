"""What slurm.conf makes root (and the SlurmUser) run, as one chain to trust, for `hpcai admin check`: each
script slurm.conf names (every file a prolog.d glob matches), the admin kit's scripts those run in turn (the
same PREFIX/slurm tree: prolog.d/10-energy.sh runs ../energy/prolog.sh, which sources common.sh), the settings
they source (energy.env), the site profile and the Python named there, with every folder it imports from.

Each link someone other than root could change (trust.untrusted_links: a folder from / down, a link hop, the
file itself) is returned once, with what it leads to. The Python is asked where it imports from only once the
interpreter's own chain is root's (it is run, as whoever runs the check), first without site code (-I -S)."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from hpc_aidc.errors import ConfigError
from hpc_aidc.install.interpreter import bare_paths, import_paths
from hpc_aidc.install.plan import DEFAULT_ENERGY_ENV, SLURM_SCRIPTS
from hpc_aidc.install.trust import untrusted_links
from hpc_aidc.scheduler.admin_check import ChainLink
from hpc_aidc.scheduler.site_check import config_list

# The scripts slurm.conf runs as root or SlurmUser (lower-cased keys, as AdminFacts.config holds them).
SCRIPT_SETTINGS = ("prolog", "epilog", "prologslurmctld", "epilogslurmctld")
_NAMES = {"prolog": "Prolog", "epilog": "Epilog", "prologslurmctld": "PrologSlurmctld",
          "epilogslurmctld": "EpilogSlurmctld"}
# What common.sh falls back to without HPCAI_PYTHON, found on the path slurmd gives its scripts.
_DEFAULT_PYTHON = "python3"
_SCRIPT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def configured_scripts(config: Mapping[str, str], prolog_scripts: Sequence[str]) -> list[tuple[str, str]]:
    """(role, path) of each script slurm.conf runs; a glob Prolog stands for the files it matches (pure)."""
    out: list[tuple[str, str]] = []
    for key in SCRIPT_SETTINGS:
        values = config_list(config.get(key, ""))  # several scripts: comma-separated (23.02 and later)
        globs = [v for v in values if key == "prolog" and any(c in v for c in "*?[")]
        if globs:  # prolog_scripts: the files the globs match (expand_prolog), named after the first glob
            out += [(f"Prolog ({globs[0]})", p) for p in prolog_scripts]
        out += [(_NAMES[key], v) for v in values if v not in globs]
    return out


def kit_scripts(scripts: Iterable[str]) -> list[str]:
    """The admin kit's scripts beside any configured one that is one of them (they run each other by relative
    path): every PREFIX/slurm/<script> that exists."""
    found: list[str] = []
    for script in scripts:
        for rel in SLURM_SCRIPTS:
            if script.endswith("/" + rel):
                base = script[: -len(rel)]
                found += [base + other for other in SLURM_SCRIPTS if os.path.lexists(base + other)]
    return list(dict.fromkeys(found))


def energy_env_path(kit: Sequence[str]) -> str:
    """The settings file the kit's common.sh sources (`hpcai admin install --etc` rewrites its line)."""
    for script in kit:
        if script.endswith("/energy/common.sh"):
            try:
                text = Path(script).read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("HPCAI_ENERGY_CONF="):
                    words = shlex.split(line.partition("=")[2], comments=True)
                    if words:
                        return words[0]
    return DEFAULT_ENERGY_ENV


def read_settings(path: str) -> dict[str, str]:
    """energy.env's KEY=value lines, as common.sh sources them: only from a root-owned regular file nobody else
    may write (otherwise the scripts ignore it and so does this)."""
    try:
        st = os.lstat(path)
    except OSError:
        return {}
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        return {}
    out: dict[str, str] = {}
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if sep and key.isidentifier():
            try:
                words = shlex.split(value, comments=True)
            except ValueError:
                continue
            out[key] = words[0] if words else ""
    return out


def _python_of(settings: Mapping[str, str]) -> str | None:
    python = settings.get("HPCAI_PYTHON") or _DEFAULT_PYTHON
    return python if python.startswith("/") else shutil.which(python, path=_SCRIPT_PATH)


def chain_links(config: Mapping[str, str], prolog_scripts: Sequence[str]) -> list[ChainLink]:
    """Every link of what slurm.conf runs that someone other than root could change, once each, with the first
    thing it leads to."""
    found: dict[str, ChainLink] = {}

    def judge(what: str, path: str) -> bool:
        problems = untrusted_links(path)
        for u in problems:
            found.setdefault(u.path, ChainLink(u.path, u.why, what))
        return not problems

    scripts = configured_scripts(config, prolog_scripts)
    for role, path in scripts:
        judge(f"{role} {path}", path)
    kit = kit_scripts(path for _, path in scripts)
    for path in kit:
        judge(f"the admin kit's {path}", path)
    settings_file = energy_env_path(kit)
    judge(f"the scripts' settings {settings_file}", settings_file)
    settings = read_settings(settings_file)
    profile = settings.get("HPCAI_SITE")
    if profile:
        judge(f"the site profile {profile} the scripts read", profile)
    log = settings.get("HPCAI_ENERGY_LOG")
    if log and log.startswith("/") and log != os.devnull:
        # the file is SlurmUser's by design (its EpilogSlurmctld appends); the folders are what root writes through
        judge(f"the scripts' log {log} (root appends to it; they refuse to while this stays)", str(Path(log).parent))
    python = _python_of(settings)
    if python is None:
        return list(found.values())
    what = f"the Python the scripts run ({python})"
    # Asked only once nobody else could have changed it: asking runs it. (`&`: both judged, both named.)
    if judge(what, python) & judge(what, str(Path(python).parent.parent)):
        try:
            if all([judge(what, p) for p in bare_paths(python)]):
                for p in import_paths(python):
                    judge(what, p)
        except ConfigError as exc:
            found.setdefault(python, ChainLink(python, f"cannot be asked where it imports from: {exc}", what))
    return list(found.values())
