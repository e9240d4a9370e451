"""The prolog's GPU check: verdicts on simulated GPUs (the fake NVML), the command's exit statuses, and on
the dev cluster a node whose GPU has ECC errors drains with a reason naming GPU and fault while the job
runs on another node; a check that cannot run (no NVML) lets the job run and drains nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import FAKE_NVML, REPO, RunHpcai, assert_clean_error, wait_until

sys.path.insert(0, str(FAKE_NVML))
from fake_scenario import FakeDevice, Scenario

from hpc_aidc.monitor.gpu_health import GpuFault, check_gpus, drain_reason
from hpc_aidc.monitor.gpus import parse_gpu_list
from hpc_aidc.monitor.nvml import NvmlUnavailable

SITE = """
[cluster]
job_root = "/tmp"
energy_store = "/tmp"
scratch = "/tmp"
[partitions.gpu]
nodes = 1
gpus_per_node = 4
cpus_per_node = 4
"""


def devices(**faults: dict[str, str]) -> list[FakeDevice]:
    """Four healthy GPUs; faults={"2": {"ecc_uncorrected": "3"}} breaks GPU 2."""
    return [FakeDevice(power=((0.0, 100.0),), uuid=f"GPU-0000000{i}-0000-4000-8000-000000000000",
                       extra={"temp": "50", **faults.get(str(i), {})}) for i in range(4)]


@pytest.fixture()
def nvml_env(fake_lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[Scenario], dict[str, str]]:
    def use(scenario: Scenario) -> dict[str, str]:
        path = scenario.write(tmp_path / f"scenario-{time.monotonic_ns()}")
        env = {"HPCAI_NVML_LIBRARY": str(fake_lib), "HPCAI_FAKE_NVML_SCENARIO": str(path)}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return env

    return use


def test_healthy_gpus(nvml_env: Callable[[Scenario], dict[str, str]]) -> None:
    env = nvml_env(Scenario(devices()))
    assert check_gpus(parse_gpu_list("0,1,2,3"), env) == []


@pytest.mark.parametrize(("fault", "needle"), [
    ({"ecc_uncorrected": "3"}, "3 uncorrectable ECC errors"),
    ({"retired_pages": "2"}, "2 retired pages"),
    ({"remap_pending": "1"}, "row remapping pending"),
    ({"throttle": "0x40"}, "hw thermal slowdown"),
    ({"throttle": "0x88"}, "hw power brake"),
])
def test_a_bad_gpu_is_named_with_its_fault(nvml_env: Callable[[Scenario], dict[str, str]], fault: dict[str, str],
                                           needle: str) -> None:
    env = nvml_env(Scenario(devices(**{"2": fault})))
    (found,) = check_gpus(parse_gpu_list("1,2"), env, sustain_s=1.0)
    assert found.gpu == "GPU 2 (GPU-00000002-0000-4000-8000-000000000000)" and needle in found.fault
    assert check_gpus(parse_gpu_list("0,1"), env, sustain_s=1.0) == []  # the job's GPUs only


@pytest.mark.parametrize("bits", ["0x40", "0x8", "0x80"])
def test_a_passing_hardware_slowdown_is_a_note_never_a_fault(nvml_env: Callable[[Scenario], dict[str, str]],
                                                            bits: str) -> None:
    # The heat a previous job left: the slowdown shows at the first sample and clears within a second.
    env = nvml_env(Scenario(devices(**{"1": {"throttle": bits, "throttle_for": "0.4"}})))
    notes: list[str] = []
    started = time.monotonic()
    assert check_gpus(parse_gpu_list("0,1"), env, sustain_s=3.0, notes=notes) == []
    assert time.monotonic() - started < 2.5  # no need to watch it to the end once it cleared
    (note,) = notes
    assert note.startswith("GPU 1 (GPU-00000001-") and "cleared within 3 s (passing: not drained)" in note


def test_a_sustained_slowdown_is_a_fault(nvml_env: Callable[[Scenario], dict[str, str]]) -> None:
    env = nvml_env(Scenario(devices(**{"3": {"throttle": "0x40", "throttle_for": "30"}})))
    (found,) = check_gpus(parse_gpu_list("3"), env, sustain_s=1.0)
    assert found.fault == "hw thermal slowdown sustained over 1 s"


def test_xids_the_driver_reports_drain_only_for_a_broken_gpu(nvml_env: Callable[[Scenario], dict[str, str]]) -> None:
    env = nvml_env(Scenario(devices(**{"0": {"xid": "79"}, "1": {"xid": "13"}, "2": {"xid": "48",
                                                                                     "ecc_uncorrected": "2"}})))
    notes: list[str] = []
    faults = {f.gpu.split(" (")[0]: f.fault for f in check_gpus(parse_gpu_list("0,1,2,3"), env, notes=notes)}
    assert faults == {"GPU 0": "Xid 79 (GPU has fallen off the bus)",
                      "GPU 2": "2 uncorrectable ECC errors; Xid 48 (double-bit ECC error)"}
    assert notes == ["GPU 1 (GPU-00000001-0000-4000-8000-000000000000): Xid 13 (an application's fault: not drained)"]
    assert check_gpus(parse_gpu_list("3"), env) == []  # another GPU's Xid is not this job's


def test_sustained_is_every_sample() -> None:
    from hpc_aidc.monitor.gpu_health import sustained

    assert sustained([0x40, 0x40, 0x44]) == 0x40 and sustained([0x40, 0x0, 0x40]) == 0
    assert sustained([0x48, 0x40]) == 0x40 and sustained([0x4]) == 0 and sustained([]) == 0


def test_the_catalogue_says_what_drains(hpcai: RunHpcai, site_file: Path) -> None:
    proc = hpcai("--site", str(site_file), "admin", "gpu-health", "--catalogue")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1] for line in proc.stdout.splitlines()[2:]}
    assert rows["hardware slowdown (hw slowdown, hw thermal slowdown, hw power brake)"] == "drain"
    assert rows["uncorrectable ECC errors"] == rows["missing GPU"] == "drain"
    assert rows["other Xids (13, 31, 43, 45: an application's faults)"] == "no"
    assert "sustained: in every sample for 5 s" in proc.stdout


def test_warnings_never_fail_a_job(nvml_env: Callable[[Scenario], dict[str, str]]) -> None:
    # software thermal slowdown and heat are worth a look (hpcai doctor), not a drain
    env = nvml_env(Scenario(devices(**{"0": {"throttle": "0x24", "temp": "90"}})))
    assert check_gpus(parse_gpu_list("0"), env) == []


def test_a_missing_gpu(nvml_env: Callable[[Scenario], dict[str, str]]) -> None:
    env = nvml_env(Scenario(devices()[:3]))
    (found,) = check_gpus(parse_gpu_list("2,3"), env)
    assert found.gpu == "GPU 3" and "missing" in found.fault


def test_no_nvml_is_a_failure_of_the_check(nvml_env: Callable[[Scenario], dict[str, str]]) -> None:
    env = nvml_env(Scenario(devices(), init_error=9))
    with pytest.raises(NvmlUnavailable):
        check_gpus(parse_gpu_list("0"), env)


def test_drain_reason_is_one_bounded_line() -> None:
    faults = [GpuFault(f"GPU {i} (GPU-{i})", "3 uncorrectable ECC errors;\nrow remapping pending") for i in range(20)]
    reason = drain_reason(faults)
    assert reason.startswith("hpcai gpu-health: GPU 0 (GPU-0): 3 uncorrectable") and "\n" not in reason
    assert len(reason) <= 240


@pytest.fixture()
def site_file(tmp_path: Path) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(SITE)
    return path


def test_command_exit_statuses(hpcai: RunHpcai, nvml_env: Callable[[Scenario], dict[str, str]],
                               site_file: Path) -> None:
    ok = hpcai("--site", str(site_file), "admin", "gpu-health", "--gpus", "0,1", env=nvml_env(Scenario(devices())))
    assert ok.returncode == 0 and "healthy" in ok.stdout, ok.stderr
    bad_env = nvml_env(Scenario(devices(**{"1": {"ecc_uncorrected": "5"}})))
    bad = hpcai("--site", str(site_file), "admin", "gpu-health", "--prolog", "--gpus", "0,1", env=bad_env)
    assert bad.returncode == 3, bad.stderr
    assert bad.stdout == "UNHEALTHY: hpcai gpu-health: GPU 1 (GPU-00000001-0000-4000-8000-000000000000): " \
                         "5 uncorrectable ECC errors\n"
    none = hpcai("--site", str(site_file), "admin", "gpu-health", "--prolog", "--gpus", "", env=bad_env)
    assert none.returncode == 0 and none.stdout == ""  # a job without GPUs: nothing to check
    down = hpcai("--site", str(site_file), "admin", "gpu-health", "--gpus", "0",
                 env=nvml_env(Scenario(devices(), init_error=9)))
    assert_clean_error(down, "Expected NVML to initialise")


# -- on the dev cluster ------------------------------------------------------------------------------------

FAKE = Path("/var/lib/hpcai-devcluster/fake-nvml")
ENERGY_STORE = Path("/var/lib/hpcai-devcluster/energy")
LOG = Path("/var/log/hpcai/energy.log")  # the dev cluster's HPCAI_ENERGY_LOG


def _sh(*argv: str) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True).stdout.strip()


def _node_state(node: str) -> tuple[str, str]:
    line = _sh("sinfo", "-h", "-N", "-n", node, "-o", "%T|%E")
    state, _, reason = line.partition("|")
    return state, reason


class HeldJobs:
    """alice's jobs, submitted held; their scenario files and any node they drained are cleaned up."""

    def __init__(self) -> None:
        self.jobs: list[str] = []
        self.drained: list[str] = []

    def submit(self) -> str:
        job = _sh("runuser", "-u", "alice", "--", "sbatch", "--parsable", "-H", "-A", "physics", "-t", "2",
                  "-p", "debug", "--gres=gpu:h100:1", "-o", "/dev/null", "--wrap", "sleep 1")
        self.jobs.append(job)
        return job

    def cleanup(self) -> None:
        for job in self.jobs:
            subprocess.run(["scancel", job], check=False)
            for path in FAKE.glob(f"scenario.job{job}*"):
                path.unlink()
        for node in self.drained:
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], check=False)


@pytest.fixture()
def held() -> Iterator[HeldJobs]:
    jobs = HeldJobs()
    yield jobs
    jobs.cleanup()


def _scenario(faults: dict[str, dict[str, str]]) -> str:
    """The dev cluster's shared scenario with faults added to some of its GPUs."""
    out, index = [], -1
    for line in (FAKE / "scenario").read_text().splitlines():
        out.append(line)
        if line.strip() == "device":
            index += 1
            out += [f"{k} {v}" for k, v in faults.get(str(index), {}).items()]
    return "\n".join(out) + "\n"


@pytest.mark.cluster
@pytest.mark.usefixtures("cluster")
def test_ecc_fault_drains_the_node_and_the_job_runs_elsewhere(held: HeldJobs) -> None:
    job = held.submit()
    ecc = {str(i): {"ecc_uncorrected": "3"} for i in range(4)}  # whichever GPU it gets is bad
    (FAKE / f"scenario.job{job}").write_text(_scenario(ecc))
    (FAKE / f"scenario.job{job}").chmod(0o644)
    _sh("scontrol", "release", job)
    first: list[str] = []

    def drained() -> bool:
        out = _sh("sinfo", "-h", "-R", "-N", "-o", "%N|%E")
        hit = [line.split("|", 1) for line in out.splitlines() if "GPU-fa4e" in line and "ECC" in line]
        first[:] = [hit[0][0]] if hit else []
        return bool(hit)

    wait_until("a node drained with the GPU named", drained, 60, interval=0.3)
    node = first[0]
    held.drained.append(node)
    state, reason = _node_state(node)
    assert state in {"drained", "draining", "drain"}, state
    assert reason.startswith("hpcai gpu-health: GPU ") and "3 uncorrectable ECC errors" in reason
    # the fault stays with that node for this job; everywhere else the GPUs are fine
    (FAKE / f"scenario.job{job}").rename(FAKE / f"scenario.job{job}.node.{node}")
    # Slurm requeued it (not held: nohold_on_prolog_fail) with a begin time two minutes out; as an admin
    # would, start it now: the drained node is excluded by Slurm itself
    wait_until("requeued",
               lambda: _sh("squeue", "-h", "-j", job, "-o", "%T %r") == "PENDING BeginTime", 60, interval=0.3)
    _sh("scontrol", "update", f"jobid={job}", "StartTime=now")
    wait_until("the job completed",
               lambda: _sh("sacct", "-j", job, "-X", "-n", "-P", "-o", "State") == "COMPLETED", 90, interval=0.3)
    ran_on = _sh("sacct", "-j", job, "-X", "-n", "-P", "-o", "NodeList")
    assert ran_on != node
    # the failed run started no energy sampler on the bad node
    assert not (ENERGY_STORE / job / "r0" / f"{node}.meta.json").exists()
    assert f"job={job}: gpu-health on {node}: hpcai gpu-health: GPU" in LOG.read_text()


@pytest.mark.cluster
@pytest.mark.usefixtures("cluster")
def test_a_passing_thermal_slowdown_never_drains(held: HeldJobs) -> None:
    # The previous job left the GPUs hot: each is slowed down when the prolog first looks, not a second later.
    job = held.submit()
    passing = {str(i): {"throttle": "0x40", "throttle_for": "1"} for i in range(4)}
    # the shared scenario's own throttle lines (GPU 3: software thermal) would override ours
    text = "\n".join(line for line in _scenario(passing).splitlines()
                     if not line.startswith("throttle ") or line.startswith("throttle 0x40")) + "\n"
    (FAKE / f"scenario.job{job}").write_text(text)
    (FAKE / f"scenario.job{job}").chmod(0o644)
    before = _sh("sinfo", "-h", "-R", "-o", "%N %E")
    try:
        _sh("scontrol", "release", job)
        wait_until("the job completed",
                   lambda: _sh("sacct", "-j", job, "-X", "-n", "-P", "-o", "State") == "COMPLETED", 90, interval=0.3)
    finally:  # were a node drained for it, it is not left so
        drained = _sh("sinfo", "-h", "-R", "-N", "-o", "%N|%E").splitlines()
        held.drained += [n for n, _, why in (d.partition("|") for d in drained)
                         if why.startswith("hpcai gpu-health") and "slowdown" in why and n not in before]
    assert _sh("sinfo", "-h", "-R", "-o", "%N %E") == before
    line = next(line for line in LOG.read_text().splitlines() if f"job={job}: gpu-health on " in line)
    assert "hw thermal slowdown cleared within 5 s (passing: not drained)" in line and line.endswith("job allowed")


@pytest.mark.cluster
@pytest.mark.usefixtures("cluster")
def test_a_check_that_cannot_run_never_drains(held: HeldJobs) -> None:
    job = held.submit()
    (FAKE / f"scenario.job{job}").write_text("driver 1-fake\ninit_error 9\n")
    (FAKE / f"scenario.job{job}").chmod(0o644)
    before = _sh("sinfo", "-h", "-R", "-o", "%N %E")
    _sh("scontrol", "release", job)
    wait_until("the job completed",
               lambda: _sh("sacct", "-j", job, "-X", "-n", "-P", "-o", "State") == "COMPLETED", 60, interval=0.3)
    assert _sh("sinfo", "-h", "-R", "-o", "%N %E") == before
    assert f"job={job}: gpu-health could not check" in LOG.read_text()


def test_prolog_scripts_order_and_strict_mode() -> None:
    prolog_d = sorted(p.name for p in (REPO / "slurm/prolog.d").iterdir())
    assert prolog_d == ["10-energy.sh", "20-gpu-health.sh"]
    for name in prolog_d:
        assert os.access(REPO / "slurm/prolog.d" / name, os.X_OK)
    assert os.access(REPO / "slurm/health/gpu_prolog.sh", os.X_OK)
