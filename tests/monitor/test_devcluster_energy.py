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
from conftest import RunHpcai, assert_clean_error, wait_until
from fake_scenario import Scenario

from hpc_aidc.monitor import acct
from hpc_aidc.site_profile import load_site

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _sbatch(user: str, *args: str) -> str:
    out = subprocess.run(["runuser", "-u", user, "--", "sbatch", "--parsable", "-o", "/dev/null", *args],
                         capture_output=True, text=True, check=True, cwd="/tmp")
    return out.stdout.strip().split(";")[0]


def _job_nodes(job: str) -> list[str]:
    """The job's nodes, once it has them (the cluster may be busy with other tests' jobs)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%N"], capture_output=True, text=True,
                             check=False).stdout.strip()
        if out:
            names = subprocess.run(["scontrol", "show", "hostnames", out], capture_output=True, text=True,
                                   check=True).stdout.split()
            return sorted(names)
        time.sleep(0.2)
    raise AssertionError(f"job {job} got no nodes")


def _admin_comment(job: str, timeout: float = 90.0) -> str:
    """Poll sacct until the job ended and EpilogSlurmctld stored its summary."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["sacct", "-j", job, "-X", "-n", "-P", "-o", "jobid,state,admincomment"],
                             capture_output=True, text=True, check=False).stdout.strip()
        # `sacct -j A_0` may also print other tasks of array A (e.g. while A_0 still shares A's record):
        # only the line of the job asked for counts (AdminComment last: it may hold the delimiter)
        rows = [line.split("|", 2) for line in out.splitlines()]
        state, comment = next(((r[1], r[2]) for r in rows if len(r) == 3 and r[0] == job), ("", ""))
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
    nodes = _job_nodes(job)
    victim = nodes[1]
    pid = _wait_lock_pid(store / job / "r0" / f"{victim}.lock")
    series = store / job / "r0" / f"{victim}.series.bin"
    deadline = time.monotonic() + 30
    while not (series.exists() and series.stat().st_size >= 2 * (8 + 2 * 28)):
        assert time.monotonic() < deadline, f"the {victim} sampler wrote no rows"
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    totals = acct.decode(_admin_comment(job))
    assert totals.nodes == tuple(nodes) and totals.gpus == 4 and totals.missing == ()
    assert totals.source == "counter" and totals.simulated and totals.cpu_j is None

    exact = 0.0
    ends = {}
    for node in nodes:
        summary = json.loads((store / job / "r0" / f"{node}.summary.json").read_text())
        meta = json.loads((store / job / "r0" / f"{node}.meta.json").read_text())
        ends[node] = summary["end_source"]
        assert (store / job / "r0" / f"{node}.series.bin").stat().st_size > 0
        for gpu in meta["gpus"]:
            exact += scenario.energy_j(gpu["index"], summary["t_start"], summary["t_end"])
    assert ends == {nodes[0]: "sampler", victim: "epilog"}
    # Tolerance: AdminComment keeps 10 significant digits; counters are whole mJ, read within ~1 ms.
    assert totals.gpu_j == pytest.approx(exact, rel=1e-4)

    # Access: alice (owner) sees it all; bob (another project) can read neither files nor `show`.
    shown = hpcai("energy", "show", job, user="alice")
    assert shown.returncode == 0, shown.stderr
    assert "SIMULATED" in shown.stdout and "Power over time" in shown.stdout
    as_json = json.loads(hpcai("energy", "show", job, "--json", user="alice").stdout)
    assert as_json["totals"]["gpu_j"] == pytest.approx(totals.gpu_j)
    run0 = as_json["runs"][0]
    assert len(run0["nodes"]) == 2 and len(run0["nodes"][0]["gpus"]) == 2
    denied = subprocess.run(["runuser", "-u", "bob", "--", "cat", str(store / job / "r0" / f"{nodes[0]}.summary.json")],
                            capture_output=True, text=True, check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    # PrivateData=jobs: to bob, alice's job does not exist
    assert_clean_error(hpcai("energy", "show", job, user="bob"), f"Expected job {job} in Slurm accounting")


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


def test_array_task_energy_shows_from_its_records_without_admin_comment(
        site_store: tuple[Path, Scenario], hpcai: RunHpcai) -> None:
    """An array task's records are under its raw id ($SLURM_JOB_ID), not its display id: `show 2_0` finds
    them when AdminComment has no summary (not stored yet, or never)."""
    store, _ = site_store
    array = _sbatch("alice", "-N1", "-A", "physics", "--gres=gpu:h100:1", "--array=0-1", "--wrap", "sleep 2")
    task = f"{array}_0"
    stored = acct.decode(_admin_comment(task))  # EpilogSlurmctld is done with it: nothing writes it again
    raw = subprocess.run(["sacct", "-j", task, "-X", "-n", "-P", "-o", "jobidraw"], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert raw.isdigit() and (store / raw / "r0").is_dir() and not (store / task).exists()
    # each task's AdminComment holds its own summary (the last task's raw id is the array's: storing by it
    # once overwrote every task's)
    for each in (f"{array}_0", f"{array}_1"):
        each_raw = subprocess.run(["sacct", "-j", each, "-X", "-n", "-P", "-o", "jobid,jobidraw"],
                                  capture_output=True, text=True, check=True).stdout
        each_raw = next(line.split("|")[1] for line in each_raw.splitlines() if line.split("|")[0] == each)
        own = json.loads(next((store / each_raw / "r0").glob("*.summary.json")).read_text())["totals"]["gpu_j"]
        assert acct.decode(_admin_comment(each)).gpu_j == pytest.approx(own, rel=1e-6), each
    subprocess.run(["sacctmgr", "-i", "modify", "job", "where", f"jobid={raw}", "set", "AdminComment="],
                   capture_output=True, check=True)
    wait_until(f"the AdminComment of {task} was not blanked", lambda: not _comment(task), 30)

    for asked in (task, raw):
        shown = hpcai("energy", "show", asked, user="alice")
        assert shown.returncode == 0, shown.stderr
        assert f"Job {task} " in shown.stdout and "from energy records (not in accounting yet)" in shown.stdout
        as_json = json.loads(hpcai("energy", "show", asked, "--json", user="alice").stdout)
        assert as_json["job"]["jobidraw"] == raw and [r["run"] for r in as_json["runs"]] == [0]
        assert as_json["totals"]["gpu_j"] == pytest.approx(stored.gpu_j, rel=1e-6)


def test_show_unknown_job_is_one_clean_line(cluster: None, hpcai: RunHpcai) -> None:
    assert_clean_error(hpcai("energy", "show", "99999999"), "Expected job 99999999")


STATE = Path("/var/lib/hpcai-devcluster")
SLURMDBD_PID = Path("/run/hpcai-devcluster/slurmdbd.pid")


def _state(job: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, check=False)
    return next((w.split("=", 1)[1] for w in out.stdout.split() if w.startswith("JobState=")), "")


def _slurmdbd_up() -> bool:
    return subprocess.run(["sacctmgr", "-n", "show", "cluster"], capture_output=True, check=False).returncode == 0


def test_store_is_roots_alone_and_records_are_read_only_for_the_user(site_store: tuple[Path, Scenario]) -> None:
    store, _ = site_store
    job = _sbatch("alice", "-N1", "-A", "physics", "--gres=gpu:h100:1", "--wrap", "sleep 1")
    node = _job_nodes(job)[0]
    _admin_comment(job)
    as_alice = [
        f"mkdir {store}/99999999",  # no job directory of her own in the store (mode 0711)
        f"ls {store}",  # nor a listing of other jobs
        f"touch {store}/{job}/r0/{node}.meta.json",  # her own job's records are root's
        f"ln -s /etc/passwd {store}/{job}/r0/{node}.lock",
        f"cat {store}/accounting/{job}.r0.{node}",  # the accounting box is root's and the SlurmUser's
    ]
    for command in as_alice:
        proc = subprocess.run(["runuser", "-u", "alice", "--", "bash", "-c", command], capture_output=True,
                              text=True, check=False)
        assert proc.returncode != 0, command
    # she reported her job's work in its work directory while it ran; the epilog took it back at the end
    work = (store / job / "r0" / "work").stat()
    assert (work.st_uid, work.st_mode & 0o7777) == (0, 0o700)
    assert (store / job / "r0" / f"{node}.work.json").stat().st_uid == 0


def test_job_requeued_after_a_node_failure_has_energy_per_run_that_adds_up(
        site_store: tuple[Path, Scenario], hpcai: RunHpcai) -> None:
    store, _ = site_store
    job = _sbatch("alice", "-N1", "-A", "physics", "--gres=gpu:h100:2", "--wrap", "sleep 5")
    first = _job_nodes(job)[0]
    _wait_lock_pid(store / job / "r0" / f"{first}.lock")
    time.sleep(1.5)
    try:
        # The node fails: Slurm ends the run as NODE_FAIL and requeues the job (JobRequeue=1).
        subprocess.run(["scontrol", "update", f"nodename={first}", "state=down", "reason=hpcai-test"], check=True)
        wait_until("the job was not requeued after its node failed", lambda: _state(job) == "PENDING", 60)
        # Slurm holds a requeued job back for two minutes; an admin lets it start at once elsewhere.
        subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now", f"ExcNodeList={first}"],
                       check=True)
    finally:
        subprocess.run(["scontrol", "update", f"nodename={first}", "state=resume"], capture_output=True,
                       check=False)

    def both_runs_stored() -> bool:
        out = subprocess.run(["sacct", "-j", job, "-X", "-n", "-P", "-o", "state,admincomment"],
                             capture_output=True, text=True, check=False).stdout
        state, _, comment = (out.strip().splitlines() or [""])[-1].partition("|")  # the latest run's row
        return state == "COMPLETED" and acct.contains_summary(comment) and acct.decode(comment).runs == 2

    wait_until("the job's two runs did not reach accounting", both_runs_stored, 120)
    shown = json.loads(hpcai("energy", "show", job, "--json", user="alice").stdout)
    runs = shown["runs"]
    assert [r["run"] for r in runs] == [0, 1]
    assert sum(r["totals"]["gpu_j"] for r in runs) == pytest.approx(shown["totals"]["gpu_j"], rel=1e-6)
    assert sum(r["totals"]["duration_s"] for r in runs) == pytest.approx(shown["totals"]["duration_s"], rel=1e-6)
    for r in runs:
        gpus = [g for node in r["nodes"] for g in node["gpus"]]
        assert len(gpus) == 2
        assert sum(g["energy_j"] for g in gpus) == pytest.approx(r["totals"]["gpu_j"], rel=1e-6)
        assert sum(g["idle_s"] for g in gpus) <= 2 * r["totals"]["duration_s"] + 1e-6
    text = hpcai("energy", "show", job, user="alice").stdout
    assert "job total over 2 runs" in text and "Run 1  (after 1 requeue)" in text


def test_summaries_survive_a_slurmdbd_outage(site_store: tuple[Path, Scenario], hpcai: RunHpcai) -> None:
    store, _ = site_store
    spool = store / "accounting" / "spool"
    os.kill(int(SLURMDBD_PID.read_text()), signal.SIGTERM)
    try:
        wait_until("slurmdbd did not stop", lambda: not _slurmdbd_up(), 30)
        jobs = [_sbatch("alice", "-N1", "-A", "physics", "--gres=gpu:h100:1", "--wrap", "sleep 1")
                for _ in range(2)]
        # Each job's EpilogSlurmctld finds slurmdbd away: its summary is spooled, not lost.
        wait_until(f"jobs {jobs} were not spooled", lambda: all((spool / j).exists() for j in jobs), 90)
    finally:
        if not _slurmdbd_up():
            subprocess.run(["/usr/sbin/slurmdbd"], check=True)
        wait_until("slurmdbd did not come back", _slurmdbd_up, 60)

    def stored() -> bool:
        # what an admin's cron runs; slurmctld sends the jobs' records once slurmdbd is back
        done = hpcai("energy", "backfill", "--json")
        assert done.returncode == 0, done.stderr
        return all(acct.contains_summary(_comment(j)) for j in jobs)

    wait_until("the spooled summaries did not reach accounting", stored, 120)
    assert not any((spool / j).exists() for j in jobs)
    for j in jobs:
        assert acct.decode(_comment(j)).gpus == 1


def _comment(job: str) -> str:
    out = subprocess.run(["sacct", "-j", job, "-X", "-n", "-P", "-o", "jobid,admincomment"], capture_output=True,
                         text=True, check=False).stdout
    return next((line.split("|", 1)[1] for line in out.splitlines() if line.split("|", 1)[0] == job), "")
