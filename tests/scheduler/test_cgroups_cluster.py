"""On a dev cluster with cgroups (`HPCAI_DEVCLUSTER_CGROUP=1`: proctrack/cgroup, task/cgroup with ConstrainCores
and ConstrainDevices, as GPU nodes run): a job may open only its own GPUs' device files; a task bound to its
own GPU (--gpus-per-task) trains on the one it sees; the energy sampler's NVML, which then lists only the
job's GPUs, still finds them by Slurm's index; and a job's energy summary names no missing GPU.

Skipped on a cluster without cgroups, except where HPCAI_EXPECT_CGROUP=1 says it must have them (the
cgroup entry of scripts/test.sh's matrix): there a cluster without them fails."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cluster_kit import slurm_config
from conftest import wait_until

from hpc_aidc.site_profile import load_trusted_site

pytestmark = pytest.mark.cluster

# What a job's task reports: its GPU variables, and for every GPU device file of the node, the errno of
# opening it (0: opened). A placeholder device file without a driver fails with ENXIO when the cgroup
# lets the job open it, with EPERM when the cgroup denies it.
PROBE = r"""
import glob, json, os, sys
from hpc_aidc.monitor.gpus import job_gpus
from hpc_aidc.monitor.nvml import open_nvml
from hpc_aidc.node.devices import select_device, visible_tokens
opened = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "nvidia[0-9]*"))):
    try:
        os.close(os.open(path, os.O_RDWR))
        opened[path] = 0
    except OSError as exc:
        opened[path] = exc.errno
nvml = open_nvml()
tokens, variable = job_gpus(os.environ) or ((), "")
found, missing = nvml.resolve(tokens)
visible = visible_tokens(os.environ) or ()
tasks = os.environ.get("SLURM_NTASKS_PER_NODE") or os.environ.get("SLURM_NTASKS", "1")
local = int(os.environ.get("SLURM_LOCALID", "0")), int(tasks)
print(json.dumps({
    "gpus": ",".join(t.value for t in tokens), "variable": variable,
    "cuda": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "opened": opened, "nvml_count": nvml.count(),
    "found": [d.uuid for d, _ in found], "missing": [t for t, _ in missing],
    "device": select_device(local[0], local[1], len(visible), os.environ) if visible else None,
    "cpus": sorted(os.sched_getaffinity(0)),
}))
"""


@pytest.fixture(scope="module")
def confined(cluster: None) -> Path:
    """The folder of the nodes' GPU device files, on a cluster that confines jobs to their devices."""
    config = slurm_config()
    on = config.get("proctracktype") == "proctrack/cgroup" and "task/cgroup" in config.get("taskplugin", "")
    if not on:
        if os.environ.get("HPCAI_EXPECT_CGROUP") == "1":
            pytest.fail(f"HPCAI_EXPECT_CGROUP=1, but the cluster runs {config.get('proctracktype')} and "
                        f"{config.get('taskplugin')}: it was brought up without cgroups")
        pytest.skip("the dev cluster runs without cgroups (HPCAI_DEVCLUSTER_CGROUP=1 turns them on)")
    cgroup = Path(config.get("slurm_conf", "/etc/slurm/slurm.conf")).with_name("cgroup.conf").read_text()
    assert re.search(r"^ConstrainDevices=yes", cgroup, re.M), cgroup
    gres = Path("/etc/slurm/gres.conf").read_text()
    files = re.search(r"File=(\S+)/nvidia\[", gres)
    assert files, gres
    return Path(files.group(1))


def _probe(devices: Path, *srun_args: str) -> list[dict[str, object]]:
    env = {**os.environ, **load_trusted_site().env}
    proc = subprocess.run(
        ["runuser", "-u", "alice", "--", "env", *(f"{k}={v}" for k, v in env.items() if k.startswith("HPCAI_")),
         "srun", "-A", "physics", "-p", "gpu", "-t", "2", "--mem=200M", *srun_args,
         sys.executable, "-c", PROBE, str(devices)],
        capture_output=True, text=True, check=False, cwd="/tmp", timeout=180)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _indices(text: str) -> set[int]:
    return {int(i) for i in text.split(",") if i.strip().isdigit()}


def _sbatch(*args: str) -> str:
    return subprocess.run(["runuser", "-u", "alice", "--", "sbatch", "--parsable", "-A", "physics", "-p", "gpu",
                           "-t", "2", "-o", "/dev/null", *args], capture_output=True, text=True, check=True,
                          cwd="/tmp").stdout.strip().split(";")[0]


def test_a_job_opens_only_its_own_gpus_and_nvml_finds_them_by_slurms_index(confined: Path) -> None:
    # GPUs 0 and 1 of n1 busy, so the probe gets 2 and 3: NVML, which lists only those two (as 0 and 1),
    # must still give Slurm's 2 and 3 their own GPUs
    blocker = _sbatch("-w", "n1", "--gres=gpu:2", "--wrap", "sleep 60")
    try:
        wait_until("the blocker runs", lambda: subprocess.run(["squeue", "-h", "-j", blocker, "-o", "%T"],
                                                                capture_output=True, text=True).stdout.strip()
                   == "RUNNING", 60)
        (task,) = _probe(confined, "-w", "n1", "--gres=gpu:2")
    finally:
        subprocess.run(["scancel", blocker], check=False)
    mine = _indices(str(task["gpus"]))  # SLURM_STEP_GPUS for srun's own allocation, SLURM_JOB_GPUS in a batch job
    assert mine == {2, 3} and task["variable"] in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS"), task
    opened = {int(Path(p).name.removeprefix("nvidia")): e for p, e in task["opened"].items()}  # type: ignore[attr-defined]
    assert len(opened) == 4, task
    for index, err in opened.items():
        if index in mine:
            assert err in (0, errno.ENXIO, errno.ENODEV), (index, task)  # allowed: no driver behind it here
        else:
            assert err == errno.EPERM, (index, task)  # the devices cgroup says no
    # NVML lists only the job's two GPUs; Slurm's indices still name them (by their device minor numbers;
    # the dev cluster's simulated GPU N has a UUID ending in N)
    assert task["nvml_count"] == 2 and task["missing"] == [], task
    assert {int(str(u)[-12:]) for u in task["found"]} == mine, task  # type: ignore[attr-defined]


def test_a_task_bound_to_its_own_gpu_trains_on_the_one_it_sees(confined: Path) -> None:
    tasks = _probe(confined, "-N", "1", "-n", "2", "--gpus-per-task=1", "--cpus-per-task=1")
    assert len(tasks) == 2, tasks
    own = []
    for task in tasks:
        reachable = {p for p, e in task["opened"].items() if e != errno.EPERM}  # type: ignore[attr-defined]
        assert len(reachable) == 1, task  # one GPU per task, and its own
        own.append(reachable.pop())
        assert task["device"] == 0, task  # the one it sees, whatever its local rank
    assert len(set(own)) == 2, tasks  # two tasks, two GPUs


def test_an_energy_summary_under_cgroups_names_no_missing_gpu(confined: Path) -> None:
    job = _sbatch("-N", "1", "--gres=gpu:2", "--wrap", "sleep 4")

    def comment() -> str:
        return subprocess.run(["sacct", "-X", "-n", "-P", "-j", job, "-o", "AdminComment"], capture_output=True,
                              text=True, check=False).stdout.strip()

    wait_until("the job's energy summary", lambda: "hpcai-energy-v1" in comment(), 180, interval=1.0,
               detail=comment)
    summary = comment()
    assert " gpus=2 " in summary and " missing= " in summary, summary
    assert re.search(r" gpu_j=[0-9.]+ ", summary), summary
