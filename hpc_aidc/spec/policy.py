"""The site's submission rules as code (pure): a request in, the first broken rule out.

The same rules, messages and codes are rendered into the job_submit.lua slurmctld runs
(hpc_aidc.render.job_submit_lua takes RULES and the message templates from here), so a request hpcai
refuses before sbatch is refused by slurmctld with the same code, and the catalogue users read
(`hpcai admin policy --catalogue`, slurm/policy/README.md) is generated from the same table.

slurmctld checks a job twice: at submission (its job_desc) and at every change (`scontrol update`: the job as it
would be after the change). request_from_job_desc and request_after_change read Slurm's fields here exactly as
job_submit.lua does, so the tests hold both sides to the same verdicts."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from hpc_aidc.errors import PolicyError
from hpc_aidc.site_profile import Partition, SiteProfile
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
    Rule("HPCAI-P002", "gpus-on-cpu-partition", "a job that asks for GPUs in any form (--gres=gpu[:type]:N, "
         "--gpus, --gpus-per-node, --gpus-per-task, --gpus-per-socket) names a CPU-only partition",
         "Expected no GPUs on CPU-only partition {partition}. Got a request for {gpus} GPU(s) instead. "
         "Submit GPU jobs to {gpu_partitions}, or drop the GPU request."),
    Rule("HPCAI-P003", "cpu-job-on-gpu-partition", "a job that asks for no GPUs names a GPU-only partition "
         "(--exclusive alone does not make it a GPU job)",
         "Expected GPUs on GPU-only partition {partition}. Got a job without GPUs instead. "
         "Submit CPU jobs to {cpu_partitions}, or request a GPU."),
    Rule("HPCAI-P004", "impossible-request", "no node of the partition can hold the request: more nodes than "
         "the partition has (a -N MIN-MAX range counts at MAX), or more GPUs, CPUs or memory per node than a "
         "node has",
         "Expected at most {limit} in partition {partition}. Got {got} instead. "
         "Ask for less per node and more nodes, or pick another partition."),
    Rule("HPCAI-P005", "time-required", "the job gives no time limit on a partition that requires one",
         "Expected a time limit (-t/--time) on partition {partition}. Got none. "
         "Add --time=HH:MM:SS (at most {max_time})."),
    Rule("HPCAI-P006", "qos-gpu-cap", "the job holds more GPUs than its QoS allows per job: every GPU form "
         "counts, a -N range at its top, and --exclusive counts every GPU of each node",
         "Expected at most {max} GPUs per job in QoS {qos}. Got {gpus} instead. "
         "Ask for fewer GPUs, or use a QoS that allows more ({others})."),
    Rule("HPCAI-P007", "cpus-per-gpu", "the job holds more CPUs per GPU than the GPU type allows "
         "(--exclusive: all CPUs and GPUs of each node)",
         "Expected at most {max} CPUs per {gpu_type} GPU. Got {cpus} CPUs for {gpus} GPU(s) instead. "
         "Lower --cpus-per-task or the task count, or ask for more GPUs."),
    Rule("HPCAI-P008", "mem-per-gpu", "the job holds more memory per GPU than the GPU type allows "
         "(--mem=0 and --exclusive: all of each node's memory)",
         "Expected at most {max} MB of memory per {gpu_type} GPU. Got {mem} MB for {gpus} GPU(s) instead. "
         "Lower --mem or --mem-per-cpu, or ask for more GPUs."),
)
BY_CODE = {r.code: r for r in RULES}
BY_NAME = {r.name: r for r in RULES}


@dataclass(frozen=True)
class PolicyRequest:
    """What the rules look at; job_submit.lua derives the same fields from Slurm's job_desc."""

    user: str
    account: str | None
    partition: str | None          # None: the site's default partition
    qos: str | None                # None: the site's default QoS
    time_given: bool
    nodes: int                     # the most nodes the job may get (the top of a -N MIN-MAX range)
    gpus: int                      # all GPUs the job asks for, in every form
    gpus_per_node: int
    gpu_type: str | None
    cpus: int                      # all CPUs of the job
    cpus_per_node: int
    mem_per_node_mb: int | None = None   # 0: all of each node's memory (--mem=0); None: not asked for
    exclusive: bool = False        # --exclusive: whole nodes, so every CPU, GPU and MB of each node counts


@dataclass(frozen=True)
class Held:
    """What a request takes on one partition, all nodes together: more than it names with --exclusive
    (whole nodes) or --mem=0 (each node's memory). The caps (HPCAI-P006..P008) are on what a job holds."""

    gpus: int
    cpus: int
    mem_mb: int | None             # None: not asked for, or all of nodes whose memory the profile omits


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


def first_broken_rule(site: SiteProfile, req: PolicyRequest) -> Rejection | None:
    """The first rule of the site's policy that the request breaks; None when it passes (or the site
    has no [policy] table, or the user is exempt). Unknown partitions are left to Slurm."""
    policy = site.policy
    if not policy.enabled or req.user in policy.exempt_users:
        return None
    if policy.require_account and not req.account:
        return message("account-required")
    # -p a,b: Slurm may run the job in either, so it must pass in each (as in job_submit.lua)
    for name in (req.partition or site.default_partition or "").split(","):
        part = site.partitions.get(name)
        refusal = None if part is None else _check_partition(site, part, req)
        if refusal is not None:
            return refusal
    return None


def _check_partition(site: SiteProfile, part: Partition, req: PolicyRequest) -> Rejection | None:
    """The first rule from HPCAI-P002 on that the request breaks in one partition (job_submit.lua's
    check_partition)."""
    policy = site.policy
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
    held = held_on(part, req)
    qos = req.qos or site.default_qos
    cap = policy.qos_max_gpus.get(qos or "")
    if qos and cap is not None and held.gpus > cap:
        return message("qos-gpu-cap", max=cap, qos=qos, gpus=held.gpus, others=qos_others_text(site, qos))
    gpu_type = req.gpu_type or part.gpu_type
    caps = policy.gpu_caps.get(gpu_type or "")
    if held.gpus > 0 and caps is not None:
        if caps.max_cpus_per_gpu is not None and held.cpus > caps.max_cpus_per_gpu * held.gpus:
            return message("cpus-per-gpu", max=caps.max_cpus_per_gpu, gpu_type=gpu_type, cpus=held.cpus,
                           gpus=held.gpus)
        mem = held.mem_mb
        if caps.max_mem_per_gpu_mb is not None and mem is not None and mem > caps.max_mem_per_gpu_mb * held.gpus:
            return message("mem-per-gpu", max=caps.max_mem_per_gpu_mb, gpu_type=gpu_type, mem=mem, gpus=held.gpus)
    return None


def held_on(part: Partition, req: PolicyRequest) -> Held:
    """What the request holds on `part`: whole nodes with --exclusive, each node's memory with --mem=0 (the
    profile's mem_per_node_mb; when it gives none, memory is not checked, as for a job that names none)."""
    mem = req.mem_per_node_mb
    if (req.exclusive or mem == 0) and part.mem_per_node_mb > 0:
        mem = max(mem or 0, part.mem_per_node_mb)
    elif mem == 0:
        mem = None
    gpus, cpus = req.gpus, req.cpus
    if req.exclusive:
        gpus = max(gpus, req.nodes * part.gpus_per_node)
        cpus = max(cpus, req.nodes * part.cpus_per_node)
    return Held(gpus=gpus, cpus=cpus, mem_mb=None if mem is None else mem * req.nodes)


def _impossible(nodes: int, gpus: int, cpus: int, mem_mb: int, req: PolicyRequest) -> list[tuple[str, str]]:
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
                           account_given: str | None = None) -> PolicyRequest:
    """The request hpcai is about to submit. `account_given` is the account the script will carry (the
    user's or the site's default_account); Resources already holds it."""
    per_node = resources.ntasks_per_node * resources.cpus_per_task
    mem = getattr(resources, "mem", None)
    return PolicyRequest(
        user=user, account=account_given if account_given is not None else resources.account,
        partition=resources.partition, qos=resources.qos, time_given=time_given, nodes=resources.nodes,
        gpus=resources.gpus_per_node * resources.nodes, gpus_per_node=resources.gpus_per_node,
        gpu_type=resources.gpu_type, cpus=per_node * resources.nodes, cpus_per_node=per_node,
        mem_per_node_mb=None if mem is None else mem_mb(str(mem)),
    )


def mem_mb(text: str) -> int | None:
    """Slurm's --mem value in MB ("4096", "4096M", "4G"); None for what this does not read. "0" (all of the
    node's memory) stays 0: the rules count it as the partition's memory per node, as job_submit.lua does."""
    m = re.match(r"^([0-9]+)([KMGT]?)B?$", text.strip().upper())
    if not m:
        return None
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2)]
    return int(int(m.group(1)) * scale)


# -- Slurm's own fields, read as job_submit.lua reads them ------------------------------------------------
# Each function below has a twin of the same name in hpc_aidc/render/job_submit.lua; keep them line for line
# alike (tests/admin/test_policy.py runs both on the same fields).

# Slurm's "not set" numbers (NO_VAL and INFINITE at 16, 32 and 64 bits).
UNSET = frozenset({65534, 65535, 4294967294, 4294967295, 18446744073709551614, 18446744073709551615})
JOB_SHARED_NONE = 0                # job_desc.shared for --exclusive (and `scontrol update OverSubscribe=no`)
SlurmFields = Mapping[str, object]

# The fields of a job the rules read. A change (`scontrol update`) that sets none of them is not checked.
FIELDS = ("account", "partition", "qos", "time_limit", "min_nodes", "max_nodes", "num_tasks", "ntasks_per_node",
          "cpus_per_task", "min_cpus", "pn_min_cpus", "sockets_per_node", "tres_per_node", "tres_per_job",
          "tres_per_task", "tres_per_socket", "cpus_per_tres", "mem_per_tres", "min_mem_per_node",
          "min_mem_per_cpu", "shared")
# An empty value clears these (`scontrol update TresPerNode=`): the job no longer has them.
CLEARABLE = frozenset({"qos", "tres_per_node", "tres_per_job", "tres_per_task", "tres_per_socket", "cpus_per_tres",
                       "mem_per_tres"})
# One setting in Slurm (pn_min_memory): a change to either replaces both.
MEMORY = frozenset({"min_mem_per_node", "min_mem_per_cpu"})
# What decides how many GPUs a job has. Slurm's job record lacks some of it (task and socket counts), so
# when a change leaves all of it alone, the job keeps at least the GPUs slurmctld counted for it.
GPU_SHAPE = frozenset({"min_nodes", "max_nodes", "num_tasks", "ntasks_per_node", "sockets_per_node", "tres_per_node",
                       "tres_per_job", "tres_per_task", "tres_per_socket", "shared"})


def given(v: object) -> bool:
    return v is not None and v != "" and not (isinstance(v, int | float) and v in UNSET)


def num(v: object) -> int | None:
    """A number Slurm set; None when it is not set."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not given(v):
        return None
    return int(v)


def positive(v: object) -> int | None:
    """A count Slurm set (1 or more); None otherwise (job records hold 0 for some counts never asked)."""
    n = num(v)
    return n if n is not None and n >= 1 else None


def gpus_in(spec: object) -> tuple[int, str | None]:
    """GPUs in a TRES string such as "gres:gpu:h100:2,gres:foo:1" (also "gres/gpu:2", "gpu"): count, type."""
    if not given(spec) or not isinstance(spec, str):
        return 0, None
    total, kind = 0, None
    for item in (i for i in spec.split(",") if i):
        parts = [p for p in re.sub(r"^gres[:/]", "", item, count=1).split(":") if p]
        if not parts or parts[0] != "gpu":
            continue
        count = 1
        if len(parts) >= 3:
            kind = parts[1]
            digits = re.match(r"[0-9]+", parts[2])
            count = int(digits.group()) if digits else 1
        elif len(parts) == 2:
            if re.fullmatch(r"[0-9]+", parts[1]):
                count = int(parts[1])
            else:
                kind = parts[1]
        total += count
    return total, kind


def request_from_job_desc(desc: SlurmFields, user: str) -> PolicyRequest:
    """The request in a Slurm job_desc (job_submit.lua's `request`): every GPU form summed, a -N range at its
    top, --exclusive (shared == 0) as whole nodes, --mem=0 kept as 0 (all of each node's memory)."""
    nodes = max(positive(desc.get("min_nodes")) or 1, positive(desc.get("max_nodes")) or 0)
    per_node, t1 = gpus_in(desc.get("tres_per_node"))
    per_job, t2 = gpus_in(desc.get("tres_per_job"))
    per_task, t3 = gpus_in(desc.get("tres_per_task"))
    per_socket, t4 = gpus_in(desc.get("tres_per_socket"))
    sockets = positive(desc.get("sockets_per_node")) or 1
    tasks_per_node = positive(desc.get("ntasks_per_node"))
    tasks = positive(desc.get("num_tasks")) or (tasks_per_node or 1) * nodes
    if tasks_per_node is None:
        tasks_per_node = math.ceil(tasks / nodes)
    # --gpus (per job) is a total; the other forms add up per node and per task. Take whichever is more.
    node_gpus = per_node + per_socket * sockets
    gpus = max(per_job, node_gpus * nodes + per_task * tasks)
    gpus_per_node = max(node_gpus + per_task * tasks_per_node, math.ceil(gpus / nodes))
    cpt = positive(desc.get("cpus_per_task")) or 1
    pn_min_cpus = positive(desc.get("pn_min_cpus")) or 0
    cpus_per_node = max(tasks_per_node * cpt, pn_min_cpus)
    cpus = max(tasks * cpt, positive(desc.get("min_cpus")) or 0, pn_min_cpus * nodes)
    cpus_per_gpu = gpus_in(desc.get("cpus_per_tres"))[0]
    if cpus_per_gpu > 0 and gpus > 0:
        cpus = max(cpus, cpus_per_gpu * gpus)
        cpus_per_node = max(cpus_per_node, cpus_per_gpu * gpus_per_node)
    mem = num(desc.get("min_mem_per_node"))
    mem_per_cpu = num(desc.get("min_mem_per_cpu"))
    if mem is None and mem_per_cpu is not None:
        mem = mem_per_cpu * cpus_per_node
    mem_per_gpu = gpus_in(desc.get("mem_per_tres"))[0]
    if mem is None and mem_per_gpu > 0:
        mem = mem_per_gpu * gpus_per_node
    account, partition, qos = (desc.get(k) for k in ("account", "partition", "qos"))
    return PolicyRequest(
        user=user, account=account if isinstance(account, str) and account else None,
        partition=partition if isinstance(partition, str) and partition else None,
        qos=qos if isinstance(qos, str) and qos else None, time_given=given(desc.get("time_limit")),
        nodes=nodes, gpus=gpus, gpus_per_node=gpus_per_node, gpu_type=t1 or t2 or t3 or t4, cpus=cpus,
        cpus_per_node=cpus_per_node, mem_per_node_mb=mem, exclusive=num(desc.get("shared")) == JOB_SHARED_NONE,
    )


def changed(change: SlurmFields, field: str) -> bool:
    value = change.get(field)
    return given(value) or (value == "" and field in CLEARABLE)


def job_after_change(change: SlurmFields, record: SlurmFields) -> dict[str, object] | None:
    """The job as it would be after `change` (slurm_job_modify's job_desc: only what the change sets) to the
    job `record` (its job_rec); None when the change sets nothing the rules read. A recorded 0 MB per node is
    not read as --mem=0: Slurm records 0 for a job that gave no --mem, too (the site's default)."""
    if not any(changed(change, f) for f in FIELDS):
        return None
    memory_changed = any(changed(change, f) for f in MEMORY)
    job: dict[str, object] = {}
    for f in FIELDS:
        if changed(change, f):
            if change[f] != "":
                job[f] = change[f]
        elif f not in MEMORY or not memory_changed:
            job[f] = record.get(f)
    if not memory_changed and job.get("min_mem_per_node") == 0:
        job["min_mem_per_node"] = None
    return job


def recorded_gpus(record: SlurmFields) -> int:
    """The GPUs slurmctld counted for the job (gres/gpu in its requested TRES, e.g. "cpu=2,node=1,gres/gpu=4")."""
    text = record.get("tres_fmt_req_str")
    found = re.search(r"(?:^|,)gres/gpu=([0-9]+)(?:,|$)", text) if isinstance(text, str) else None
    return int(found.group(1)) if found else 0


def request_after_change(change: SlurmFields, record: SlurmFields, user: str) -> PolicyRequest | None:
    """The request of the job after the change (job_submit.lua's slurm_job_modify); None: not checked."""
    job = job_after_change(change, record)
    if job is None:
        return None
    req = request_from_job_desc(job, user)
    if not any(changed(change, f) for f in GPU_SHAPE):
        gpus = max(req.gpus, recorded_gpus(record))
        req = dataclasses.replace(req, gpus=gpus, gpus_per_node=max(req.gpus_per_node, math.ceil(gpus / req.nodes)))
    return req


def first_broken_change(site: SiteProfile, change: SlurmFields, record: SlurmFields, user: str) -> Rejection | None:
    """The first rule the job breaks after the change; None when it passes, when the change sets nothing the
    rules read, or when the user is root (Slurm's own admin) or exempt."""
    req = request_after_change(change, record, user)
    if req is None or user == "root":
        return None
    return first_broken_rule(site, req)


def enforce(site: SiteProfile, req: PolicyRequest) -> None:
    """Raise PolicyError (exit 2, one line with the rule's code) when the request breaks the policy."""
    rejection = first_broken_rule(site, req)
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
        "Changes are checked too: `scontrol update` of a job's partition, QoS, account, time limit, node count,",
        "tasks, CPUs, memory, GPUs (`TresPerNode=`, `TresPerJob=`, `TresPerTask=`, `TresPerSocket=`, `Gres=`) or",
        "`OverSubscribe=no` is refused when the job, as it would be after the change, breaks a rule; changes",
        "to anything else (name, comment, dependencies, ...) are never refused. Root and the exempt users may",
        "change anything.",
        "Slurm 22.05 does not show job_submit.lua's message for a refused change: `scontrol` says",
        "`Job violates accounting/QOS policy` and the code is in slurmctld's log (later Slurm shows the message).",
        "",
        "What counts (the same on both sides):",
        "",
        "- GPUs: every form adds up: `--gres=gpu:N` and `--gres=gpu:TYPE:N`, `--gpus-per-node`, `--gpus-per-task`",
        "  (times the tasks), `--gpus-per-socket` (times `--sockets-per-node`, 1 when not given); `--gpus` is a",
        "  total for the job, and the larger of it and the other forms counts.",
        "- Nodes: a range `-N MIN-MAX` counts at MAX (the job may get that many).",
        "- Memory: `--mem=0` is all of each node's memory, the partition's `mem_per_node_mb`.",
        "- `--exclusive`: whole nodes; every CPU and GPU and all the memory of each node count for HPCAI-P006,",
        "  HPCAI-P007 and HPCAI-P008 (a job that asks for no GPUs is still refused by HPCAI-P003).",
        "- A changed job: what the change sets, the rest as slurmctld recorded it. A recorded 0 MB per node is",
        "  not read as `--mem=0` (Slurm records 0 for jobs that gave no `--mem`, too), and a change that leaves",
        "  nodes, tasks and GPUs alone keeps at least the GPUs slurmctld counted for the job.",
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
        "- HPCAI-P004: always: `[partitions.NAME]` nodes, gpus_per_node, cpus_per_node, mem_per_node_mb (0: memory "
        "is not checked, nor `--mem=0` against HPCAI-P008).",
        "- HPCAI-P005: `policy.require_time = true` (every partition) or a list of partitions.",
        "- HPCAI-P006: `[policy.qos.NAME] max_gpus_per_job`; a job without `--qos` counts under "
        "`cluster.default_qos`.",
        "- HPCAI-P007, HPCAI-P008: `[policy.gpu_types.TYPE] max_cpus_per_gpu`, `max_mem_per_gpu_mb`; the GPU "
        "type is the requested one, else the partition's.",
        "",
    ]
    return "\n".join(lines)
