import pytest
from site_fixture import make_site

from hpc_aidc.errors import SiteProfileError, SpecError
from hpc_aidc.spec.resources import parse_resources
from hpc_aidc.spec.run import parse_run_job


def test_defaults_one_task_per_gpu() -> None:
    r = parse_resources(make_site(), nodes=2, gpus_per_node=4, account="physics")
    assert (r.nodes, r.ntasks_per_node, r.gpus_per_node, r.world_size) == (2, 4, 4, 8)
    assert (r.partition, r.qos, r.time_min, r.account) == ("gpu", "normal", 30, "physics")


def test_cpu_only_defaults() -> None:
    r = parse_resources(make_site(), partition="cpu", time="10")
    assert (r.nodes, r.ntasks_per_node, r.gpus_per_node, r.gpu_type, r.time_min) == (1, 1, 0, None, 10)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"nodes": 0}, "--nodes >= 1"),
    ({"nodes": -3}, "--nodes >= 1"),
    ({"nodes": 5}, "at most 4 nodes"),
    ({"gpus_per_node": 8}, "at most 4 GPUs per node"),
    ({"gpus_per_node": -1}, "--gpus-per-node >= 0"),
    ({"gpus_per_node": 2, "gpu_type": "a100"}, "--gpu-type h100"),
    ({"gpu_type": "h100"}, "--gpus-per-node with --gpu-type"),
    ({"partition": "cpu", "gpus_per_node": 1}, "Expected no GPUs on CPU-only partition cpu"),
    ({"ntasks_per_node": 4, "cpus_per_task": 4}, "<= 8 (CPUs per node"),
    ({"cpus_per_task": 0}, "--cpus-per-task >= 1"),
    ({"time": "2-00:00:00"}, "limit of 1440 min"),
    ({"time": "soon"}, "time limit as"),
    ({"job_name": "a\nb"}, "without newlines"),
    ({"job_name": ""}, "--job-name"),
])
def test_bad_requests_are_refused_with_a_fix(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_resources(make_site(), **kwargs)  # type: ignore[arg-type]
    assert needle in str(err.value)


def test_unknown_partition() -> None:
    with pytest.raises(SiteProfileError, match="Got 'nope'"):
        parse_resources(make_site(), partition="nope")


def test_run_job_needs_a_command() -> None:
    r = parse_resources(make_site())
    with pytest.raises(SpecError, match="command after `--`"):
        parse_run_job(r, ())
    assert parse_run_job(r, ["echo", "$(x)"]).command == ("echo", "$(x)")
