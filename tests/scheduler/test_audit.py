"""The submission audit's pure parts: the record from the epilog's environment, hpcai's marker, reading
and filtering the log; and the append's refusals (a link, a file of someone else)."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import RECORDED, RunHpcai, assert_clean_error

from hpc_aidc.errors import ConfigError
from hpc_aidc.scheduler.audit import SCHEMA, append_record, audit_record, parse_log, script_facts, select

SCRIPT = "#!/bin/bash\n#SBATCH --account=physics\n#SBATCH --comment=hpcai-submit-train\nsrun true\n"
ENV = {"SLURM_JOB_ID": "125", "SLURM_ARRAY_JOB_ID": "120", "SLURM_ARRAY_TASK_ID": "5", "SLURM_JOB_UID": "1001",
       "SLURM_JOB_USER": "alice", "SLURM_JOB_ACCOUNT": "physics", "SLURM_JOB_PARTITION": "gpu",
       "SLURM_JOB_NAME": "x"}


def test_record_from_the_epilog_environment() -> None:
    submitted = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    recorded = datetime(2026, 1, 2, 4, 0, 0, tzinfo=UTC)
    record = audit_record(ENV, SCRIPT, submitted, recorded)
    assert record == {
        "schema": SCHEMA, "job_id": "120_5", "job_id_raw": "125", "uid": 1001, "user": "alice",
        "account": "physics", "partition": "gpu", "job_name": "x", "submitted": "2026-01-02T03:04:05+00:00",
        "recorded": "2026-01-02T04:00:00+00:00", "script_sha256": hashlib.sha256(SCRIPT.encode()).hexdigest(),
        "script_bytes": len(SCRIPT), "via_hpcai": True, "hpcai_command": "hpcai-submit-train",
    }


def test_marker_only_as_an_sbatch_line() -> None:
    assert script_facts("#!/bin/sh\ntrue\n")["via_hpcai"] is False
    assert script_facts("#!/bin/sh\necho '#SBATCH --comment=hpcai-submit-run'\n")["via_hpcai"] is False
    assert script_facts(None) == {"script_sha256": None, "script_bytes": None, "via_hpcai": False,
                                  "hpcai_command": None}


def test_plain_job_and_missing_fields() -> None:
    record = audit_record({"SLURM_JOB_ID": "9"}, None, None, datetime(2026, 1, 1, tzinfo=UTC))
    assert record["job_id"] == "9" and record["uid"] is None and record["user"] is None
    assert record["submitted"] is None and record["script_sha256"] is None


def _line(job: str, user: str, account: str, submitted: str | None) -> str:
    return json.dumps({"schema": SCHEMA, "job_id": job, "job_id_raw": job, "user": user, "account": account,
                       "submitted": submitted, "recorded": "2026-01-10T00:00:00+00:00"})


def test_parse_and_select() -> None:
    log = parse_log([
        _line("3", "bob", "climate", "2026-01-03T00:00:00+00:00"),
        _line("1", "alice", "physics", "2026-01-01T00:00:00+00:00"),
        "not json", json.dumps({"schema": "other"}), "",
        _line("2", "alice", "physics", None),  # slurmdbd was away: the record's own time counts
        _line("1", "alice", "physics", "2026-01-05T00:00:00+00:00"),  # job 1 requeued: its second run
    ])
    assert log.unreadable_lines == 2
    assert [(r["job_id"], r["runs"]) for r in select(log.records)] == [("1", 2), ("3", 1), ("2", 1)]
    assert select(log.records)[0]["submitted"] == "2026-01-01T00:00:00+00:00"  # the original submission
    jan2 = int(datetime(2026, 1, 2, tzinfo=UTC).timestamp())
    assert [r["job_id"] for r in select(log.records, since=jan2)] == ["3", "2"]
    assert [r["job_id"] for r in select(log.records, until=jan2)] == ["1"]
    assert [r["job_id"] for r in select(log.records, users=["alice"])] == ["1", "2"]
    assert [r["job_id"] for r in select(log.records, accounts=["climate"])] == ["3"]


def test_append_is_one_line_per_record(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    append_record(log, {"schema": SCHEMA, "job_name": 'evil"}\n{"schema": "hpcai-audit-v1", "user": "root"}'})
    append_record(log, {"schema": SCHEMA, "job_id": "2"})
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and len(parse_log(lines).records) == 2
    assert oct(log.stat().st_mode & 0o777) == "0o640"


def test_append_never_follows_a_link(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "audit.jsonl").symlink_to(target)
    with pytest.raises(OSError):
        append_record(tmp_path / "audit.jsonl", {"schema": SCHEMA})
    assert target.read_text() == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file of another owner")
def test_append_refuses_a_file_of_another_owner(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text("")
    os.chown(log, 65534, 65534)
    with pytest.raises(ConfigError, match="regular file of uid 0"):
        append_record(log, {"schema": SCHEMA})


def test_batch_script_from_recorded_sacct() -> None:
    from hpc_aidc.scheduler.audit import parse_batch_script

    script = parse_batch_script((RECORDED / "sacct_batch_script.txt").read_text())
    assert script == "#!/bin/sh\n# This script was created by sbatch --wrap.\n\ntrue\n"
    assert parse_batch_script((RECORDED / "sacct_batch_script_none.txt").read_text()) is None  # srun job
    assert parse_batch_script("") is None


def test_record_of_a_job_that_never_ran() -> None:
    from hpc_aidc.scheduler.audit import unstarted_record
    from hpc_aidc.scheduler.parse import SACCT_DELIMITER, parse_sacct

    row = SACCT_DELIMITER.join(["41", "41", "held", "bob", "climate", "gpu", "normal", "CANCELLED by 0", "0:0",
                                "00:00:00", "00:30:00", "1", "None assigned", "", "billing=1",
                                "2026-01-02T03:04:05", "2026-01-02T03:04:06", "2026-01-02T03:04:06", "/tmp", "", ""])
    (r,) = parse_sacct(row + "\n")
    record = unstarted_record(r, 1002, "#!/bin/sh\ntrue\n", datetime(2026, 1, 2, 4, tzinfo=UTC))
    assert record["never_ran"] is True and record["user"] == "bob" and record["uid"] == 1002
    assert record["account"] == "climate" and record["job_id"] == "41" and record["via_hpcai"] is False
    assert record["script_sha256"] == hashlib.sha256(b"#!/bin/sh\ntrue\n").hexdigest()


MINIMAL_SITE = """
[cluster]
job_root = "{root}/jobs"
energy_store = "{root}/energy"
scratch = "{root}/scratch"
{audit}
[partitions.gpu]
nodes = 1
gpus_per_node = 0
cpus_per_node = 2
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the admin's profile must be root's (as root: no admin lookup)")
def test_cli_errors_are_clean(hpcai: RunHpcai, tmp_path: Path) -> None:
    run = hpcai
    tmp_path.chmod(0o755)
    bare = tmp_path / "bare.toml"
    bare.write_text(MINIMAL_SITE.format(root=tmp_path, audit=""))
    assert_clean_error(run("--site", str(bare), "admin", "audit"), "audit_log")
    audited = tmp_path / "audited.toml"
    audited.write_text(MINIMAL_SITE.format(root=tmp_path, audit=f'audit_log = "{tmp_path}/audit.jsonl"'))
    assert_clean_error(run("--site", str(audited), "admin", "audit-record", env={"SLURM_JOB_ID": ""}), "SLURM_JOB_ID")
    assert not (tmp_path / "audit.jsonl").exists()
    listing = run("--site", str(audited), "admin", "audit", "--json")  # no job has ended yet: empty, not an error
    assert listing.returncode == 0 and listing.stdout.strip() == "[]"


# -- the sweep of jobs that never ran: bounded per epilog, each job once --------------------------------------

def _never_ran(job: int, end: datetime, user: str = "alice") -> str:
    from hpc_aidc.scheduler.parse import SACCT_DELIMITER

    stamp = end.astimezone().strftime("%Y-%m-%dT%H:%M:%S")  # sacct prints local time
    return SACCT_DELIMITER.join([str(job), str(job), "held", user, "physics", "gpu", "normal", "CANCELLED by 0",
                                 "0:0", "00:00:00", "00:30:00", "1", "None assigned", "", "billing=1", stamp, "None",
                                 stamp, "/tmp", "", ""])


class FakeSlurmdbd:
    """query_jobs and `sacct --batch-script` over a fixed set of jobs cancelled while pending (as slurmdbd
    answers them: every row whose end falls in the window), counting the script lookups."""

    def __init__(self, jobs: dict[int, datetime]) -> None:
        from hpc_aidc.scheduler.parse import parse_sacct

        self.rows = parse_sacct("".join(_never_ran(j, end) + "\n" for j, end in jobs.items()))
        self.lookups: list[str] = []

    def query_jobs(self, *, since: str, until: str, **_: object) -> list[object]:
        lo, hi = (datetime.fromisoformat(t) for t in (since, until))  # local time, as sacct's rows
        return [r for r in self.rows if r.end is not None and lo <= r.end <= hi]

    def run_slurm(self, argv: list[str], **_: object) -> object:
        import subprocess

        if argv[1:] == ["--version"]:
            return subprocess.CompletedProcess(argv, 0, stdout="slurm 22.05.8\n")
        self.lookups.append(argv[-1])
        return subprocess.CompletedProcess(argv, 0, stdout=f"Batch Script for {argv[-1]}\n----\n#!/bin/sh\ntrue\n\n")


def _sweep_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, jobs: dict[int, datetime]) -> FakeSlurmdbd:
    from hpc_aidc.scheduler import audit

    dbd = FakeSlurmdbd(jobs)
    monkeypatch.setattr(audit, "query_jobs", dbd.query_jobs)
    monkeypatch.setattr(audit, "run_slurm", dbd.run_slurm)
    return dbd


def _log_ids(log: Path) -> list[str]:
    return [json.loads(line)["job_id_raw"] for line in log.read_text().splitlines()]


def test_a_flood_is_swept_in_bounded_steps_each_job_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from datetime import timedelta

    from hpc_aidc.scheduler.audit import sweep_never_ran

    now = datetime.now(UTC).replace(microsecond=0)
    # 230 jobs cancelled within three seconds (many in the same second), ids not in end order
    jobs = {1000 + i: now - timedelta(minutes=10) + timedelta(seconds=(i * 7) % 3) for i in range(230)}
    dbd = _sweep_setup(monkeypatch, tmp_path, jobs)
    log = tmp_path / "audit.jsonl"
    (tmp_path / "audit.jsonl.cursor").write_text(f"{int((now - timedelta(hours=1)).timestamp())}\n")  # older form
    steps = []
    for _ in range(6):
        sweep = sweep_never_ran(log, now, max_jobs=50, max_seconds=60)
        steps.append((len(sweep.records), sweep.left))
    assert steps == [(50, 180), (50, 130), (50, 80), (50, 30), (30, 0), (0, 0)]
    assert sorted(_log_ids(log)) == sorted(str(j) for j in jobs)  # every job once
    assert sorted(dbd.lookups) == sorted(str(j) for j in jobs)    # and looked up once


def test_the_sweep_stops_at_its_time_budget_and_the_next_goes_on(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    from datetime import timedelta

    from hpc_aidc.scheduler.audit import sweep_never_ran

    now = datetime.now(UTC).replace(microsecond=0)
    jobs = {2000 + i: now - timedelta(minutes=5) for i in range(10)}
    _sweep_setup(monkeypatch, tmp_path, jobs)
    log = tmp_path / "audit.jsonl"
    ticks = iter(range(100))
    first = sweep_never_ran(log, now, max_jobs=100, max_seconds=3.5, clock=lambda: float(next(ticks)))
    assert (len(first.records), first.left) == (3, 7)  # one clock tick per job: three fit in 3.5 s
    rest = sweep_never_ran(log, now, max_jobs=100, max_seconds=60)
    assert len(rest.records) == 7 and sorted(_log_ids(log)) == sorted(str(j) for j in jobs)


def test_a_sweep_killed_after_a_line_does_not_record_it_again(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    from datetime import timedelta

    from hpc_aidc.scheduler.audit import append_record, format_cursor, sweep_never_ran, unstarted_record

    now = datetime.now(UTC).replace(microsecond=0)
    jobs = {3000 + i: now - timedelta(minutes=5) for i in range(4)}
    dbd = _sweep_setup(monkeypatch, tmp_path, jobs)
    log = tmp_path / "audit.jsonl"
    first = sweep_never_ran(log, now, max_jobs=1, max_seconds=60)
    assert _log_ids(log) == ["3000"]
    # killed between the line of 3001 and its cursor: the line is there, the cursor still at 3000
    (row,) = [r for r in dbd.rows if r.job_id_raw == "3001"]
    append_record(log, unstarted_record(row, None, None, now))
    cursor = (tmp_path / "audit.jsonl.cursor").read_text()
    assert cursor == format_cursor((int(jobs[3000].timestamp()), 3000)) and first.left == 3
    sweep_never_ran(log, now, max_jobs=10, max_seconds=60)
    assert sorted(_log_ids(log)) == ["3000", "3001", "3002", "3003"]


def test_a_sweep_never_waits_for_another(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import fcntl
    from datetime import timedelta

    from hpc_aidc.scheduler.audit import sweep_never_ran

    now = datetime.now(UTC).replace(microsecond=0)
    _sweep_setup(monkeypatch, tmp_path, {4000: now - timedelta(minutes=5)})
    log = tmp_path / "audit.jsonl"
    with (tmp_path / "audit.jsonl.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = sweep_never_ran(log, now)
    assert busy.busy and busy.records == [] and not log.exists()
    assert [r["job_id_raw"] for r in sweep_never_ran(log, now).records] == ["4000"]


def test_cursor_forms() -> None:
    from hpc_aidc.scheduler.audit import format_cursor, parse_cursor, recorded_never_ran

    assert parse_cursor("1700000000\n") == (1699999999, 1 << 62)  # the older form: before that second
    assert parse_cursor(format_cursor((1700000000, 42))) == (1700000000, 42)
    assert parse_cursor("") is None and parse_cursor("x 1") is None and parse_cursor("1 2 3") is None
    line = json.dumps({"schema": SCHEMA, "job_id_raw": "7", "never_ran": True})
    other = json.dumps({"schema": SCHEMA, "job_id_raw": "8"})
    assert recorded_never_ran(f"{line}\n{other}\n".encode(), whole=True) == {"7"}
    assert recorded_never_ran(f"{line}\n{other}\n".encode(), whole=False) == set()  # a cut first line
