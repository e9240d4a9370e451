"""Which sacct row and which energy-store key `hpcai energy show` uses: the records are stored under the
job's raw id ($SLURM_JOB_ID, sacct's JobIDRaw), which for an array task is not its display id (task 2_0
may be job 3). Pure functions, and job_with_comment on recorded sacct output (no cluster)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest

from hpc_aidc.scheduler import energy_accounting
from hpc_aidc.scheduler.energy_accounting import JOB_FIELDS, job_with_comment, pick_job_row, records_job_id

SUMMARY = "hpcai-energy-v1 nodes=n1 gpus=1 gpu_j=1416.127 runs=1"
# sacct -j 2 -X -n -P -o jobid,jobidraw,user,account,state,elapsed,nnodes,admincomment (array 2, tasks 0-1:
# task 2_1 kept the array's own id 2, task 2_0 got 3; 2_0's AdminComment is still empty)
ARRAY_ROWS = (
    "2_0|3|alice|physics|COMPLETED|00:00:03|1|\n"
    f"2_1|2|alice|physics|COMPLETED|00:00:03|1|{SUMMARY}\n"
)


def _rows(text: str) -> list[dict[str, str]]:
    return [dict(zip(JOB_FIELDS, line.split("|", len(JOB_FIELDS) - 1), strict=True)) for line in text.splitlines()]


def test_records_of_an_array_task_are_under_its_raw_id() -> None:
    assert records_job_id("2_0", "3") == "3"
    assert records_job_id("3", "3") == "3"
    assert records_job_id("17", "17") == "17"
    # no raw id from accounting (or a compact pending row's): the id asked for
    assert records_job_id("17", None) == "17"
    assert records_job_id("17", "") == "17"
    assert records_job_id("2_[0-1]", "2") == "2"
    assert records_job_id("2_0", "2_[0-1]") == "2_0"


def test_the_row_asked_for_is_picked_by_display_id_then_raw_id() -> None:
    rows = _rows(ARRAY_ROWS)
    assert pick_job_row(rows, "2_0")["jobidraw"] == "3"
    assert pick_job_row(rows, "3")["jobid"] == "2_0"
    # job 2 is task 2_1, whatever order sacct lists the tasks in
    assert pick_job_row(rows, "2")["jobid"] == "2_1"
    assert pick_job_row(list(reversed(rows)), "2")["jobid"] == "2_1"
    assert pick_job_row(rows, "99")["jobid"] == "2_1"  # nothing matches: the last row, as before


def _fake_sacct(monkeypatch: pytest.MonkeyPatch, stdout: str) -> list[Sequence[str]]:
    calls: list[Sequence[str]] = []

    def run_slurm(argv: Sequence[str], **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        asked = argv[argv.index("-j") + 1]
        # sacct -j 2_0 / -j 3 answer with the task's row only; -j 2 with every task of the array
        lines = [line for line in stdout.splitlines()
                 if asked == "2" or asked in line.split("|")[:2]]
        return subprocess.CompletedProcess(argv, 0, "".join(f"{line}\n" for line in lines), "")

    monkeypatch.setattr(energy_accounting, "run_slurm", run_slurm)
    return calls


@pytest.mark.parametrize("asked", ["2_0", "3"])
def test_job_with_comment_gives_an_array_tasks_raw_id(monkeypatch: pytest.MonkeyPatch, asked: str) -> None:
    calls = _fake_sacct(monkeypatch, ARRAY_ROWS)
    row = job_with_comment(asked)
    assert "jobidraw" in calls[0][calls[0].index("-o") + 1].split(",")
    assert row["jobid"] == "2_0" and row["jobidraw"] == "3" and row["admincomment"] == ""
    assert records_job_id(asked, row.get("jobidraw")) == "3"


def test_job_with_comment_keeps_a_separator_in_the_admin_comment(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_sacct(monkeypatch, f"17|17|alice|physics|COMPLETED|00:00:03|1|other|tool {SUMMARY}\n")
    row = job_with_comment("17")
    assert row["admincomment"] == f"other|tool {SUMMARY}" and records_job_id("17", row["jobidraw"]) == "17"


def test_an_array_task_is_modified_by_its_display_id() -> None:
    """sacctmgr's `jobid=<array id>` changes every task of the array: the last task (whose raw id is the
    array's) must be named `A_T`; other jobs and tasks by their raw id."""
    from hpc_aidc.scheduler.energy_accounting import modify_id

    assert modify_id({"jobid": "378_1", "jobidraw": "378"}, "378") == "378_1"
    assert modify_id({"jobid": "378_0", "jobidraw": "379"}, "379") == "378_0"
    assert modify_id({"jobid": "42", "jobidraw": "42"}, "42") == "42"
    assert modify_id({"jobid": "378_[0-1]", "jobidraw": "378"}, "378") == "378"  # never a compact row
    assert modify_id({"jobid": "378_1", "jobidraw": "378"}, "999") == "999"      # not the row asked for
