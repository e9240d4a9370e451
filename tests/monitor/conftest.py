"""Fixtures for the energy tests: the fake NVML built with gcc, scenarios, a private energy store and
site profile, and running the sampler CLI as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "fake_nvml"))

from energy_testkit import HPCAI, SITE, RunCli  # noqa: E402
from fake_scenario import Scenario, build_library  # noqa: E402


@pytest.fixture(scope="session")
def fake_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_library(HERE / "fake_nvml" / "fake_nvml.c", tmp_path_factory.mktemp("fake-nvml"))


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    path = tmp_path / "energy"
    path.mkdir()
    path.chmod(0o1733)
    return path


@pytest.fixture()
def site_file(tmp_path: Path, store: Path) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(SITE.format(root=tmp_path, store=store))
    return path




@pytest.fixture()
def fake_env(fake_lib: Path, tmp_path: Path, site_file: Path) -> Callable[[Scenario], dict[str, str]]:
    """Environment for a subprocess that finds the fake through the normal library search path."""

    def make(scenario: Scenario) -> dict[str, str]:
        path = scenario.write(tmp_path / f"scenario-{time.monotonic_ns()}")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "CUDA_VISIBLE"))}
        env.pop("HPCAI_NVML_LIBRARY", None)
        return {**env, "LD_LIBRARY_PATH": str(fake_lib.parent), "HPCAI_FAKE_NVML_SCENARIO": str(path),
                "HPCAI_SITE": str(site_file)}

    return make




@pytest.fixture()
def run_cli() -> RunCli:
    def run(*args: str, env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*HPCAI, *args], env=dict(env), capture_output=True, text=True,
                              timeout=timeout, check=False)

    return run



