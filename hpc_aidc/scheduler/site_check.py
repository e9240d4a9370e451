"""`hpcai site check`: compare the site profile with the live cluster (pure comparison, batched I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hpc_aidc.scheduler.parse import parse_gres, parse_key_values
from hpc_aidc.site_profile import SiteProfile
from hpc_aidc.slurm_client import run_slurm
from hpc_aidc.slurmtime import parse_time_limit


@dataclass(frozen=True)
class ClusterFacts:
    partitions: dict[str, dict[str, str]]   # scontrol show partition -o, by name
    nodes: dict[str, dict[str, str]]        # scontrol show node -o, by name
    accounts: frozenset[str]
    qos: frozenset[str]
    prolog: str = ""  # slurm.conf's Prolog, as `scontrol show config` prints it
    prolog_scripts: tuple[str, ...] = ()  # the files a glob Prolog (prolog.d/*) names on this machine


def parse_scontrol_records(text: str, key: str) -> dict[str, dict[str, str]]:
    records = (parse_key_values(line) for line in text.splitlines() if line.strip())
    return {r[key]: r for r in records if key in r}


def _lines(out: str) -> frozenset[str]:
    return frozenset(x.strip() for x in out.splitlines() if x.strip())


def live_facts() -> ClusterFacts:
    lines = _lines
    return ClusterFacts(
        partitions=parse_scontrol_records(run_slurm(["scontrol", "show", "partition", "-o"]).stdout,
                                          "PartitionName"),
        nodes=parse_scontrol_records(run_slurm(["scontrol", "show", "node", "-o"]).stdout, "NodeName"),
        accounts=lines(run_slurm(["sacctmgr", "-n", "-P", "show", "account", "format=account"]).stdout),
        qos=lines(run_slurm(["sacctmgr", "-n", "-P", "show", "qos", "format=name"]).stdout),
        prolog=(prolog := parse_config_value(run_slurm(["scontrol", "show", "config"]).stdout, "Prolog")),
        prolog_scripts=expand_prolog(prolog),
    )


def expand_prolog(prolog: str) -> tuple[str, ...]:
    """Slurm runs every file a glob Prolog (e.g. /opt/hpcai/slurm/prolog.d/*) matches, in name order."""
    import glob

    return tuple(path for item in config_list(prolog) if any(c in item for c in "*?[")
                 for path in sorted(glob.glob(item)))


def runs_energy_prolog(facts: ClusterFacts) -> bool:
    """slurm.conf's Prolog is hpc-aidc's energy prolog, or a prolog.d glob holding it (10-energy.sh)."""
    return any(p.endswith("energy/prolog.sh") for p in config_list(facts.prolog)) or any(
        s.endswith("energy/prolog.sh") or "energy" in s.rsplit("/", 1)[-1] for s in facts.prolog_scripts)


_INDEXED = re.compile(r"^(\w+)\[\d+\]$")


def show_config_items(text: str) -> dict[str, str]:
    """`scontrol show config`'s `Key = value` lines as printed; (null) counts as unset. Settings that may
    name several scripts (Prolog, Epilog, PrologSlurmctld, EpilogSlurmctld) are printed one per line as
    `Prolog[0] = ...` from 23.02 on (seen on 24.11 and 26.05; unset ones left out) and as `Prolog = ...`
    before (22.05): both read as `Prolog`, several scripts comma-separated as slurm.conf lists them."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or " " in name:
            continue
        value = "" if value == "(null)" else value
        indexed = _INDEXED.match(name)
        if indexed:
            name = indexed.group(1)
            value = ",".join(v for v in (out.get(name, ""), value) if v)
        out[name] = value
    return out


def parse_config_value(text: str, key: str) -> str:
    """One setting of `scontrol show config` (show_config_items); "" when absent or (null)."""
    return show_config_items(text).get(key, "")


def config_list(value: str) -> list[str]:
    """The scripts of a Prolog/Epilog setting (comma-separated from 23.02 on)."""
    return [v.strip() for v in value.split(",") if v.strip()]


def site_problems(site: SiteProfile, facts: ClusterFacts) -> list[str]:
    """Each problem is one line: what differs and how to fix it."""
    problems: list[str] = []
    src = site.source
    for name, part in sorted(site.partitions.items()):
        live = facts.partitions.get(name)
        if live is None:
            problems.append(f"partition {name!r} is in {src} but not in Slurm "
                            f"(Slurm has: {', '.join(sorted(facts.partitions))}); remove or rename it")
            continue
        total = int(live.get("TotalNodes", "0") or 0)
        if part.nodes > total:
            problems.append(f"partitions.{name}.nodes = {part.nodes} but Slurm's partition has {total} nodes; "
                            f"set nodes = {total}")
        live_max = live.get("MaxTime", "UNLIMITED")
        if part.max_time_min is not None and live_max not in {"UNLIMITED", "INFINITE"} \
                and part.max_time_min > parse_time_limit(live_max):
            problems.append(f"partitions.{name}.max_time exceeds Slurm's MaxTime={live_max}; lower it")
        members = [n for n in facts.nodes.values() if name in n.get("Partitions", "").split(",")]
        gpu_counts = [sum(c for kind, t, c in parse_gres(n.get("Gres", "")) if kind == "gpu"
                          and (part.gpu_type is None or t == part.gpu_type)) for n in members]
        if part.gpus_per_node and (not gpu_counts or min(gpu_counts) < part.gpus_per_node):
            seen = sorted({n.get("Gres", "") for n in members})
            problems.append(f"partitions.{name} declares {part.gpus_per_node} GPU(s) of type "
                            f"{part.gpu_type!r} per node, but its nodes offer Gres={', '.join(seen) or 'none'}; "
                            "fix gpu_type/gpus_per_node or gres.conf")
        cpus = [int(n.get("CPUTot", "0") or 0) for n in members]
        if cpus and part.cpus_per_node > min(cpus):
            problems.append(f"partitions.{name}.cpus_per_node = {part.cpus_per_node} but its smallest node has "
                            f"{min(cpus)} CPUs; set cpus_per_node = {min(cpus)}")
    if site.energy_prolog and not runs_energy_prolog(facts):
        problems.append(f"cluster.energy_prolog = true but slurm.conf's Prolog is {facts.prolog or 'unset'}, not "
                        "hpc-aidc's slurm/energy/prolog.sh: jobs would go unmeasured; install the prolog "
                        "or set energy_prolog = false")
    if site.default_account and site.default_account not in facts.accounts:
        problems.append(f"cluster.default_account {site.default_account!r} is not a Slurm account; "
                        "create it with sacctmgr or fix the profile")
    if site.default_qos and site.default_qos not in facts.qos:
        problems.append(f"cluster.default_qos {site.default_qos!r} is not a Slurm QoS "
                        f"(known: {', '.join(sorted(facts.qos))})")
    return problems
