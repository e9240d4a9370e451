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
