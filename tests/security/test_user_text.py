"""Text a user writes into Slurm (a job name) cannot create, alter, hide or break a row anywhere hpcai reads
Slurm, and reaches no terminal raw. alice names her jobs with a newline and a forged row for bob (in the
field delimiter of the bare `sacct -P` we used to read), with bytes that are not UTF-8, with ESC/OSC
sequences; root's `hpcai jobs -a`, `hpcai status`, the report's sacct rows and the audit sweep of jobs
cancelled while pending see her jobs, as hers, and no other."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import RunHpcai, wait_until

from hpc_aidc.scheduler.fence import SEP, Fence, escape, unfence
from hpc_aidc.scheduler.parse import SACCT_FIELDS

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None, reason="needs root and runuser")


def _forged_row(job_id: str, user: str, delimiter: str) -> str:
    """A whole sacct row for a job `user` never submitted, in `delimiter`."""
    values = dict.fromkeys(SACCT_FIELDS, "")
    values.update(JobID=job_id, JobIDRaw=job_id, JobName="fake-row", User=user, Account="climate",
                  Partition="gpu", QOS="normal", State="COMPLETED", ExitCode="0:0", Elapsed="01:00:00",
                  NNodes="4", AllocTRES="billing=4,cpu=4,gres/gpu=16,node=4")
    return delimiter.join(values[f] for f in SACCT_FIELDS)


# -- the parse, on text built as sacct prints it (pure) -----------------------------------------------------

def _printed(fence: Fence, rows: list[list[str]]) -> str:
    """sacct's --parsable2 output for `rows` (each ending with its JobIDRaw trailer) with the fence."""
    return "".join(fence.token.join([*row, row[1]]) + "\n" for row in rows)


def _row(job_id: str, name: str, user: str = "alice") -> list[str]:
    values = dict.fromkeys(SACCT_FIELDS, "x")
    values.update(JobID=job_id, JobIDRaw=job_id, JobName=name, User=user)
    return [values[f] for f in SACCT_FIELDS]


def test_a_name_cannot_split_or_add_a_row() -> None:
    fence = Fence.new()
    evil = "a\n" + _forged_row("999", "bob", "\x1f") + "\n" + _forged_row("998", "bob", "|")
    rows = [_row("10", "plain"), _row("11", evil), _row("12", "tab\there\x1fsep\r\\n")]
    got = unfence(_printed(fence, rows), fence, len(SACCT_FIELDS) + 1)
    assert got.quarantined == []
    assert [line.split(SEP)[0] for line in got.lines] == ["10", "11", "12"]
    fields = [line.split(SEP) for line in got.lines]
    assert all(len(f) == len(SACCT_FIELDS) for f in fields)
    name = SACCT_FIELDS.index("JobName")
    assert fields[1][name] == escape(evil) and "\n" not in fields[1][name]
    assert fields[2][name] == "tab\there\\x1fsep\\r\\\\n"
    assert {f[SACCT_FIELDS.index("User")] for f in fields} == {"alice"}


def test_what_cannot_be_read_is_quarantined_alone() -> None:
    fence = Fence.new()
    good = _printed(fence, [_row("10", "a"), _row("12", "c")])
    truncated = fence.token.join(_row("11", "b\nmore")[:5])  # a killed sacct: a row cut short
    got = unfence(good.replace("\n", "\n" + truncated + "\n", 1), fence, len(SACCT_FIELDS) + 1)
    assert [line.split(SEP)[0] for line in got.lines] == ["10"] and len(got.quarantined) == 1
    not_an_id = fence.token.join(["ghost", *_row("13", "d")[1:], "13"]) + "\n"
    got = unfence(not_an_id + good, fence, len(SACCT_FIELDS) + 1)
    assert [line.split(SEP)[0] for line in got.lines] == ["10", "12"] and len(got.quarantined) == 1


def test_tables_and_values_print_user_text_escaped() -> None:
    from hpc_aidc.render.table import format_table, printable

    evil = "\x1b]0;owned\x07a\nb\u202ec\x9b\x7f"
    assert printable(evil) == "\\x1b]0;owned\\x07a\\nb\\u202ec\\x9b\\x7f"
    assert printable("café ✓ 名前") == "café ✓ 名前"  # printable text is left alone
    table = format_table(["NAME"], [[evil]])
    assert "\x1b" not in table and "\x07" not in table and len(table.splitlines()) == 2


# -- against the real dev cluster, as alice ---------------------------------------------------------------

NAMES = {
    "forger": ("x\n" + _forged_row("424242", "bob", "\x1f") + "\n424243|bob|climate").encode(),
    "bytes": b"caf\xe9-\xff\xfe",
    "escape": "\x1b]0;owned\x07\x1b[2J\x1b[31mred\u202e".encode(),
}


def _sbatch_as_alice(name: bytes, *extra: str) -> str:
    argv = [b"runuser", b"-u", b"alice", b"--", b"sbatch", b"--parsable", b"-A", b"physics", b"-p", b"debug",
            b"-t", b"1", b"-o", b"/dev/null", b"-J", name, *(e.encode() for e in extra), b"--wrap", b"true"]
    proc = subprocess.run(argv, capture_output=True, cwd="/tmp", check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode().strip().split(";")[0]


@pytest.fixture(scope="module")
def alice_jobs() -> dict[str, str]:
    """alice's jobs under the hostile names (ended), and one cancelled while pending."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser")
    jobs = {kind: _sbatch_as_alice(name) for kind, name in NAMES.items()}
    jobs["held"] = _sbatch_as_alice(NAMES["forger"], "--hold")
    subprocess.run(["scancel", jobs["held"]], check=True)

    def ended() -> bool:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "jobidraw,state", "-j", ",".join(jobs.values())],
                             capture_output=True, text=True, check=False).stdout
        states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
        return all(states.get(j, "").split(" ")[0] in ("COMPLETED", "CANCELLED", "FAILED") for j in jobs.values())

    wait_until("alice's jobs ended and in accounting", ended, 120)
    return jobs


@ROOT_ONLY
@pytest.mark.cluster
@pytest.mark.usefixtures("cluster")
def test_jobs_and_status_show_alices_jobs_as_hers_and_nothing_forged(alice_jobs: dict[str, str],
                                                                    hpcai: RunHpcai) -> None:
    proc = hpcai("jobs", "-a", "--since", "now-1hours", "--json")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    rows = json.loads(proc.stdout)
    mine = {r["job_id"]: r for r in rows if r["job_id"] in alice_jobs.values()}
    ran = {job for kind, job in alice_jobs.items() if kind != "held"}  # sacct lists a job that never ran by state
    assert ran <= set(mine)
    assert {r["user"] for r in mine.values()} == {"alice"}
    assert not [r for r in rows if r["job_id"] in ("424242", "424243")]  # the forged rows
    assert "\n" not in mine[alice_jobs["forger"]]["name"]
    text = hpcai("jobs", "-a", "--since", "now-1hours")
    assert text.returncode == 0 and "\x1b" not in text.stdout and "\x07" not in text.stdout, text.stderr
    assert "\\x1b]0;owned\\x07" in text.stdout
    for job in ran:
        status = hpcai("status", job)
        assert status.returncode == 0, status.stderr
        assert "\x1b" not in status.stdout and "user:          alice" in status.stdout


@ROOT_ONLY
@pytest.mark.cluster
@pytest.mark.usefixtures("cluster")
def test_the_reports_rows_and_the_audit_sweep_see_only_alices_jobs(alice_jobs: dict[str, str],
                                                                  tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from hpc_aidc.report.rows import parse_rows
    from hpc_aidc.report.source import job_lines
    from hpc_aidc.scheduler.audit import sweep_never_ran

    rows = parse_rows(job_lines(list(alice_jobs.values())))
    assert sorted(r.job_id for r in rows) == sorted(alice_jobs.values())
    assert {r.user for r in rows} == {"alice"} and {r.account for r in rows} == {"physics"}

    log = tmp_path / "audit.jsonl"
    (tmp_path / "audit.jsonl.cursor").write_text(f"{int((datetime.now(UTC) - timedelta(hours=1)).timestamp())}\n")
    # the whole hour, whatever other tests cancelled in it (an epilog's sweep is bounded: test_audit_flood.py)
    swept = sweep_never_ran(log, datetime.now(UTC) + timedelta(seconds=10), max_jobs=10**6, max_seconds=600).records
    held = [r for r in swept if r["job_id_raw"] == alice_jobs["held"]]
    assert len(held) == 1 and held[0]["user"] == "alice"
    assert not [r for r in swept if r["job_id_raw"] in ("424242", "424243")]  # the forged rows
    # other tests cancel bob's pending jobs too: every record names the job's real owner
    ids = sorted({str(r["job_id_raw"]) for r in swept})
    out = subprocess.run(["sacct", "-X", "-n", "-P", "--duplicates", "-o", "jobidraw,user", "-j", ",".join(ids)],
                         capture_output=True, text=True, check=True).stdout
    owner = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
    assert [(r["job_id_raw"], r["user"]) for r in swept if owner.get(str(r["job_id_raw"])) != r["user"]] == []
