"""Report access on the real dev cluster under PrivateData=accounts,jobs,usage,users (as on production
sites). Who is a site admin comes only from the admin's root-owned /etc/hpcai/site.toml and Slurm's
AdminLevel, never from a user's --site, $HPCAI_SITE or HPCAI_ADMINS; who the user is comes from the uid.
Slurm itself keeps a plain user to their own jobs; a coordinator sees the coordinated account's jobs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RunHpcai, assert_clean_error

pytestmark = pytest.mark.cluster
FMT = "%Y-%m-%dT%H:%M:%S"


def _sh(*argv: str, user: str | None = None, check: bool = True) -> str:
    full = ["runuser", "-u", user, "--", *argv] if user else list(argv)
    return subprocess.run(full, capture_output=True, text=True, check=check, cwd="/tmp", timeout=120).stdout


def _submit(user: str, account: str) -> str:
    return _sh("sbatch", "--parsable", "-A", account, "-t", "5", "-o", "/dev/null", "--wrap", "sleep 1",
               user=user).strip().split(";")[0]


@pytest.fixture(scope="module")
def period(cluster: None) -> dict[str, str]:
    """One finished job each of alice (physics), root (physics) and bob (climate), recorded in slurmdbd."""
    since = time.strftime(FMT, time.localtime(time.time() - 5))
    ids = {"alice": _submit("alice", "physics"), "root": _submit("root", "physics"), "bob": _submit("bob", "climate")}
    deadline = time.time() + 180
    while True:
        rows = [r.split("|") for r in _sh("sacct", "-X", "-n", "-P", f"--jobs={','.join(ids.values())}",
                                          "--format=JobID,State,Partition").split()]
        # finished, and slurmctld's record arrived (slurmdbd's placeholder row has no partition)
        if len(rows) == 3 and all(r[1] not in {"PENDING", "RUNNING", "COMPLETING"} and r[2] for r in rows):
            break
        assert time.time() < deadline, rows
        time.sleep(1)
    return {"since": since, "until": time.strftime(FMT, time.localtime(time.time() + 1)), **ids}


@pytest.fixture(scope="module")
def bobs_profile() -> Iterator[Path]:
    """bob's own site profile (his file, readable by him): the dev cluster's, with bob added to `admins`."""
    folder = Path(tempfile.mkdtemp(prefix="hpcai-bob-"))
    os.chmod(folder, 0o755)
    path = folder / "site.toml"
    path.write_text(Path("/etc/hpcai/site.toml").read_text().replace('admins = ["root"]', 'admins = ["root", "bob"]'))
    assert 'admins = ["root", "bob"]' in path.read_text()
    os.chown(path, int(_sh("id", "-u", "bob")), -1)
    os.chmod(path, 0o644)
    yield path
    shutil.rmtree(folder, ignore_errors=True)


def _accounts(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert proc.returncode == 0, proc.stderr
    return {line["account"]: line for line in json.loads(proc.stdout)["lines"]}


def _window(period: dict[str, str]) -> list[str]:
    return ["--since", period["since"], "--until", period["until"], "--json"]


@pytest.mark.parametrize("how", ["--site", "HPCAI_SITE", "HPCAI_ADMINS", "all"])
def test_bob_claiming_admin_is_refused(period: dict[str, str], bobs_profile: Path, hpcai: RunHpcai,
                                       how: str) -> None:
    args: list[str] = ["--site", str(bobs_profile)] if how in {"--site", "all"} else []
    env = {"HPCAI_SITE": str(bobs_profile)} if how in {"HPCAI_SITE", "all"} else {}
    if how in {"HPCAI_ADMINS", "all"}:
        env["HPCAI_ADMINS"] = "bob"
    proc = hpcai(*args, "report", "usage", "-A", "physics", *_window(period), user="bob", env=env)
    assert_clean_error(proc, "user bob may see (climate)", "Got physics instead")
    assert proc.stdout == ""
    site = hpcai(*args, "report", "site", "--out", "/tmp/hpcai-never", "-A", "physics", user="bob", env=env)
    assert_clean_error(site, "Got physics instead")
    assert not Path("/tmp/hpcai-never").exists()
    # without -A, bob's report holds his own project only, whatever his profile says
    assert set(_accounts(hpcai(*args, "report", "usage", *_window(period), user="bob", env=env))) == {"climate"}


def test_alice_sees_physics_root_sees_all(period: dict[str, str], hpcai: RunHpcai) -> None:
    proc = hpcai("report", "usage", *_window(period), user="alice")
    mine = _accounts(proc)
    assert set(mine) == {"physics"}
    # Slurm hides root's physics job from her (PrivateData=jobs): the report says so, in one line
    assert proc.stderr.count("\n") == 1 and "PrivateData=jobs" in proc.stderr and "physics" in proc.stderr
    everything = _accounts(hpcai("report", "usage", *_window(period)))
    assert {"physics", "climate"} <= set(everything)
    assert everything["physics"]["jobs"] >= mine["physics"]["jobs"] + 1  # root's job too
    assert_clean_error(hpcai("report", "usage", "-A", "climate", *_window(period), user="alice"), "Got climate")


@pytest.fixture()
def bob_coordinates_physics(cluster: None) -> Iterator[None]:
    _sh("sacctmgr", "-i", "add", "coordinator", "account=physics", "names=bob")
    try:
        yield
    finally:
        _sh("sacctmgr", "-i", "remove", "coordinator", "account=physics", "names=bob", check=False)


def test_coordinator_sees_the_coordinated_account(period: dict[str, str], hpcai: RunHpcai,
                                                  bob_coordinates_physics: None) -> None:
    window = _window(period)
    coordinator = hpcai("report", "usage", "-A", "physics", *window, user="bob")
    admin = hpcai("report", "usage", "-A", "physics", *window)
    assert _accounts(coordinator)["physics"]["jobs"] == _accounts(admin)["physics"]["jobs"]
    assert "PrivateData" not in coordinator.stderr  # a coordinator sees every job of the account
    both = _accounts(hpcai("report", "usage", *window, user="bob"))
    assert "physics" in both
    # the job commands too: Slurm shows a coordinator the account's jobs
    listed = json.loads(hpcai("jobs", "-a", "--json", "--since", period["since"], user="bob").stdout)
    assert period["alice"] in {job["job_id"] for job in listed}
    status = hpcai("status", period["alice"], "--json", user="bob")
    assert status.returncode == 0 and json.loads(status.stdout)["user"] == "alice", status.stderr


def test_private_data_hides_other_users_jobs(period: dict[str, str], hpcai: RunHpcai) -> None:
    users = _sh("sacct", "-a", "-X", "-n", "-P", "--format=User", f"--starttime={period['since']}", user="bob").split()
    assert "alice" not in users and "root" not in users
    assert "alice" in _sh("sacct", "-a", "-X", "-n", "-P", "--format=User", f"--starttime={period['since']}").split()
    listed = json.loads(hpcai("jobs", "-a", "--json", "--since", period["since"], user="bob").stdout)
    assert {job["user"] for job in listed} <= {"bob"}
    assert_clean_error(hpcai("status", period["alice"], user="bob"), f"job {period['alice']}")
    assert json.loads(hpcai("status", period["alice"], "--json", user="alice").stdout)["user"] == "alice"
