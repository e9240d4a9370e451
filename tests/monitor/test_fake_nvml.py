"""The fake NVML through the real nvidia-ml-py: device lookup by index, UUID, PCI id and MIG, counters
equal to the scenario's exact integral, missing counters, and no NVML at all."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from energy_testkit import has_real_gpu
from fake_scenario import FakeDevice, Scenario

from hpc_aidc.errors import EnergyError
from hpc_aidc.monitor.gpus import GpuToken, parse_gpu_list
from hpc_aidc.monitor.nvml import NvmlUnavailable, open_nvml

SCENARIO = Scenario(
    [FakeDevice(power=((0.0, 100.0), (10.0, 400.0), (20.0, 100.0)), uuid="GPU-aaaa-0",
                pci="00000000:18:00.0", extra={"mig": "2", "ecc_uncorrected": "3", "retired_pages": "2"}),
     FakeDevice(power=((0.0, 250.0),), energy_counter=False, uuid="GPU-aaaa-1", pci="00000000:3A:00.0")],
    start=1000.0, period=20.0)


@pytest.fixture()
def nvml_env(fake_lib: Path, tmp_path: Path) -> dict[str, str]:
    # In this process the fake is preloaded by path ($HPCAI_NVML_LIBRARY); pynvml's dlopen of
    # "libnvidia-ml.so.1" then resolves to it by soname.
    return {"HPCAI_NVML_LIBRARY": str(fake_lib),
            "HPCAI_FAKE_NVML_SCENARIO": str(SCENARIO.write(tmp_path / "scenario"))}


@pytest.fixture()
def with_env(nvml_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    if has_real_gpu():
        pytest.skip("this process would load the real NVML; the fake is tested where there is no GPU")
    for k, v in nvml_env.items():
        monkeypatch.setenv(k, v)
    return nvml_env


def test_devices_by_index_uuid_pci_and_mig(with_env: dict[str, str]) -> None:
    nvml = open_nvml()
    try:
        assert nvml.simulated and nvml.driver.endswith("-fake") and nvml.count() == 2
        # Slurm numbers a MIG node's slots: GPU 0's two MIG devices are 0 and 1, GPU 1 (no MIG) is 2.
        by = nvml.devices(parse_gpu_list("2,GPU-aaaa-0,00000000:3A:00.0"))
        assert [d.uuid for d, _ in by] == ["GPU-aaaa-1", "GPU-aaaa-0"]  # same GPU twice: counted once
        assert by[0][0].requested == ("2", "00000000:3A:00.0") and not by[0][0].has_counter
        slot, = nvml.devices(parse_gpu_list("1"))
        assert slot[0].uuid == "GPU-aaaa-0" and slot[0].approximate  # a MIG slice: its parent, approximate
        mig = nvml.devices([GpuToken("mig", "MIG-aaaa-0-1"), GpuToken("mig", "MIG-aaaa-0-0")])
        assert len(mig) == 1 and mig[0][0].uuid == "GPU-aaaa-0" and mig[0][0].approximate
        assert nvml.devices(None)[0][0].index == 0
        health = nvml.health(by[1][1])
        assert health["ecc_uncorrected"] == 3 and health["retired_pages"] == 2
    finally:
        nvml.close()


def test_counter_is_the_exact_integral(with_env: dict[str, str]) -> None:
    nvml = open_nvml()
    try:
        (_, h), = nvml.devices([GpuToken("index", "0")])
        t0 = time.time()
        a = nvml.counter_mj(h)
        time.sleep(0.3)
        b = nvml.counter_mj(h)
        t1 = time.time()
        assert a is not None and b is not None
        expected = SCENARIO.energy_j(0, t0, t1)
        # the reads sit inside [t0, t1]; at most 400 W x the few microseconds around each read differ
        assert (b - a) / 1000 == pytest.approx(expected, abs=400 * 2e-3 + 0.002)
        sample = nvml.sample(h)
        assert sample.power_w == pytest.approx(SCENARIO.power_w(0, time.time()), abs=1.0)
        assert nvml.counter_mj(nvml.devices([GpuToken("index", "2")])[0][1]) is None
    finally:
        nvml.close()


ORDERED = Scenario(
    # NVML numbers GPUs by PCI bus id; the driver gave them minor numbers (/dev/nvidiaN) in another order.
    [FakeDevice(power=((0.0, 100.0 + 100 * i),), uuid=f"GPU-bbbb-{i}", pci=f"00000000:{0x18 + i:02X}:00.0",
                extra={"minor": str(minor)}) for i, minor in enumerate((2, 0, 1))],
    start=1000.0)


def test_slurm_indices_follow_device_minor_numbers(with_env: dict[str, str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Slurm's GPU index i is /dev/nvidia<i>'s GPU, not NVML's i-th: a sampler told SLURM_JOB_GPUS=0 must
    measure the GPU with minor number 0 (NVML index 1 here), and unknown indices are reported, not fatal."""
    monkeypatch.setenv("HPCAI_FAKE_NVML_SCENARIO", str(ORDERED.write(tmp_path / "ordered")))
    nvml = open_nvml()
    try:
        by = nvml.devices(parse_gpu_list("0,1,2"))
        assert [d.uuid for d, _ in by] == ["GPU-bbbb-1", "GPU-bbbb-2", "GPU-bbbb-0"]
        assert [d.index for d, _ in by] == [1, 2, 0] and not any(d.approximate for d, _ in by)
        found, unresolved = nvml.resolve(parse_gpu_list("0,7,GPU-nope"))
        assert [d.uuid for d, _ in found] == ["GPU-bbbb-1"]
        assert [token for token, _ in unresolved] == ["7", "GPU-nope"]
        with pytest.raises(EnergyError, match=r"Expected GPU index 7 among this node's GPUs \[0, 1, 2\]"):
            nvml.devices(parse_gpu_list("7"))
    finally:
        nvml.close()


def test_a_job_confined_to_its_gpus_still_finds_them_by_slurms_index(fake_lib: Path) -> None:
    """Under Slurm's ConstrainDevices a job may open only its own /dev/nvidiaN, and NVML then lists only those
    GPUs, from index 0: the sampler of a job given GPUs 1 and 2 (SLURM_JOB_GPUS=1,2) must still measure the
    GPUs with minor numbers 1 and 2, and GPU 0 is no GPU of this job's. Checked as an ordinary user (nobody
    when run as root), for whom a device file without read-write permission cannot be opened."""
    if has_real_gpu():
        pytest.skip("this process would load the real NVML; the fake is tested where there is no GPU")
    root = Path(tempfile.mkdtemp(prefix="hpcai-confined-"))
    try:
        root.chmod(0o755)
        devices = root / "dev"
        devices.mkdir(mode=0o755)
        for minor in range(4):  # the job's own two may be opened; the others are denied
            (devices / f"nvidia{minor}").touch()
            (devices / f"nvidia{minor}").chmod(0o666 if minor in (1, 2) else 0o600)
        lib = root / "libnvidia-ml.so.1"
        shutil.copy(fake_lib, lib)
        fourth = FakeDevice(power=((0.0, 400.0),), uuid="GPU-bbbb-3", extra={"minor": "3"})
        scenario = Scenario([*ORDERED.devices, fourth], start=1000.0, devices_dir=str(devices)).write(root / "scenario")
        scenario.chmod(0o644)
        code = ("import json; from hpc_aidc.monitor.gpus import parse_gpu_list; "
                "from hpc_aidc.monitor.nvml import open_nvml\n"
                "n = open_nvml(); found, missing = n.resolve(parse_gpu_list('1,2,0'))\n"
                "print(json.dumps([n.count(), [d.uuid for d, _ in found], [t for t, _ in missing]]))")
        argv = [sys.executable, "-c", code]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "nobody", "--", *argv]
        env = {**os.environ, "HPCAI_NVML_LIBRARY": str(lib), "HPCAI_FAKE_NVML_SCENARIO": str(scenario),
               "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/", env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == [2, ["GPU-bbbb-2", "GPU-bbbb-0"], ["0"]]  # minors 1 and 2; 0 is not here
    finally:
        shutil.rmtree(root)


def test_no_driver_and_missing_library_are_unavailable(with_env: dict[str, str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    broken = Scenario(SCENARIO.devices, init_error=9).write(tmp_path / "nodriver")
    monkeypatch.setenv("HPCAI_FAKE_NVML_SCENARIO", str(broken))
    with pytest.raises(NvmlUnavailable, match="Driver Not Loaded"):
        open_nvml()
    with pytest.raises(NvmlUnavailable, match="Expected an NVML library"):
        open_nvml({"HPCAI_NVML_LIBRARY": str(tmp_path / "libnvidia-ml.so.1")})


def test_loaded_by_the_normal_library_search(fake_lib: Path, tmp_path: Path) -> None:
    """A fresh process finds the fake through LD_LIBRARY_PATH alone, as jobs do."""
    env = {k: v for k, v in os.environ.items() if k != "HPCAI_NVML_LIBRARY"}
    env.update(LD_LIBRARY_PATH=str(fake_lib.parent),
               HPCAI_FAKE_NVML_SCENARIO=str(SCENARIO.write(tmp_path / "s")))
    code = "import pynvml as n; n.nvmlInit(); print(n.nvmlSystemGetDriverVersion(), n.nvmlDeviceGetCount())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["550.54.15-fake", "2"]


@pytest.mark.gpu
@pytest.mark.skipif(not has_real_gpu(), reason="needs a real NVIDIA GPU and driver")
def test_real_nvml_has_devices_and_counters() -> None:
    code = ("from hpc_aidc.monitor.nvml import open_nvml\n"
            "n = open_nvml({}); ds = n.devices(None)\n"
            "print(n.simulated, len(ds), [n.counter_mj(h) is not None for _, h in ds], "
            "[n.sample(h).power_w > 0 for _, h in ds])")
    # LD_LIBRARY_PATH stays: in containers the driver's libnvidia-ml.so.1 may be found only through it
    # (/usr/local/nvidia/lib64); the first field printed says the library that answered is no fake.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCAI_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False ") and "True" in out.stdout, out.stdout


ScenarioEnv = Callable[[Scenario], dict[str, str]]
