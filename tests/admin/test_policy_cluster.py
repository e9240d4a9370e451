"""The dev cluster's site policy, both ways: the real slurmctld (JobSubmitPlugins=lua, the job_submit.lua
up.sh renders from /etc/hpcai/site.toml) refuses each request with its documented code and message, and
hpcai refuses the same request first, with the same code, before calling sbatch. `sbatch --test-only`
runs the plugin without creating a job, so the table costs seconds. Changes (`scontrol update` by alice of
her own held job) go through the plugin's slurm_job_modify and are refused with the code too."""

from __future__ import annotations

import contextlib
import pwd
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RunHpcai, assert_clean_error, wait_until

from hpc_aidc.spec.policy import BY_CODE

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("cluster")]

# (what, sbatch options, hpcai submit run options, code)
TABLE = [
    ("no account", ["-t", "5"], [], "HPCAI-P001"),
    ("GPUs on a CPU partition", ["-A", "physics", "-p", "cpu", "-t", "5", "--gres=gpu:1"],
     ["-A", "physics", "-p", "cpu", "-t", "5", "-G", "1"], "HPCAI-P002"),
    ("too many GPUs for the QoS", ["-A", "physics", "-q", "debug", "-N", "2", "--gres=gpu:h100:4", "-t", "5"],
     ["-A", "physics", "-q", "debug", "-N", "2", "-G", "4"], "HPCAI-P006"),
    ("too many CPUs per GPU", ["-A", "physics", "--gres=gpu:h100:1", "-c", "4", "-t", "5"],
     ["-A", "physics", "-G", "1", "-c", "4"], "HPCAI-P007"),
    ("no time limit", ["-A", "physics", "-p", "cpu"], ["-A", "physics", "-p", "cpu"], "HPCAI-P005"),
    ("an impossible request", ["-A", "physics", "--gres=gpu:h100:8", "-t", "5"], ["-A", "physics", "-G", "8"],
     "HPCAI-P004"),
]
VALID = [
    (["-A", "physics", "-N", "2", "--gres=gpu:h100:2", "-t", "5"], ["-A", "physics", "-N", "2", "-G", "2"]),
    (["-A", "physics", "-p", "cpu", "-c", "4", "-t", "5"], ["-A", "physics", "-p", "cpu", "-c", "4", "-t", "5"]),
]


def _sbatch_test_only(user: str, options: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", "sbatch", "--test-only", "-o", "/dev/null", *options,
                           "--wrap", "true"], capture_output=True, text=True, cwd="/tmp", check=False)


@pytest.mark.parametrize(("what", "sbatch", "submit", "code"), TABLE, ids=[t[0] for t in TABLE])
def test_slurmctld_and_hpcai_refuse_with_the_same_code(hpcai: RunHpcai, tmp_path: Path, what: str,
                                                       sbatch: list[str], submit: list[str], code: str) -> None:
    refused = _sbatch_test_only("alice", sbatch)
    assert refused.returncode != 0, refused.stderr
    line = next(x for x in refused.stderr.splitlines() if code in x)
    # the documented message: the catalogue's template with the request's values filled in
    pattern = re.escape(BY_CODE[code].template)
    pattern = re.sub(r"\\\{[a-z_]+\\\}", ".+", pattern)
    assert re.search(f"sbatch: error: {code}: {pattern}$", line), line

    proc = hpcai("submit", "run", *submit, "--dry-run", "--", "true", user="alice",
                 env={"HPCAI_JOB_ROOT": str(tmp_path)})
    assert_clean_error(proc, f"{code}: Expected")


@pytest.mark.parametrize(("sbatch", "submit"), VALID)
def test_valid_requests_pass_both(hpcai: RunHpcai, sbatch: list[str], submit: list[str]) -> None:
    accepted = _sbatch_test_only("alice", sbatch)
    assert accepted.returncode == 0 and "to start at" in accepted.stderr, accepted.stderr
    proc = hpcai("submit", "run", *submit, "--dry-run", "--", "true", user="alice", env={"HPCAI_JOB_ROOT": "/tmp"})
    assert proc.returncode == 0, proc.stderr
    assert "sbatch --test-only: Job" in proc.stderr


def test_root_is_exempt() -> None:
    proc = subprocess.run(["sbatch", "--test-only", "-o", "/dev/null", "-t", "5", "--wrap", "true"],
                          capture_output=True, text=True, cwd="/tmp", check=False)
    assert proc.returncode == 0, proc.stderr


# Requests hpcai has no flags for, so only sbatch makes them: each passed slurmctld's policy before it read
# a -N range at its top, --mem=0 as all of a node's memory, --gpus-per-socket, and --exclusive as whole nodes.
SBATCH_ONLY = [
    ("a node range counts at its top", ["-A", "physics", "-N", "1-64", "--gres=gpu:h100:1", "-t", "5"],
     "HPCAI-P004"),
    ("--mem=0 with a GPU is all of the node's memory", ["-A", "physics", "--mem=0", "--gres=gpu:h100:1", "-t", "5"],
     "HPCAI-P008"),
    ("--gpus-per-socket counts", ["-A", "physics", "-q", "debug", "-N", "2", "--sockets-per-node=1",
                                  "--gpus-per-socket=4", "-t", "5"], "HPCAI-P006"),
    ("a typed --gres over a node range", ["-A", "physics", "-q", "debug", "-N", "1-2", "--gres=gpu:h100:3",
                                          "-t", "5"], "HPCAI-P006"),
    ("--exclusive holds every GPU of its nodes", ["-A", "physics", "-q", "debug", "-N", "2", "--exclusive",
                                                  "--gres=gpu:h100:1", "-t", "5"], "HPCAI-P006"),
]
# ... and what must still pass: hpcai train's whole-node request (--mem=0 with every GPU), an exclusive CPU job.
SBATCH_ONLY_VALID = [
    ["-A", "physics", "-N", "2", "--gres=gpu:h100:4", "--mem=0", "-c", "2", "-t", "5"],
    ["-A", "physics", "-p", "cpu", "--exclusive", "-t", "5"],
]


def _refusal_line(proc: subprocess.CompletedProcess[str], code: str) -> str:
    assert proc.returncode != 0, proc.stderr
    line = next((x for x in proc.stderr.splitlines() if code in x), None)
    assert line is not None, proc.stderr
    return line


@pytest.mark.parametrize(("what", "sbatch", "code"), SBATCH_ONLY, ids=[t[0] for t in SBATCH_ONLY])
def test_slurmctld_reads_every_form_of_request(what: str, sbatch: list[str], code: str) -> None:
    line = _refusal_line(_sbatch_test_only("alice", sbatch), code)
    pattern = re.sub(r"\\\{[a-z_]+\\\}", ".+", re.escape(BY_CODE[code].template))
    assert re.search(f"sbatch: error: {code}: {pattern}$", line), line


@pytest.mark.parametrize("sbatch", SBATCH_ONLY_VALID)
def test_whole_nodes_within_the_caps_pass(sbatch: list[str]) -> None:
    accepted = _sbatch_test_only("alice", sbatch)
    assert accepted.returncode == 0 and "to start at" in accepted.stderr, accepted.stderr


# -- changes: `scontrol update` of a held, compliant job ------------------------------------------------

def _as_alice(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "alice", "--", *argv], capture_output=True, text=True, cwd="/tmp",
                          check=False)


@contextlib.contextmanager
def _held_job(options: list[str]) -> Iterator[str]:
    """A compliant job of alice's, held so it never starts; cancelled afterwards."""
    proc = _as_alice("sbatch", "--parsable", "--hold", "-o", "/dev/null", *options, "--wrap", "true")
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    try:
        yield job
    finally:
        subprocess.run(["scancel", job], capture_output=True, check=False)


def _job(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, check=True).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def _ctld_log() -> Path:
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"^SlurmctldLogFile\s*=\s*(\S+)", config, re.MULTILINE)
    assert found, "slurm.conf names no SlurmctldLogFile"
    return Path(found.group(1))


# (what, sbatch options of the compliant job, the change, the job field it would change, code)
CHANGES = [
    ("onto the CPU partition with a GPU", ["-A", "physics", "--gres=gpu:h100:1", "-t", "5"], "Partition=cpu",
     "Partition", "HPCAI-P002"),
    ("more nodes, past the QoS's GPUs", ["-A", "physics", "-q", "debug", "--gres=gpu:h100:3", "-t", "5"],
     "NumNodes=2", "NumNodes", "HPCAI-P006"),
    ("more GPUs per node, past the QoS's GPUs", ["-A", "physics", "-q", "debug", "-N", "2", "--gres=gpu:h100:1",
                                                 "-t", "5"], "Gres=gpu:h100:4", "TresPerNode", "HPCAI-P006"),
]


@pytest.mark.parametrize(("what", "options", "change", "field", "code"), CHANGES, ids=[c[0] for c in CHANGES])
def test_slurmctld_refuses_a_change_that_breaks_the_policy(what: str, options: list[str], change: str, field: str,
                                                           code: str) -> None:
    uid = pwd.getpwnam("alice").pw_uid
    log = _ctld_log()
    with _held_job(options) as job:
        before = _job(job)[field]
        proc = _as_alice("scontrol", "update", f"JobId={job}", change)
        # Slurm 22.05 drops job_submit.lua's message on changes: scontrol shows the return code's text, and
        # the code is in slurmctld's log
        assert proc.returncode != 0, (proc.stdout, proc.stderr)
        assert _job(job)[field] == before
        needle = f"hpc-aidc policy: refused a change to job {job} of uid {uid}: {code}: Expected "
        wait_until(f"slurmctld logs {needle!r}", lambda: needle in log.read_text(errors="replace"), timeout=10)


def test_a_compliant_change_passes() -> None:
    with _held_job(["-A", "physics", "-q", "debug", "--gres=gpu:h100:1", "-t", "5"]) as job:
        proc = _as_alice("scontrol", "update", f"JobId={job}", "TimeLimit=4")
        assert proc.returncode == 0, proc.stderr
        assert _job(job)["TimeLimit"] == "00:04:00"
