"""End to end on the dev cluster (real Slurm, simulated NVML): prolog-started samplers on 2 nodes, one
killed with -9 mid-job, node epilogs finishing from the counters, EpilogSlurmctld storing one combined
summary in slurmdbd; the energy equals the exact integral of the dev cluster's scenario; records are
private; a job without NVML runs and its energy is unavailable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import RunHpcai, assert_clean_error
from fake_scenario import Scenario

from hpc_aidc.monitor import acct
from hpc_aidc.site import load_site

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _sbatch(user: str, *args: str) -> str:
    out = subprocess.run(["runuser", "-u", user, "--", "sbatch", "--parsable", "-o", "/dev/null", *args],
                         capture_output=True, text=True, check=True, cwd="/tmp")
    return out.stdout.strip().split(";")[0]


def _admin_comment(job: str, timeout: float = 90.0) -> str:
    """Poll sacct until the job ended and EpilogSlurmctld stored its summary."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["sacct", "-j", job, "-X", "-n", "-P", "-o", "state,admincomment"],
                             capture_output=True, text=True, check=False).stdout.strip()
        state, _, comment = out.partition("|")
        if acct.contains_summary(comment):
            assert state == "COMPLETED", out
            return comment
        time.sleep(0.5)
    raise AssertionError(f"job {job}: no energy summary in sacct after {timeout} s ({out!r})")


def _wait_lock_pid(path: Path, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = path.read_text().strip()
            if text:
                return int(text)
        except FileNotFoundError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no sampler took {path}")


@pytest.fixture(scope="module")
def site_store(cluster: None) -> tuple[Path, Scenario]:
    site = load_site()
    scenario_path = Path(site.env["HPCAI_FAKE_NVML_SCENARIO"])
    return site.energy_store, Scenario.parse(scenario_path.read_text())


def test_two_node_job_energy_in_sacct_equals_the_exact_integral(
        site_store: tuple[Path, Scenario], hpcai: RunHpcai) -> None:
    store, scenario = site_store
    job = _sbatch("alice", "-N2", "-A", "physics", "--gres=gpu:h100:2", "--wrap", "sleep 6")
    # Kill one node's sampler with -9 mid-job (once it has written rows): its summary must still come
    # from the counters.
    pid = _wait_lock_pid(store / job / "n2.lock")
    series = store / job / "n2.series.bin"
    deadline = time.monotonic() + 30
    while not (series.exists() and series.stat().st_size >= 2 * (8 + 2 * 28)):
        assert time.monotonic() < deadline, "the n2 sampler wrote no rows"
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    totals = acct.decode(_admin_comment(job))
    assert totals.nodes == ("n1", "n2") and totals.gpus == 4 and totals.missing == ()
    assert totals.source == "counter" and totals.simulated and totals.cpu_j is None

    exact = 0.0
    ends = {}
    for node in ("n1", "n2"):
        summary = json.loads((store / job / f"{node}.summary.json").read_text())
        meta = json.loads((store / job / f"{node}.meta.json").read_text())
        ends[node] = summary["end_source"]
        assert (store / job / f"{node}.series.bin").stat().st_size > 0
        for gpu in meta["gpus"]:
            exact += scenario.energy_j(gpu["index"], summary["t_start"], summary["t_end"])
    assert ends == {"n1": "sampler", "n2": "epilog"}
    # Tolerance: AdminComment keeps 10 significant digits; counters are whole mJ, read within ~1 ms.
    assert totals.gpu_j == pytest.approx(exact, rel=1e-4)

    # Access: alice (owner) sees it all; bob (another project) can read neither files nor `show`.
    shown = hpcai("energy", "show", job, user="alice")
    assert shown.returncode == 0, shown.stderr
    assert "SIMULATED" in shown.stdout and "Power over time" in shown.stdout
    as_json = json.loads(hpcai("energy", "show", job, "--json", user="alice").stdout)
    assert as_json["totals"]["gpu_j"] == pytest.approx(totals.gpu_j)
    assert len(as_json["nodes"]) == 2 and len(as_json["nodes"][0]["gpus"]) == 2
    denied = subprocess.run(["runuser", "-u", "bob", "--", "cat", str(store / job / "n1.summary.json")],
                            capture_output=True, text=True, check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert_clean_error(hpcai("energy", "show", job, user="bob"), "readable by the job's user")


def test_job_without_nvml_runs_and_its_energy_is_unavailable(
        site_store: tuple[Path, Scenario], hpcai: RunHpcai) -> None:
    job = _sbatch("alice", "-N1", "-A", "physics", "--gres=gpu:h100:1", "--hold", "--wrap", "sleep 1")
    # The fake NVML reads a per-job scenario where one exists: this job's node has no driver.
    scenario = Path(load_site().env["HPCAI_FAKE_NVML_SCENARIO"])
    override = Path(f"{scenario}.job{job}")
    override.write_text("driver none\ninit_error 9\n")
    try:
        subprocess.run(["scontrol", "release", job], check=True)
        totals = acct.decode(_admin_comment(job))
    finally:
        override.unlink()
    assert totals.gpu_j is None and totals.source == "unavailable"
    shown = hpcai("energy", "show", job, user="alice")
    assert shown.returncode == 0 and "GPU energy   unavailable" in shown.stdout


def test_show_unknown_job_is_one_clean_line(cluster: None, hpcai: RunHpcai) -> None:
    assert_clean_error(hpcai("energy", "show", "99999999"), "Expected job 99999999")
