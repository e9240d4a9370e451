"""`hpcai doctor` verdicts on the fake NVML and the energy commands' error paths (one line, exit 2)."""

from __future__ import annotations

import json
from collections.abc import Callable

from conftest import assert_clean_error
from energy_testkit import RunCli, ramp_scenario
from fake_scenario import FakeDevice, Scenario

from hpc_aidc.monitor.health import verdict

MakeEnv = Callable[[Scenario], dict[str, str]]


def test_verdicts() -> None:
    assert verdict({"ecc_uncorrected": 0, "throttle": 0, "temp_c": 40}).status == "ok"
    assert verdict({"throttle": 0x20, "temp_c": 90}).reasons == ("throttled: sw thermal slowdown",
                                                                 "hot: 90 C")
    assert verdict({"retired_pages": 2, "remap_pending": True}).status == "fail"


def test_doctor_on_the_fake(fake_env: MakeEnv, run_cli: RunCli) -> None:
    sick = FakeDevice(power=((0.0, 300.0),), extra={"ecc_uncorrected": "4", "throttle": "0x40",
                                                    "temp": "92"})
    env = fake_env(Scenario([FakeDevice(power=((0.0, 100.0),), extra={"temp": "40"}), sick]))
    out = run_cli("doctor", env=env)
    assert out.returncode == 1, out.stderr
    assert "SIMULATED" in out.stdout and "GPU 0" in out.stdout and " OK" in out.stdout
    assert "FAIL  (4 uncorrectable ECC errors; throttled: hw thermal slowdown; hot: 92 C)" in out.stdout
    report = json.loads(run_cli("doctor", "--json", env=env).stdout)
    assert [g["status"] for g in report["gpus"]] == ["ok", "fail"] and report["simulated"]
    healthy = run_cli("doctor", env=fake_env(ramp_scenario(start=0.0)))
    assert healthy.returncode == 0, healthy.stdout


def test_error_paths_are_one_line(fake_env: MakeEnv, run_cli: RunCli) -> None:
    env = fake_env(ramp_scenario(start=0.0))
    assert_clean_error(run_cli("energy", "show", "abc", env=env), "Expected a Slurm job id like 123")
    assert_clean_error(run_cli("energy", "sample", env=env), "Expected a job id")
    assert_clean_error(run_cli("energy", "sample", "--job-id", "9", "--interval", "0", env=env),
                       "Expected a sampling interval")
    assert_clean_error(run_cli("energy", "sample", "--job-id", "9", "--gpus", "gpu0", env=env),
                       "Expected a GPU")
    assert_clean_error(run_cli("energy", "work", env={**env, "SLURM_JOB_ID": "9"}),
                       "Expected --tokens or --samples")
    assert_clean_error(run_cli("energy", "finish", "--job-id", "../x", env=env), "Expected a Slurm job id")
    assert_clean_error(run_cli("doctor", env={**env, "HPCAI_FAKE_NVML_SCENARIO": "/nonexistent"}),
                       "Expected NVML to initialise")
