"""The site's submission rules as code (pure): a request in, the first broken rule out.

The same rules, messages and codes are rendered into the job_submit.lua slurmctld runs
(hpc_aidc.render.job_submit_lua takes RULES and the message templates from here), so a request hpcai
refuses before sbatch is refused by slurmctld with the same code, and the catalogue users read
(`hpcai admin policy --catalogue`, slurm/policy/README.md) is generated from the same table."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hpc_aidc.errors import PolicyError
from hpc_aidc.site import SiteProfile
from hpc_aidc.slurmtime import format_time_limit
from hpc_aidc.spec.resources import Resources

CODE_PREFIX = "HPCAI-P"


@dataclass(frozen=True)
class Rule:
    code: str
    name: str
    when: str        # for the catalogue: what triggers it
    template: str    # the message; {placeholders} are filled the same way in Python and Lua


# The order is the order of evaluation, in hpcai and in job_submit.lua.
RULES: tuple[Rule, ...] = (
    Rule("HPCAI-P001", "account-required", "the job names no account (-A/--account)",
         "Expected an account (-A/--account) on every job. Got none. Add --account=PROJECT; "
         "`sacctmgr -n show assoc user=$USER format=account` lists yours."),
    Rule("HPCAI-P002", "gpus-on-cpu-partition", "a GPU job asks for a CPU-only partition",
         "Expected no GPUs on CPU-only partition {partition}. Got a request for {gpus} GPU(s) instead. "
         "Submit GPU jobs to {gpu_partitions}, or drop the GPU request."),
    Rule("HPCAI-P003", "cpu-job-on-gpu-partition", "a job without GPUs asks for a GPU-only partition",
         "Expected GPUs on GPU-only partition {partition}. Got a job without GPUs instead. "
         "Submit CPU jobs to {cpu_partitions}, or request a GPU."),
    Rule("HPCAI-P004", "impossible-request", "no node of the partition can hold the request "
         "(nodes, GPUs, CPUs or memory per node)",
         "Expected at most {limit} in partition {partition}. Got {got} instead. "
         "Ask for less per node and more nodes, or pick another partition."),
    Rule("HPCAI-P005", "time-required", "the job gives no time limit on a partition that requires one",
         "Expected a time limit (-t/--time) on partition {partition}. Got none. "
         "Add --time=HH:MM:SS (at most {max_time})."),
    Rule("HPCAI-P006", "qos-gpu-cap", "the job asks for more GPUs than its QoS allows per job",
         "Expected at most {max} GPUs per job in QoS {qos}. Got {gpus} instead. "
         "Ask for fewer GPUs, or use a QoS that allows more ({others})."),
    Rule("HPCAI-P007", "cpus-per-gpu", "the job asks for more CPUs per GPU than the GPU type allows",
         "Expected at most {max} CPUs per {gpu_type} GPU. Got {cpus} CPUs for {gpus} GPU(s) instead. "
         "Lower --cpus-per-task or the task count, or ask for more GPUs."),
    Rule("HPCAI-P008", "mem-per-gpu", "the job asks for more memory per GPU than the GPU type allows",
         "Expected at most {max} MB of memory per {gpu_type} GPU. Got {mem} MB for {gpus} GPU(s) instead. "
         "Lower --mem or --mem-per-cpu, or ask for more GPUs."),
)
BY_CODE = {r.code: r for r in RULES}
BY_NAME = {r.name: r for r in RULES}


@dataclass(frozen=True)
class JobRequest:
    """What the rules look at; job_submit.lua derives the same fields from Slurm's job_desc."""

    user: str
    account: str | None
    partition: str | None          # None: the site's default partition
    qos: str | None                # None: the site's default QoS
    time_given: bool
    nodes: int
    gpus: int                      # all GPUs of the job
    gpus_per_node: int
    gpu_type: str | None
    cpus: int                      # all CPUs of the job
    cpus_per_node: int
    mem_per_node_mb: int | None = None


@dataclass(frozen=True)
class Rejection:
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def message(name: str, **values: object) -> Rejection:
    rule = BY_NAME[name]
    return Rejection(rule.code, rule.template.format(**{k: str(v) for k, v in values.items()}))


def _names(names: list[str], none: str) -> str:
    return ", ".join(sorted(names)) or none


# Texts that depend only on the profile: job_submit.lua gets them precomputed, so both sides say the same.
def gpu_partitions_text(site: SiteProfile) -> str:
    return _names([p.name for p in site.partitions.values() if p.gpus_per_node > 0], "a GPU partition")


def cpu_partitions_text(site: SiteProfile) -> str:
    only = site.policy.gpu_only_partitions
    return _names([p for p in site.partitions if p not in only], "a partition that takes CPU jobs")


def max_time_text(site: SiteProfile, partition: str) -> str:
    minutes = site.partitions[partition].max_time_min
    return format_time_limit(minutes) if minutes else "the partition's MaxTime"


def qos_others_text(site: SiteProfile, qos: str) -> str:
    caps = site.policy.qos_max_gpus
    cap = caps.get(qos, 0)
    return _names([f"{q}: {c}" for q, c in caps.items() if c > cap], "ask your admins")


def check_request(site: SiteProfile, req: JobRequest) -> Rejection | None:
    """The first rule of the site's policy that the request breaks; None when it passes (or the site
    has no [policy] table, or the user is exempt). Unknown partitions are left to Slurm."""
    policy = site.policy
    if not policy.enabled or req.user in policy.exempt_users:
        return None
    if policy.require_account and not req.account:
        return message("account-required")
    name = req.partition or site.default_partition
    part = site.partitions.get(name or "")
    if part is None:
        return None
    where = part.name
    if req.gpus > 0 and part.gpus_per_node == 0:
        return message("gpus-on-cpu-partition", partition=where, gpus=req.gpus,
                       gpu_partitions=gpu_partitions_text(site))
    if req.gpus == 0 and where in policy.gpu_only_partitions:
        return message("cpu-job-on-gpu-partition", partition=where, cpu_partitions=cpu_partitions_text(site))
    impossible = _impossible(part.nodes, part.gpus_per_node, part.cpus_per_node, part.mem_per_node_mb, req)
    if impossible:
        limit, got = impossible[0]
        return message("impossible-request", limit=limit, partition=where, got=got)
    if not req.time_given and policy.time_required(where):
        return message("time-required", partition=where, max_time=max_time_text(site, where))
    qos = req.qos or site.default_qos
    cap = policy.qos_max_gpus.get(qos or "")
    if qos and cap is not None and req.gpus > cap:
        return message("qos-gpu-cap", max=cap, qos=qos, gpus=req.gpus, others=qos_others_text(site, qos))
    gpu_type = req.gpu_type or part.gpu_type
    caps = policy.gpu_caps.get(gpu_type or "")
    if req.gpus > 0 and caps is not None:
        if caps.max_cpus_per_gpu is not None and req.cpus > caps.max_cpus_per_gpu * req.gpus:
            return message("cpus-per-gpu", max=caps.max_cpus_per_gpu, gpu_type=gpu_type, cpus=req.cpus,
                           gpus=req.gpus)
        mem = None if req.mem_per_node_mb is None else req.mem_per_node_mb * req.nodes
        if caps.max_mem_per_gpu_mb is not None and mem is not None and mem > caps.max_mem_per_gpu_mb * req.gpus:
            return message("mem-per-gpu", max=caps.max_mem_per_gpu_mb, gpu_type=gpu_type, mem=mem, gpus=req.gpus)
    return None


def _impossible(nodes: int, gpus: int, cpus: int, mem_mb: int, req: JobRequest) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if req.nodes > nodes:
        found.append((f"{nodes} nodes", f"{req.nodes} nodes"))
    if req.gpus_per_node > gpus:
        found.append((f"{gpus} GPUs per node", f"{req.gpus_per_node} GPUs per node"))
    if req.cpus_per_node > cpus:
        found.append((f"{cpus} CPUs per node", f"{req.cpus_per_node} CPUs per node"))
    if mem_mb and req.mem_per_node_mb is not None and req.mem_per_node_mb > mem_mb:
        found.append((f"{mem_mb} MB of memory per node", f"{req.mem_per_node_mb} MB per node"))
    return found


def request_from_resources(resources: Resources, user: str, *, time_given: bool,
                           account_given: str | None = None) -> JobRequest:
    """The request hpcai is about to submit. `account_given` is the account the script will carry (the
    user's or the site's default_account); Resources already holds it."""
    per_node = resources.ntasks_per_node * resources.cpus_per_task
    mem = getattr(resources, "mem", None)
    return JobRequest(
        user=user, account=account_given if account_given is not None else resources.account,
        partition=resources.partition, qos=resources.qos, time_given=time_given, nodes=resources.nodes,
        gpus=resources.gpus_per_node * resources.nodes, gpus_per_node=resources.gpus_per_node,
        gpu_type=resources.gpu_type, cpus=per_node * resources.nodes, cpus_per_node=per_node,
        mem_per_node_mb=None if mem is None else mem_mb(str(mem)),
    )


def mem_mb(text: str) -> int | None:
    """Slurm's --mem value in MB ("4096", "4096M", "4G"; "0" is all of the node's memory, 0 here as in
    job_submit.lua); None for what this does not read."""
    m = re.match(r"^([0-9]+)([KMGT]?)B?$", text.strip().upper())
    if not m:
        return None
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2)]
    return int(int(m.group(1)) * scale)


def enforce(site: SiteProfile, req: JobRequest) -> None:
    """Raise PolicyError (exit 2, one line with the rule's code) when the request breaks the policy."""
    rejection = check_request(site, req)
    if rejection is not None:
        raise PolicyError(str(rejection), code=rejection.code)


def catalogue_markdown() -> str:
    """The rejection catalogue users and admins read (slurm/policy/README.md is this text)."""
    lines = [
        "# Submission policy: rejection catalogue",
        "",
        "Generated by `hpcai admin policy --catalogue` from `hpc_aidc/spec/policy.py`; do not edit by hand.",
        "",
        "Jobs are checked against the site profile's `[policy]` table twice: by `hpcai` before it calls",
        "`sbatch` (`hpcai: error: HPCAI-P00N: ...`, exit 2) and by slurmctld through the `job_submit.lua`",
        "that `hpcai admin policy --out job_submit.lua` renders (`sbatch: error: HPCAI-P00N: ...`). Both say",
        "the same thing with the same code. Rules are checked in this order; the first broken one is reported.",
        "Users listed in `policy.exempt_users` are never checked.",
        "",
        "| code | rule | refused when | message (placeholders filled from your request and the profile) |",
        "|---|---|---|---|",
    ]
    for r in RULES:
        lines.append(f"| {r.code} | {r.name} | {r.when} | {r.template.replace('|', '/')} |")
    lines += [
        "",
        "Which rules apply where (profile keys):",
        "",
        "- HPCAI-P001: `policy.require_account = true`.",
        "- HPCAI-P002: always, for partitions with `gpus_per_node = 0`.",
        "- HPCAI-P003: partitions listed in `policy.gpu_only_partitions`.",
        "- HPCAI-P004: always: `[partitions.NAME]` nodes, gpus_per_node, cpus_per_node, mem_per_node_mb.",
        "- HPCAI-P005: `policy.require_time = true` (every partition) or a list of partitions.",
        "- HPCAI-P006: `[policy.qos.NAME] max_gpus_per_job`; a job without `--qos` counts under "
        "`cluster.default_qos`.",
        "- HPCAI-P007, HPCAI-P008: `[policy.gpu_types.TYPE] max_cpus_per_gpu`, `max_mem_per_gpu_mb`; the GPU "
        "type is the requested one, else the partition's.",
        "",
    ]
    return "\n".join(lines)
