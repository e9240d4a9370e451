"""`hpcai admin check`: slurm.conf (and the files it names) against the site profile.

`admin_problems` is pure: it compares the facts with what the profile and SECURITY.md ask for and returns
one line per problem, each with its fix; `version_support` says which Slurm runs and whether hpc-aidc was tested on
it (a warning, not a problem, when it was not). `gather_facts` collects them: `scontrol show config` (the live
controller) or a slurm.conf file, fstat of the energy store, its accounting box and /etc/hpcai, and (live
only) slurmctld's log since its last start: a PrologSlurmctld/EpilogSlurmctld it could not execute is logged
once there and then silently never run (daemon_log.py)."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hpc_aidc.scheduler.daemon_log import LogScan, scan_log
from hpc_aidc.scheduler.site_check import config_list, expand_prolog, show_config_items
from hpc_aidc.scheduler.slurm_version import Support, parse_version, support
from hpc_aidc.site_profile import SiteProfile
from hpc_aidc.slurm_client import run_slurm

PRIVATE_DATA = ("accounts", "jobs", "usage", "users")
# The kit's EpilogSlurmctld: the submission audit (slurm/audit), then energy (slurm/energy).
CTLD_EPILOG = "slurm/epilog_slurmctld.sh"


@dataclass(frozen=True)
class PathFacts:
    uid: int
    gid: int
    mode: int        # permission bits with setgid/sticky
    is_dir: bool
    is_link: bool

    def owner(self) -> str:
        try:
            user = pwd.getpwuid(self.uid).pw_name
        except KeyError:
            user = str(self.uid)
        try:
            group = grp.getgrgid(self.gid).gr_name
        except KeyError:
            group = str(self.gid)
        return f"{user}:{group}"


@dataclass(frozen=True)
class ChainLink:
    """A link of what slurm.conf runs (a folder, a link hop, a script, the Python) that someone other than root
    could change (hpc_aidc.install.kit_chain)."""

    path: str
    why: str         # "owned by uid 1000", "writable by everyone", ...
    leads_to: str    # what runs through it: "Epilog /opt/hpcai/slurm/energy/epilog.sh"


@dataclass(frozen=True)
class AdminFacts:
    config: Mapping[str, str]                       # slurm.conf keys, lower-cased
    source: str                                     # "scontrol show config" or the slurm.conf path
    prolog_scripts: tuple[str, ...] = ()            # files a glob Prolog names
    paths: Mapping[str, PathFacts | None] = field(default_factory=dict)
    job_submit_lua: str | None = None               # the installed job_submit.lua (None: missing)
    job_submit_lua_path: str = "job_submit.lua"
    slurm_group: str | None = None                  # SlurmUser's primary group
    ctld_log: LogScan | None = None                 # slurmctld's log since its start (None: a slurm.conf file)
    chain: tuple[ChainLink, ...] = ()               # links of what slurm.conf runs that others could change


def parse_slurm_conf(text: str) -> dict[str, str]:
    """Key=Value settings of a slurm.conf (the first Key=Value of each line; comments dropped)."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        key, sep, value = line.partition("=")
        if sep and key and " " not in key.strip():
            out.setdefault(key.strip().lower(), value.strip().split()[0] if value.strip() else "")
    return out


def parse_show_config(text: str) -> dict[str, str]:
    """`scontrol show config`: 'Key = value' lines, keys lower-cased; (null) counts as unset; `Prolog[0]`
    (23.02 and later) as `prolog` (site_check.show_config_items)."""
    return {key.lower(): value for key, value in show_config_items(text).items()}


def version_support(facts: AdminFacts) -> Support | None:
    """The running Slurm's version (`scontrol show config`'s SLURM_VERSION, read with the rest of the config)
    and how far hpc-aidc knows it; None for a slurm.conf file, which names no version."""
    version = parse_version(facts.config.get("slurm_version", ""))
    return support(version) if version is not None else None


def _items(value: str) -> set[str]:
    return {v.strip().lower() for v in value.split(",") if v.strip()}


def _mode(p: PathFacts) -> str:
    return f"{p.owner()} {p.mode:04o}"


def admin_problems(site: SiteProfile, facts: AdminFacts, expected_lua: str | None) -> list[str]:
    """One line per problem: what is wrong, then `fix:` and what to do."""
    conf = facts.config
    ctld_epilog = os.path.normpath(conf["epilogslurmctld"]) if conf.get("epilogslurmctld") else ""
    problems: list[str] = []
    prolog = conf.get("prolog", "")
    scripts = (*config_list(prolog), *facts.prolog_scripts)
    has_energy = any(s.endswith("energy/prolog.sh") or "energy" in s.rsplit("/", 1)[-1] for s in scripts)
    has_health = any("gpu-health" in s or "gpu_prolog" in s for s in scripts)
    gpu_site = any(p.gpus_per_node for p in site.partitions.values())
    lacks = [what for what, missing in (
        ("hpc-aidc's energy prolog (energy_prolog = true: jobs go unmeasured)", site.energy_prolog and not has_energy),
        ("the GPU health check (jobs may start on a broken GPU)", gpu_site and not has_health)) if missing]
    if lacks:
        problems.append(f"Prolog is {prolog or 'unset'}, without {' and '.join(lacks)}; "
                        "fix: Prolog=/opt/hpcai/slurm/prolog.d/* (GPU health, then energy)")
    if (has_energy or has_health) and "alloc" not in _items(conf.get("prologflags", "")):
        problems.append(f"PrologFlags is {conf.get('prologflags') or 'unset'}: the prolog runs only at the first "
                        "step, after the batch script started; fix: PrologFlags=Alloc")
    if has_health and "nohold_on_prolog_fail" not in _items(conf.get("schedulerparameters", "")):
        problems.append("SchedulerParameters lacks nohold_on_prolog_fail: a job whose node fails the GPU check is "
                        "requeued held, not run elsewhere; fix: SchedulerParameters=nohold_on_prolog_fail")
    if site.energy_prolog:
        if not conf.get("epilog", "").endswith("energy/epilog.sh"):
            problems.append(f"Epilog is {conf.get('epilog') or 'unset'}: samplers are never stopped or summarised; "
                            "fix: Epilog=/opt/hpcai/slurm/energy/epilog.sh")
        if not ctld_epilog.endswith(("energy/epilog_slurmctld.sh", CTLD_EPILOG)):
            problems.append(f"EpilogSlurmctld is {conf.get('epilogslurmctld') or 'unset'}: energy never reaches "
                            "AdminComment; fix: EpilogSlurmctld=/opt/hpcai/slurm/energy/epilog_slurmctld.sh "
                            "(then restart slurmctld)")
    if site.audit_log is not None:
        if not ctld_epilog.endswith(CTLD_EPILOG):
            problems.append(f"EpilogSlurmctld is {ctld_epilog or 'unset'}: submissions are not audited "
                            f"(audit_log = {site.audit_log}); fix: EpilogSlurmctld=/opt/hpcai/{CTLD_EPILOG} "
                            "(the audit, then energy; then restart slurmctld)")
        if "job_script" not in _items(conf.get("accountingstoreflags", "")):
            problems.append(f"AccountingStoreFlags is {conf.get('accountingstoreflags') or 'unset'}: accounting "
                            "keeps no batch scripts (`sacct --batch-script`); fix: add job_script (then restart "
                            "slurmctld)")
    if site.policy.enabled:
        if "lua" not in _items(conf.get("jobsubmitplugins", "")):
            problems.append(f"JobSubmitPlugins is {conf.get('jobsubmitplugins') or 'unset'}: the profile's [policy] "
                            "is not enforced by slurmctld; fix: JobSubmitPlugins=lua, then `hpcai admin policy "
                            f"--out {facts.job_submit_lua_path}` and restart slurmctld")
        elif facts.job_submit_lua is None:
            problems.append(f"{facts.job_submit_lua_path} is missing: slurmctld refuses every job; fix: "
                            f"hpcai admin policy --out {facts.job_submit_lua_path}")
        elif expected_lua is not None and facts.job_submit_lua != expected_lua:
            problems.append(f"{facts.job_submit_lua_path} differs from what the site profile renders (stale policy); "
                            f"fix: hpcai admin policy --out {facts.job_submit_lua_path}")
    if gpu_site:
        if "gpu" not in _items(conf.get("grestypes", "")):
            problems.append("GresTypes lacks gpu: Slurm allocates no GPUs; fix: GresTypes=gpu (and gres.conf)")
        if "gres/gpu" not in _items(conf.get("accountingstoragetres", "")):
            problems.append("AccountingStorageTRES lacks gres/gpu: sacct has no GPU-hours; fix: "
                            "AccountingStorageTRES=gres/gpu (restart slurmctld)")
    missing = [k for k in PRIVATE_DATA if k not in _items(conf.get("privatedata", ""))]
    if missing:
        problems.append(f"PrivateData lacks {','.join(missing)}: users see other projects' jobs and usage; fix: "
                        f"PrivateData={','.join(PRIVATE_DATA)} in slurm.conf and slurmdbd.conf")
    problems += _path_problems(site, facts)
    problems += _log_problems(facts)
    problems += _chain_problems(facts)
    return problems


def _chain_problems(facts: AdminFacts) -> list[str]:
    """One line per link of the Prolog/Epilog/EpilogSlurmctld chain (scripts, folders above them, settings,
    Python) that someone other than root could change: they would run code as root (or as SlurmUser)."""
    return [f"{link.path} ({link.why}) is on the way to {link.leads_to}: whoever can change it runs code as root; "
            f"fix: make it root's and writable by root alone (chown root:root {link.path}, chmod go-w, setfacl -b; "
            "a link: replace it), or install the kit under a root-only --prefix"
            for link in facts.chain]


def _log_problems(facts: AdminFacts) -> list[str]:
    """Each `Invalid EpilogSlurmctld(...)` line slurmctld logged since it started: that script never runs."""
    if facts.ctld_log is None:
        return []
    user = facts.config.get("slurmuser", "slurm").split("(", 1)[0] or "slurm"
    problems: list[str] = []
    for bad in facts.ctld_log.invalid:
        daemons = "slurmctld" if bad.setting.endswith("Slurmctld") else "slurmctld and the slurmds"
        problems.append(f"{facts.ctld_log.path}: {bad.line.strip()}: slurmctld found {bad.setting} unusable "
                        f"and runs none until restarted; fix: {bad.setting} must name an existing script "
                        f"executable by root and {user}, with every folder above it enterable by them (see "
                        f"`namei -l {bad.path}`), then restart {daemons} (`scontrol reconfigure` does not check "
                        "it again)")
    return problems


def _path_problems(site: SiteProfile, facts: AdminFacts) -> list[str]:
    problems: list[str] = []
    store = str(site.energy_store)
    st = facts.paths.get(store)
    if st is None:
        problems.append(f"energy store {store} does not exist; fix: install -d -o root -g root -m "
                        f"{'0711' if site.energy_prolog else '1733'} {store}")
    elif st.is_link or not st.is_dir:
        problems.append(f"energy store {store} is a link or not a directory; fix: make it a real directory")
    else:
        want = 0o711 if site.energy_prolog else 0o1733
        if st.uid != 0 or (st.mode & 0o022 and not st.mode & stat.S_ISVTX) or (site.energy_prolog and st.mode != want):
            problems.append(f"energy store {store} is {_mode(st)}, expected root {want:04o}; fix: chown root: "
                            f"{store} && chmod {want:04o} {store}")
    group = facts.slurm_group or "slurm"
    for sub in ("accounting", "accounting/spool"):
        path = f"{store}/{sub}"
        st = facts.paths.get(path)
        if not site.energy_prolog and st is None:
            continue
        if st is None or st.is_link or not st.is_dir:
            problems.append(f"{path} is missing (or not a directory): node summaries have nowhere to go; fix: "
                            f"install -d -o root -g {group} -m 2770 {path}")
        elif st.uid != 0 or st.mode != 0o2770 or (facts.slurm_group and st.owner().split(":")[1] != group):
            problems.append(f"{path} is {_mode(st)}, expected root:{group} 2770; fix: chown root:{group} {path} "
                            f"&& chmod 2770 {path}")
    for path in ("/etc/hpcai/site.toml", "/etc/hpcai/energy.env"):
        st = facts.paths.get(path)
        if st is None:
            if path.endswith("site.toml") or site.energy_prolog:
                problems.append(f"{path} is missing: root-run scripts ignore other profiles; fix: install it "
                                "root:root 0644")
        elif st.is_link or st.uid != 0 or st.mode & 0o022:
            problems.append(f"{path} is {_mode(st)}{' (a link)' if st.is_link else ''}: root-run scripts ignore it; "
                            f"fix: chown root:root {path} && chmod 0644 {path}")
    return problems


def _path_facts(path: str) -> PathFacts | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return PathFacts(st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), stat.S_ISDIR(st.st_mode),
                     stat.S_ISLNK(st.st_mode))


def gather_facts(site: SiteProfile, slurm_conf: Path | None = None) -> AdminFacts:
    """Live facts (`scontrol show config`) or those of a slurm.conf file, plus the files they name."""
    if slurm_conf is not None:
        config = parse_slurm_conf(slurm_conf.read_text())
        source, conf_dir = str(slurm_conf), slurm_conf.parent
        ctld_log: LogScan | None = None
    else:
        config = parse_show_config(run_slurm(["scontrol", "show", "config"]).stdout)
        conf_dir = Path(config.get("slurm_conf", "/etc/slurm/slurm.conf")).parent
        ctld_log = scan_log(config.get("slurmctldlogfile"), "slurmctld")
        # An unreadable log (not root, or not the controller's host) is no problem, but it is said.
        source = "scontrol show config" + (f" (slurmctld log not checked: {ctld_log.skipped})"
                                           if ctld_log.skipped else "")
    lua_path = conf_dir / "job_submit.lua"
    try:
        lua: str | None = lua_path.read_text()
    except OSError:
        lua = None
    slurm_user = config.get("slurmuser", "slurm").split("(", 1)[0] or "slurm"
    try:
        slurm_group: str | None = grp.getgrgid(pwd.getpwnam(slurm_user).pw_gid).gr_name
    except KeyError:
        slurm_group = None
    store = str(site.energy_store)
    names = [store, f"{store}/accounting", f"{store}/accounting/spool", "/etc/hpcai/site.toml", "/etc/hpcai/energy.env"]
    return AdminFacts(config=config, source=source, prolog_scripts=expand_prolog(config.get("prolog", "")),
                      paths={p: _path_facts(p) for p in names}, job_submit_lua=lua,
                      job_submit_lua_path=str(lua_path), slurm_group=slurm_group, ctld_log=ctld_log)
