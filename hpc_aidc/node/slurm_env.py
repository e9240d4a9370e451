"""Where this rank sits in the job, from the Slurm environment alone (pure functions of a mapping, as
Lightning's SLURMEnvironment does). DeepSpeed's runtime does not read SLURM_* itself."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from hpc_aidc.errors import ConfigError
from hpc_aidc.formats.job_env import PORTS_ENV
from hpc_aidc.monitor.restarts import run_of
from hpc_aidc.site_profile import DEFAULT_RENDEZVOUS_PORTS, parse_port_range

# The site profile's cluster.rendezvous_ports, exported into every training job's environment.


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    master_addr: str
    master_port: int
    job_id: str

    def torch_env(self) -> dict[str, str]:
        """The variables torch.distributed's env:// rendezvous and DeepSpeed read."""
        return {"RANK": str(self.rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": str(self.local_rank),
                "LOCAL_WORLD_SIZE": str(self.local_world_size), "MASTER_ADDR": self.master_addr,
                "MASTER_PORT": str(self.master_port)}


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm's compressed host lists: 'n[1-3,5],gpu-a[01-02]' -> ['n1', 'n2', 'n3', 'n5', 'gpu-a01', 'gpu-a02']."""
    hosts: list[str] = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", hostlist):
        hosts.extend(_expand_one(item.strip()))
    return [h for h in hosts if h]


def _expand_one(item: str) -> list[str]:
    m = re.search(r"\[([^\]]*)\]", item)
    if not m:
        return [item]
    prefix, suffix = item[: m.start()], item[m.end():]
    out: list[str] = []
    for part in m.group(1).split(","):
        lo, _, hi = part.partition("-")
        values = [lo] if not hi else [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
        for value in values:
            out.extend(_expand_one(prefix + value + suffix))
    return out


def rendezvous_port(job_id: str, ports: tuple[int, int] = DEFAULT_RENDEZVOUS_PORTS) -> int:
    """A port derived from the job id within `ports` (inclusive), so two jobs sharing a first node do not
    collide; the site's range lies outside the kernel's ephemeral ports, which outgoing connections take."""
    digits = int(re.sub(r"\D", "", job_id) or "0")
    lo, hi = ports
    return lo + digits % (hi - lo + 1)


def port_range(env: Mapping[str, str]) -> tuple[int, int]:
    """The rendezvous port range the job was given ($HPCAI_RENDEZVOUS_PORTS), else the default."""
    text = env.get(PORTS_ENV)
    if not text:
        return DEFAULT_RENDEZVOUS_PORTS
    return parse_port_range(text, where=f"${PORTS_ENV}", source="the site profile")


def rank_info(env: Mapping[str, str]) -> RankInfo:
    """Rank, world and rendezvous of this srun task. Outside Slurm: a single local rank."""
    if "SLURM_PROCID" not in env:
        return RankInfo(0, 1, 0, 1, 0, "127.0.0.1", rendezvous_port(env.get("HPCAI_JOB_ID", "0"), port_range(env)),
                        "local")
    try:
        rank = int(env["SLURM_PROCID"])
        world = int(env.get("SLURM_NTASKS") or env["SLURM_NPROCS"])
        local_rank = int(env.get("SLURM_LOCALID", "0"))
        node_rank = int(env.get("SLURM_NODEID", "0"))
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"Expected SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID as integers. Got: {exc}.") from None
    # Tasks on this node: SLURM_TASKS_PER_NODE is like '2(x3),1'; the step's local count is simpler.
    local_world = int(env.get("SLURM_NTASKS_PER_NODE", "0") or 0) or max(1, world // max(
        1, int(env.get("SLURM_NNODES", "1"))))
    nodes = expand_hostlist(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", ""))
    job_id = env.get("SLURM_ARRAY_JOB_ID", "") and f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    job_id = job_id or env.get("SLURM_JOB_ID", "0")
    return RankInfo(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world,
                    node_rank=node_rank, master_addr=nodes[0] if nodes else "127.0.0.1",
                    master_port=rendezvous_port(env.get("SLURM_JOB_ID", job_id), port_range(env)), job_id=job_id)


def requeue_target(env: Mapping[str, str]) -> str:
    """What `scontrol requeue` must name: JOBID_TASKID for an array task, else the job id."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID", "")


# The job's run (Slurm's restart count): one reader for the prolog, the epilogs and the job's steps.
restart_count = run_of
