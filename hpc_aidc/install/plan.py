"""What `hpcai admin install` lays down, as data (pure: no I/O, no clock).

`install_plan` turns an `InstallSpec` and the packaged Slurm-side scripts into the ordered list of
folders and files, each with owner and mode; `slurm_conf_lines` gives the slurm.conf settings that point
at them. The apply step (`hpc_aidc.install.apply`) only carries the plan out."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

# The Slurm-side scripts, relative to the packaged slurm/ folder and to PREFIX/slurm: the layout is kept, as
# the scripts find each other by relative paths (prolog.d/10-energy.sh -> ../energy/prolog.sh).
SLURM_SCRIPTS = (
    "epilog_slurmctld.sh",
    "prolog.d/10-energy.sh",
    "prolog.d/20-gpu-health.sh",
    "energy/common.sh",
    "energy/prolog.sh",
    "energy/epilog.sh",
    "energy/epilog_slurmctld.sh",
    "audit/epilog_slurmctld.sh",
    "health/gpu_prolog.sh",
)
# Reference copies for admins (systemd units, Prometheus rules, a Grafana dashboard): not run from here.
MONITORING_FILES = (
    "README.md",
    "grafana/hpcai-gpu-energy.json",
    "prometheus/hpcai-rules.yml",
    "prometheus/prometheus.yml",
    "systemd/hpcai-metrics.service",
    "systemd/hpcai-report-ingest.service",
    "systemd/hpcai-report-ingest.timer",
    "systemd/prometheus-node-exporter.override.conf",
)
# common.sh reads the settings from this fixed path; an install with another --etc rewrites the line.
DEFAULT_ENERGY_ENV = "/etc/hpcai/energy.env"
ENERGY_ENV_LINE = f"HPCAI_ENERGY_CONF={DEFAULT_ENERGY_ENV}"


@dataclass(frozen=True)
class InstallSpec:
    prefix: PurePosixPath          # e.g. /opt/hpcai: PREFIX/slurm, PREFIX/monitoring
    etc: PurePosixPath             # /etc/hpcai: energy.env (the scripts' settings)
    python: str                    # the interpreter root's scripts run (hpc-aidc importable with -I)
    site_profile: PurePosixPath    # the root-owned site profile the scripts read
    energy_store: PurePosixPath    # the site profile's energy_store
    energy_prolog: bool            # the prolog samples every job (root-only store) or jobs sample themselves
    energy_log: PurePosixPath      # where the scripts log (root and the SlurmUser append)
    energy_interval: float         # seconds between energy samples
    audit_log: PurePosixPath | None
    slurm_uid: int
    slurm_gid: int


@dataclass(frozen=True)
class Entry:
    """One folder or file: `content` None is a folder. `keep` entries hold data (the energy store, logs):
    uninstall removes them only when empty, and install never rewrites an existing file's content."""

    path: PurePosixPath
    uid: int
    gid: int
    mode: int
    content: bytes | None = None
    keep: bool = False

    @property
    def is_dir(self) -> bool:
        return self.content is None

    def describe(self) -> str:
        kind = "dir " if self.is_dir else "file"
        return f"{kind} {self.mode:04o} {self.uid}:{self.gid} {self.path}"


def energy_env(spec: InstallSpec) -> str:
    """The settings file the Slurm-side scripts source (root-owned, 0644; slurm/energy/common.sh)."""
    values = {
        "HPCAI_PYTHON": spec.python,
        "HPCAI_ENERGY_INTERVAL": f"{spec.energy_interval:g}",
        "HPCAI_ENERGY_LOG": str(spec.energy_log),
        "HPCAI_SITE": str(spec.site_profile),
    }
    lines = ["# Settings for hpc-aidc's Slurm-side scripts. Written by `hpcai admin install`; edit with care:",
             "# root runs what HPCAI_PYTHON names.",
             *(f"{key}={shlex.quote(value)}" for key, value in values.items())]
    return "\n".join(lines) + "\n"


def _parents(path: PurePosixPath, stop: PurePosixPath) -> list[PurePosixPath]:
    """Folders from `stop` (exclusive) down to `path`'s parent."""
    out = [p for p in path.parents if p != stop and stop in p.parents]
    return list(reversed(out))


def install_plan(spec: InstallSpec, scripts: Mapping[str, bytes], monitoring: Mapping[str, bytes]) -> list[Entry]:
    """Every folder and file in the order they are made (parents first)."""
    root = (0, 0)
    entries: list[Entry] = [Entry(spec.prefix, *root, 0o755)]
    slurm_dir = spec.prefix / "slurm"
    entries.append(Entry(slurm_dir, *root, 0o755))
    conf_path = str(spec.etc / "energy.env")
    for rel in SLURM_SCRIPTS:
        text = scripts[rel]
        if rel == "energy/common.sh" and conf_path != DEFAULT_ENERGY_ENV:
            text = text.replace(ENERGY_ENV_LINE.encode(), f"HPCAI_ENERGY_CONF={shlex.quote(conf_path)}".encode())
        path = slurm_dir / rel
        entries += [Entry(d, *root, 0o755) for d in _parents(path, slurm_dir)]
        entries.append(Entry(path, *root, 0o755, text))
    mon_dir = spec.prefix / "monitoring"
    entries.append(Entry(mon_dir, *root, 0o755))
    for rel in MONITORING_FILES:
        path = mon_dir / rel
        entries += [Entry(d, *root, 0o755) for d in _parents(path, mon_dir)]
        entries.append(Entry(path, *root, 0o644, monitoring[rel]))
    entries.append(Entry(spec.etc, *root, 0o755))
    entries.append(Entry(spec.etc / "energy.env", *root, 0o644, energy_env(spec).encode()))
    # The energy store: with the prolog sampling every job only root writes it; 0711 lets users reach their
    # own jobs' records without listing. Its accounting box is shared by root (node epilogs) and the
    # SlurmUser (EpilogSlurmctld), nobody else.
    store = spec.energy_store
    entries.append(Entry(store, *root, 0o711 if spec.energy_prolog else 0o1733, keep=True))
    for box in (store / "accounting", store / "accounting" / "spool"):
        entries.append(Entry(box, 0, spec.slurm_gid, 0o2770, keep=True))
    # The log: in a root-owned folder (nobody can swap the file for a link root would follow), the file the
    # SlurmUser's so its EpilogSlurmctld can append; not readable by users (it names every job).
    entries.append(Entry(spec.energy_log.parent, *root, 0o755, keep=True))
    entries.append(Entry(spec.energy_log, spec.slurm_uid, spec.slurm_gid, 0o640, b"", keep=True))
    if spec.audit_log is not None:
        # The submission audit: SlurmUser's EpilogSlurmctld appends; nobody else writes, root and its group read.
        entries.append(Entry(spec.audit_log.parent, spec.slurm_uid, spec.slurm_gid, 0o750, keep=True))
    return _dedupe(entries)


def _dedupe(entries: list[Entry]) -> list[Entry]:
    seen: dict[PurePosixPath, Entry] = {}
    for entry in entries:
        seen.setdefault(entry.path, entry)
    return list(seen.values())


def slurm_conf_lines(prefix: PurePosixPath) -> dict[str, str]:
    """The slurm.conf settings that run the installed scripts (values as slurm.conf takes them)."""
    slurm_dir = prefix / "slurm"
    return {
        "Prolog": f"{slurm_dir}/prolog.d/*",
        "PrologFlags": "Alloc",
        "Epilog": f"{slurm_dir}/energy/epilog.sh",
        "EpilogSlurmctld": f"{slurm_dir}/epilog_slurmctld.sh",
        "SchedulerParameters": "nohold_on_prolog_fail",
        "JobSubmitPlugins": "lua",
        "AccountingStoreFlags": "job_comment,job_script",
        "AccountingStorageTRES": "gres/gpu",
        "PrivateData": "accounts,jobs,usage,users",
    }


def slurm_conf_mismatches(conf: Mapping[str, str], prefix: PurePosixPath) -> list[str]:
    """Where a slurm.conf (lower-cased keys) does not run the scripts under `prefix`: one line each."""
    problems: list[str] = []
    for key, want in slurm_conf_lines(prefix).items():
        have = conf.get(key.lower(), "")
        if key in ("Prolog", "Epilog", "EpilogSlurmctld"):
            ok = have == want
        else:  # list settings: every item wanted must be there (others may be too)
            ok = set(want.lower().split(",")) <= {v.strip().lower() for v in have.split(",")}
        if not ok:
            problems.append(f"{key} is {have or 'unset'}; expected {want}")
    return problems
