"""Helpers shared by the energy tests (imported by name: tests/monitor/fake_nvml is on sys.path)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from fake_scenario import FakeDevice, Scenario

HPCAI = [sys.executable, "-m", "hpc_aidc.cli.main"]
# A site profile for a private energy store (format with root= and store=).
SITE = """
[cluster]
job_root = "{root}/jobs"
energy_store = "{store}"
scratch = "/tmp"
admins = ["root"]
[partitions.gpu]
nodes = 1
gpus_per_node = 4
cpus_per_node = 4
"""
RunCli = Callable[..., subprocess.CompletedProcess[str]]


def has_real_gpu() -> bool:
    """A real NVIDIA driver answers here (the device tool's GPU machines)."""
    return Path("/dev/nvidiactl").exists()


def ramp_scenario(start: float, counter: bool = True, n: int = 2) -> Scenario:
    """Power that ramps and falls within seconds (continuous over the period), so short runs see
    several kinks."""
    devices = [FakeDevice(power=((0.0, 100.0 + 50 * i), (0.7, 600.0), (1.3, 250.0), (2.0, 100.0 + 50 * i)),
                          util=((0.0, 0.0), (0.5, 0.0), (0.6, 90.0)), energy_counter=counter,
                          uuid=f"GPU-11111111-2222-3333-4444-{i:012d}")
               for i in range(n)]
    return Scenario(devices, start=start, period=2.0)


def start_sampler(env: Mapping[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*HPCAI, "energy", "sample", *args], env=dict(env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)
