import pytest

from hpc_aidc.errors import SiteProfileError
from hpc_aidc.node.slurm_env import (
    expand_hostlist,
    port_range,
    rank_info,
    rendezvous_port,
    requeue_target,
    restart_count,
)
from hpc_aidc.site_profile import DEFAULT_RENDEZVOUS_PORTS, LINUX_EPHEMERAL_PORTS


@pytest.mark.parametrize(("hostlist", "hosts"), [
    ("n1", ["n1"]), ("n[1-3]", ["n1", "n2", "n3"]), ("n[1-2,5]", ["n1", "n2", "n5"]),
    ("gpu-a[08-10]", ["gpu-a08", "gpu-a09", "gpu-a10"]), ("a,b[1-2]", ["a", "b1", "b2"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
])
def test_hostlists(hostlist: str, hosts: list[str]) -> None:
    assert expand_hostlist(hostlist) == hosts


def test_rank_from_slurm() -> None:
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODEID": "2",
           "SLURM_NNODES": "4", "SLURM_JOB_NODELIST": "n[3-6]", "SLURM_JOB_ID": "1234"}
    info = rank_info(env)
    assert (info.rank, info.world_size, info.local_rank, info.node_rank) == (5, 8, 1, 2)
    assert info.local_world_size == 2 and info.master_addr == "n3"
    assert info.master_port == rendezvous_port("1234") == 21234
    assert info.torch_env()["MASTER_ADDR"] == "n3"


def test_two_jobs_get_different_ports() -> None:
    assert rendezvous_port("100") != rendezvous_port("101")


def test_ports_stay_outside_the_ephemeral_range() -> None:
    """The old 20000 + id % 20000 landed in Linux's ephemeral range (32768-60999) for ~36% of job ids."""
    lo, hi = DEFAULT_RENDEZVOUS_PORTS
    assert hi < LINUX_EPHEMERAL_PORTS[0]
    ports = {rendezvous_port(str(job)) for job in range(0, 200_000)}
    assert min(ports) == lo and max(ports) == hi
    # the site's range, exported into the job
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_NODELIST": "n1", "SLURM_JOB_ID": "123457",
           "HPCAI_RENDEZVOUS_PORTS": "61000-61099"}
    assert port_range(env) == (61000, 61099) and rank_info(env).master_port == 61000 + 123457 % 100
    with pytest.raises(SiteProfileError, match=r"Expected \$HPCAI_RENDEZVOUS_PORTS as \"LO-HI\""):
        port_range({"HPCAI_RENDEZVOUS_PORTS": "61000"})


def test_outside_slurm_is_one_local_rank() -> None:
    assert rank_info({}).world_size == 1


def test_array_tasks_requeue_by_task_id() -> None:
    env = {"SLURM_JOB_ID": "12", "SLURM_ARRAY_JOB_ID": "10", "SLURM_ARRAY_TASK_ID": "2", "SLURM_RESTART_COUNT": "3"}
    assert requeue_target(env) == "10_2" and requeue_target({"SLURM_JOB_ID": "12"}) == "12"
    assert restart_count(env) == 3 and restart_count({}) == 0
