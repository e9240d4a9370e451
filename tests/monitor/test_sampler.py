"""The node sampler as a real process on the fake NVML: one per job and node, records flushed every
interval, energy equal to the exact integral, kill -9 recovered from the counters, no NVML handled,
records private to the job's user and project."""

from __future__ import annotations

import grp
import json
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from energy_testkit import SITE, RunCli, ramp_scenario, start_sampler, wait_for
from fake_scenario import Scenario

from hpc_aidc.monitor import acct

MakeEnv = Callable[[Scenario], dict[str, str]]


def _expected(scenario: Scenario, gpus: int, t0: float, t1: float) -> float:
    return sum(scenario.energy_j(i, t0, t1) for i in range(gpus))


def _summary(store: Path, job: str, node: str) -> dict[str, object]:
    data = json.loads((store / job / "r0" / f"{node}.summary.json").read_text())
    assert isinstance(data, dict)
    return data


def test_clean_run_counter_energy_is_exact_and_second_sampler_backs_off(
        fake_env: MakeEnv, store: Path, run_cli: RunCli) -> None:
    scenario = ramp_scenario(start=time.time() - 0.37)
    env = {**fake_env(scenario), "SLURM_JOB_GPUS": "0,1"}
    first = start_sampler(env, "--job-id", "101", "--node", "na", "--interval", "0.1")
    wait_for(store / "101" / "r0" / "na.meta.json")
    second = run_cli("energy", "sample", "--job-id", "101", "--node", "na", env=env, timeout=20)
    assert second.returncode == 0 and "already sampled" in second.stderr
    time.sleep(1.5)
    first.send_signal(signal.SIGTERM)
    assert first.wait(10) == 0, first.stderr.read() if first.stderr else ""
    done = run_cli("energy", "finish", "--job-id", "101", "--node", "na", env=env)
    assert done.returncode == 0, done.stderr
    s = _summary(store, "101", "na")
    assert s["end_source"] == "sampler"
    totals = acct.decode(done.stdout)
    assert totals.source == "counter" and totals.simulated and totals.gpus == 2
    exact = _expected(scenario, 2, float(s["t_start"]), float(s["t_end"]))  # type: ignore[arg-type]
    # Counter reads are timed to within ~0.1 ms; the counter floors to whole mJ.
    assert totals.gpu_j == pytest.approx(exact, rel=1e-4)
    rows = (store / "101" / "r0" / "na.series.bin").stat().st_size // (8 + 2 * 28)
    assert 13 <= rows <= 18  # ~1.6 s at 10 Hz


def test_power_integration_without_counter(fake_env: MakeEnv, store: Path, run_cli: RunCli) -> None:
    scenario = ramp_scenario(start=time.time(), counter=False)
    env = {**fake_env(scenario), "SLURM_JOB_GPUS": "0,1"}
    proc = start_sampler(env, "--job-id", "102", "--node", "na", "--interval", "0.05",
                         "--max-duration", "2.0")
    assert proc.wait(20) == 0
    run_cli("energy", "finish", "--job-id", "102", "--node", "na", env=env)
    s = _summary(store, "102", "na")
    gpus = s["gpus"]
    assert isinstance(gpus, list) and {g["source"] for g in gpus} == {"integrated"}
    from hpc_aidc.monitor.series import decode_rows

    times = decode_rows((store / "102" / "r0" / "na.series.bin").read_bytes(), 2).times
    exact = _expected(scenario, 2, times[0], times[-1])
    total = sum(g["energy_j"] for g in gpus)
    assert total == pytest.approx(exact, rel=5e-3)  # trapezoids at 20 Hz over kinked ramps


def test_kill_9_loses_one_interval_and_the_epilog_reads_the_counters(
        fake_env: MakeEnv, store: Path, run_cli: RunCli) -> None:
    scenario = ramp_scenario(start=time.time() - 1.1)
    env = {**fake_env(scenario), "SLURM_JOB_GPUS": "1"}
    proc = start_sampler(env, "--job-id", "103", "--node", "nb", "--interval", "0.1")
    wait_for(store / "103" / "r0" / "nb.meta.json")
    time.sleep(1.0)
    killed_at = time.time()
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
    time.sleep(0.5)  # the job goes on after the sampler died
    done = run_cli("energy", "finish", "--job-id", "103", "--node", "nb", env=env)
    assert done.returncode == 0, done.stderr
    s = _summary(store, "103", "nb")
    assert s["end_source"] == "epilog" and (store / "103" / "r0" / "nb.end.json").stat().st_size != 0
    from hpc_aidc.monitor.series import decode_rows

    times = decode_rows((store / "103" / "r0" / "nb.series.bin").read_bytes(), 1).times
    assert times[-1] >= killed_at - 0.1 - 0.05  # at most one interval lost
    exact = scenario.energy_j(1, float(s["t_start"]), float(s["t_end"]))  # type: ignore[arg-type]
    assert acct.decode(done.stdout).gpu_j == pytest.approx(exact, rel=1e-4)


def test_warning_signals_do_not_stop_the_sampler(fake_env: MakeEnv, store: Path, run_cli: RunCli) -> None:
    """Slurm's --signal=USR2@<s> without B: reaches every job step, a job-started sampler's included: it
    keeps sampling through USR1/USR2 and still writes its own end record at SIGTERM (the job's end)."""
    scenario = ramp_scenario(start=time.time() - 0.2)
    env = {**fake_env(scenario), "SLURM_JOB_GPUS": "0,1"}
    proc = start_sampler(env, "--job-id", "106", "--node", "ne", "--interval", "0.1")
    wait_for(store / "106" / "r0" / "ne.meta.json")
    series = store / "106" / "r0" / "ne.series.bin"
    wait_for(series)
    for sig in (signal.SIGUSR2, signal.SIGUSR1, signal.SIGUSR2):
        proc.send_signal(sig)
        time.sleep(0.1)
    rows_at_warning = series.stat().st_size
    time.sleep(0.6)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    assert series.stat().st_size > rows_at_warning  # still sampling after the warning
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    end = json.loads((store / "106" / "r0" / "ne.end.json").read_text())
    assert end["source"] == "sampler"


def test_gpus_nvml_does_not_know_are_recorded_not_fatal(fake_env: MakeEnv, store: Path, run_cli: RunCli) -> None:
    """A job GPU no device of the node matches (Slurm's numbering against NVML's): the sampler measures the
    others, records the unmatched one, and the node's figures say approximate."""
    scenario = ramp_scenario(start=time.time())
    env = {**fake_env(scenario), "SLURM_JOB_GPUS": "1,5"}
    proc = start_sampler(env, "--job-id", "107", "--node", "nf", "--interval", "0.1", "--max-duration", "0.5")
    assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else ""
    assert "GPU 5 not measured" in (proc.stderr.read() if proc.stderr else "")
    meta = json.loads((store / "107" / "r0" / "nf.meta.json").read_text())
    assert meta["unresolved"] == ["5"] and [g["uuid"] for g in meta["gpus"]] == [scenario.devices[1].uuid]
    done = run_cli("energy", "finish", "--job-id", "107", "--node", "nf", env=env)
    assert done.returncode == 0, done.stderr
    s = _summary(store, "107", "nf")
    assert s["totals"]["approximate"] and s["totals"]["gpus"] == 1  # type: ignore[index]


def test_no_nvml_the_job_runs_and_energy_is_unavailable(
        fake_env: MakeEnv, store: Path, run_cli: RunCli, tmp_path: Path) -> None:
    env = fake_env(ramp_scenario(start=0.0))
    env.pop("LD_LIBRARY_PATH")
    env["HPCAI_NVML_LIBRARY"] = str(tmp_path / "no" / "libnvidia-ml.so.1")
    proc = start_sampler(env, "--job-id", "104", "--node", "nc", "--interval", "0.1", "--max-duration", "0.3")
    assert proc.wait(20) == 0
    done = run_cli("energy", "finish", "--job-id", "104", "--node", "nc", env=env)
    assert done.returncode == 0, done.stderr
    assert "gpu_j=na" in done.stdout and "src=unavailable" in done.stdout
    meta = json.loads((store / "104" / "r0" / "nc.meta.json").read_text())
    assert meta["nvml"].startswith("Expected an NVML library")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.mark.skipif(os.geteuid() != 0 or not (_user_exists("alice") and _user_exists("bob")),
                    reason="needs root and the dev cluster's users alice and bob")
def test_records_are_private_to_the_user_and_project(fake_env: MakeEnv, run_cli: RunCli) -> None:
    import shutil
    import tempfile

    # pytest's own temp dirs are root-only; the users must reach the store as on a cluster.
    root = Path(tempfile.mkdtemp(prefix="hpcai-energy-access-", dir="/tmp"))
    try:
        _check_access(fake_env, run_cli, root, SITE)
    finally:
        shutil.rmtree(root)


def _check_access(fake_env: MakeEnv, run_cli: RunCli, root: Path, site: str) -> None:
    root.chmod(0o755)
    store = root / "energy"
    store.mkdir()
    store.chmod(0o1733)
    (root / "site.toml").write_text(site.format(root=root, store=store))
    env = {**fake_env(ramp_scenario(start=0.0)), "SLURM_JOB_GPUS": "0", "HPCAI_SITE": str(root / "site.toml")}
    proc = start_sampler(env, "--job-id", "105", "--node", "nd", "--interval", "0.1", "--max-duration", "0.3",
                         "--user", "alice", "--account", "physics")
    assert proc.wait(20) == 0
    assert run_cli("energy", "finish", "--job-id", "105", "--node", "nd", env=env).returncode == 0
    job = store / "105"
    # The sampler ran as root (as the prolog does): root owns the records, the project's group reads.
    st = job.stat()
    assert (st.st_uid, grp.getgrgid(st.st_gid).gr_name, oct(st.st_mode & 0o7777)) == (0, "physics", "0o750")
    for f in (job / "r0").iterdir():
        assert f.stat().st_mode & 0o007 == 0, f  # nothing for "others"
        if f.name != "work":
            assert f.stat().st_uid == 0 and f.stat().st_mode & 0o020 == 0, f  # root's, not writable by the group
    # her work reports went to work/ while the run lasted; `energy finish` (the epilog) took it back
    assert ((job / "r0" / "work").stat().st_uid, (job / "r0" / "work").stat().st_mode & 0o7777) == (0, 0o700)

    def read_as(user: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", user, "--", "cat", str(job / "r0" / "nd.summary.json")],
                              capture_output=True, text=True, check=False)

    assert read_as("alice").returncode == 0
    denied = read_as("bob")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    listing = subprocess.run(["runuser", "-u", "bob", "--", "ls", str(store)], capture_output=True,
                             text=True, check=False)
    assert listing.returncode != 0  # the store root does not list other jobs either
