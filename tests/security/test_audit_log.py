"""The submission audit on the real dev cluster: every submission of this test (through hpcai and plain
sbatch, root's and alice's, one cancelled while pending) shows in `hpcai admin audit` with the identity
Slurm gives it and the sha256 of the script accounting keeps; alice can neither append to, truncate,
remove nor replace the log, nor forge a record (with the recorder itself, a job name, or hpcai's marker);
and a non-admin's `hpcai admin audit` is refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import HPCAI, RunHpcai, assert_clean_error

from hpc_aidc.scheduler.audit import parse_batch_script, sacct_version
from hpc_aidc.site_profile import load_trusted_site

pytestmark = [
    pytest.mark.usefixtures("cluster"),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None, reason="needs root and runuser"),
]

# A job name that tries to close the JSON string and add a field; and hpcai's marker written by hand.
EVIL_NAME = 'x","user":"root","uid":0,"y":"'
FORGED_SCRIPT = "#!/bin/bash\n#SBATCH --comment=hpcai-submit-train\ntrue\n"


def _log() -> Path:
    log = load_trusted_site().audit_log
    assert log is not None, "the dev cluster's site profile names no audit_log"
    return log


def _as(user: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", "bash", "-c", script], capture_output=True, text=True,
                          cwd="/tmp", check=False)


def _sbatch(*args: str, user: str | None = None, stdin: str | None = None) -> str:
    argv = ["sbatch", "--parsable", "-o", "/dev/null", *args]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, cwd="/tmp", check=True)
    return proc.stdout.strip().split(";")[0]


def _audited(hpcai: RunHpcai, jobs: set[str], *args: str, timeout: float = 90) -> dict[str, dict]:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        proc = hpcai("admin", "audit", "--since", "now-1hours", "--json", *args)
        assert proc.returncode == 0, proc.stderr
        found = {r["job_id_raw"]: r for r in json.loads(proc.stdout) if r["job_id_raw"] in jobs}
        if set(found) == jobs or time.monotonic() > deadline:
            return found
        time.sleep(1)


def _accounted_script_sha(job: str) -> str:
    """sha256 of the script slurmdbd keeps (AccountingStoreFlags=job_script); it may arrive after the job."""
    deadline = time.monotonic() + 30
    while True:
        text = subprocess.run(["sacct", "--batch-script", "-j", job], capture_output=True, text=True,
                              check=True).stdout
        # how sacct ends the script differs by version (tests/recorded/*/sacct_batch_script.txt)
        script = parse_batch_script(text, sacct_version())
        if script is not None or time.monotonic() > deadline:
            return hashlib.sha256((script or "").encode()).hexdigest()
        time.sleep(1)


def test_every_submission_is_audited_and_alice_cannot_touch_the_log(hpcai: RunHpcai) -> None:
    # Cancelled while pending: it never runs, so no epilog of its own; the epilogs of the jobs below record
    # it from slurmdbd (they end more than audit.SWEEP_LAG later).
    held = _sbatch("-A", "climate", "--hold", "--wrap", "true")
    subprocess.run(["scancel", held], check=True)
    root_hpcai = json.loads(hpcai("submit", "run", "-A", "physics", "--wait", "--json", "--", "true").stdout)
    alice_hpcai = json.loads(hpcai("submit", "run", "-A", "physics", "--wait", "--json", "--", "true",
                                   user="alice").stdout)
    alice_plain = _sbatch("-A", "physics", "-J", EVIL_NAME, "--wait", user="alice", stdin=FORGED_SCRIPT)
    ids = {root_hpcai["job_id"]: "root", alice_hpcai["job_id"]: "alice", alice_plain: "alice", held: "root"}

    found = _audited(hpcai, set(ids))
    assert set(found) == set(ids), f"not audited: {set(ids) - set(found)}"
    for job, user in ids.items():
        record = found[job]
        assert record["user"] == user and record["uid"] == int(subprocess.check_output(["id", "-u", user]))
        assert record["script_sha256"] == _accounted_script_sha(job), job
    assert found[root_hpcai["job_id"]]["script_sha256"] == hashlib.sha256(
        (Path(root_hpcai["folder"]) / f"{root_hpcai['job_id']}_submission.sh").read_bytes()).hexdigest()
    assert found[alice_hpcai["job_id"]]["via_hpcai"] and found[held]["via_hpcai"] is False
    assert found[held]["never_ran"] is True and found[root_hpcai["job_id"]].get("never_ran") is None
    assert found[held]["account"] == "climate" and found[alice_hpcai["job_id"]]["account"] == "physics"
    # alice's own marker makes her job "via hpcai", never root's: identity is Slurm's.
    forged = found[alice_plain]
    assert forged["job_name"] == EVIL_NAME and forged["user"] == "alice" and forged["via_hpcai"] is True
    assert set(_audited(hpcai, set(ids), "--user", "alice", timeout=0)) == {alice_hpcai["job_id"], alice_plain}
    assert set(_audited(hpcai, set(ids), "--account", "climate", timeout=0)) == {held}

    log = _log()
    before = log.read_bytes()
    inode = log.stat().st_ino
    attacks = {
        "append": f"echo forged >> {log}",
        "truncate": f"truncate -s 0 {log}",
        "empty": f": > {log}",
        "remove": f"rm -f {log}",
        "replace": f"echo forged > /tmp/audit-forged.$$ && mv -f /tmp/audit-forged.$$ {log}",
        "link": f"ln -sf /tmp/audit-forged {log}",
        "chmod": f"chmod 666 {log}",
        "read": f"cat {log}",
    }
    for name, script in attacks.items():
        proc = _as("alice", script)
        assert proc.returncode != 0, (name, proc.stdout)
    # The recorder itself, with an environment that claims to be slurmctld's for root's job.
    env = {"PATH": os.environ["PATH"], "HPCAI_SITE": "/etc/hpcai/site.toml", "SLURM_JOB_ID": root_hpcai["job_id"],
           "SLURM_JOB_UID": "0", "SLURM_JOB_USER": "root", "SLURM_JOB_ACCOUNT": "physics"}
    forge = subprocess.run(["runuser", "-u", "alice", "--", "env", *(f"{k}={v}" for k, v in env.items()), *HPCAI,
                            "admin", "audit-record"], capture_output=True, text=True, cwd="/tmp", check=False)
    assert_clean_error(forge, "audit log")
    after = log.read_bytes()
    assert log.stat().st_ino == inode and after.startswith(before)  # other jobs may have ended meanwhile
    assert b"forged" not in after[len(before):]  # what was appended meanwhile: real jobs only
    for job in ids:  # each job once, whichever epilog recorded it
        assert sum(1 for line in after.splitlines() if json.loads(line)["job_id_raw"] == job) == 1, job


@pytest.mark.parametrize("user", ["alice", "bob"])
def test_non_admins_may_not_read_the_audit(hpcai: RunHpcai, user: str) -> None:
    assert_clean_error(hpcai("admin", "audit", user=user), "Expected an admin")
    assert_clean_error(hpcai("admin", "audit", "--json", "--user", user, user=user), "Expected an admin")


def test_bad_time_is_a_clean_error(hpcai: RunHpcai) -> None:
    assert_clean_error(hpcai("admin", "audit", "--since", "yesterday-ish"))
