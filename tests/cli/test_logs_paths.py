"""Where `hpcai logs` finds a task log (issue 24): a job's own folder, an inference run's folder for an
array task (`715_3`), a data pack's; every task of a whole array (`715`) with a header; links in the
user's folders are not followed. Pure: a job root in tmp_path and Slurm's answers stood in for (the
cluster test is test_infer_cluster.py::test_logs_of_an_inference_array_task)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from hpc_aidc.cli.jobs import locate_task_log
from hpc_aidc.errors import AccessError
from hpc_aidc.ids import current_user
from hpc_aidc.scheduler import accounting
from hpc_aidc.scheduler.parse import AccountingRecord

USER = current_user()  # _open_job_file reads only the job user's own files: ours here


def _record(job_id: str, state: str = "COMPLETED", raw: str | None = None) -> AccountingRecord:
    return AccountingRecord(
        job_id=job_id, job_id_raw=raw or job_id.split("_")[0], name="hpcai-infer", user=USER, account="physics",
        partition="debug", qos="normal", state=state, exit_code="0:0", elapsed_s=1, time_limit="10:00",
        nnodes=1, nodelist="n1", alloc_tres={}, req_tres={}, submit=None, start=None, end=None, workdir="/tmp",
        admin_comment="", comment="")


def _log(root: Path, *parts: str, text: str = "hello\n") -> Path:
    path = root.joinpath(USER, *parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    (tmp_path / "jobs" / USER).mkdir(parents=True)
    return tmp_path / "jobs"


def test_a_job_log_is_in_the_jobs_own_folder(root: Path) -> None:
    _log(root, "42", "42_1_log.out")
    assert locate_task_log(root, USER, "42", 1) == (USER, "42", "42_1_log.out")
    assert locate_task_log(root, USER, "42", 0) is None
    assert locate_task_log(root, USER, "43", 0) is None  # no such folder: not there (yet)


def test_an_inference_array_task_log_is_in_its_runs_folder(root: Path) -> None:
    _log(root, "infer-0123456789abcdef", "715_0_batch.out")
    _log(root, "infer-0123456789abcdef", "715_3_0_log.out")
    _log(root, "infer-fedcba9876543210", "716_0_0_log.out")
    assert locate_task_log(root, USER, "715_3", 0) == (USER, "infer-0123456789abcdef", "715_3_0_log.out")
    assert locate_task_log(root, USER, "716_0", 0) == (USER, "infer-fedcba9876543210", "716_0_0_log.out")
    assert locate_task_log(root, USER, "715_3", 1) is None and locate_task_log(root, USER, "715_2", 0) is None


def test_a_sweep_trial_keeps_its_own_folder_and_a_data_pack_task_its_packs(root: Path) -> None:
    _log(root, "715_3", "715_3_0_log.out")  # a sweep trial (task_logs=<user>/%A_%a)
    _log(root, "infer-0123456789abcdef", "715_3_0_log.out")
    assert locate_task_log(root, USER, "715_3", 0) == (USER, "715_3", "715_3_0_log.out")
    _log(root, "data-pack", "pack-20250101-000000-abcdef", "800_1_0_log.out")
    assert locate_task_log(root, USER, "800_1", 0) == (USER, "data-pack", "pack-20250101-000000-abcdef",
                                                       "800_1_0_log.out")


def test_a_reused_job_id_shows_the_newest_log(root: Path) -> None:
    old = _log(root, "infer-aaaaaaaaaaaaaaaa", "715_3_0_log.out", text="old\n")
    _log(root, "infer-bbbbbbbbbbbbbbbb", "715_3_0_log.out", text="new\n")
    os.utime(old, (1, 1))
    assert locate_task_log(root, USER, "715_3", 0) == (USER, "infer-bbbbbbbbbbbbbbbb", "715_3_0_log.out")


def test_links_in_the_users_folders_are_not_followed(root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "715_3_0_log.out").write_text("secret\n")
    (root / USER / "infer-1111111111111111").symlink_to(elsewhere)  # a run folder that is a link: not listed
    assert locate_task_log(root, USER, "715_3", 0) is None
    run = root / USER / "infer-2222222222222222"
    run.mkdir()
    (run / "715_3_0_log.out").symlink_to(elsewhere / "715_3_0_log.out")  # a log that is a link: refused
    with pytest.raises(AccessError, match="Got a link"):
        locate_task_log(root, USER, "715_3", 0)


# -- the command, with Slurm's answers stood in for -----------------------------------------------------------

def _logs(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
          records: list[AccountingRecord], array: bool, *args: str) -> tuple[int, str, str]:
    from hpc_aidc.cli.main import cli, run_command

    monkeypatch.setattr(accounting, "find_job_tasks", lambda job_id: accounting.JobTasks(records, array=array))
    site = tmp_path / "site.toml"
    site.write_text(f'[cluster]\njob_root = "{root}"\nenergy_store = "{tmp_path}/energy"\nscratch = "/tmp"\n'
                    'default_partition = "cpu"\n[partitions.cpu]\nnodes = 2\ngpus_per_node = 0\ncpus_per_node = 4\n')
    code = 0
    try:
        run_command(cli, ["--site", str(site), "logs", *args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_logs_of_one_array_task(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    _log(root, "infer-0123456789abcdef", "715_3_0_log.out", text="hpcai infer: shard 6 done\n")
    code, out, err = _logs(root, tmp_path, monkeypatch, capsys, [_record("715_3")], False, "715_3")
    assert (code, out, err) == (0, "hpcai infer: shard 6 done\n", "")
    code, out, err = _logs(root, tmp_path, monkeypatch, capsys, [_record("715_2", "PENDING")], False, "715_2")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "Expected a log 715_2_0_log.out" in err and "(state: PENDING)" in err


def test_logs_of_a_whole_array_print_every_task_with_a_header(root: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    run = "infer-0123456789abcdef"
    _log(root, run, "715_0_0_log.out", text="task zero\n")
    _log(root, run, "715_2_0_log.out", text="task two\n")
    records = [_record("715_0"), _record("715_1", "FAILED"), _record("715_2", "RUNNING"),
               _record("715_[3-5%2]", "PENDING")]
    code, out, err = _logs(root, tmp_path, monkeypatch, capsys, records, True, "715")
    assert code == 0 and err == ""
    assert out.splitlines() == [
        "==> 715_0 (COMPLETED) <==", "task zero",
        "==> 715_1 (FAILED) <==", "(no log 715_1_0_log.out)",
        "==> 715_2 (RUNNING) <==", "task two",
        "==> 715_[3-5%2] (PENDING) <==", "(not started: no log yet)",
    ]
    code, out, err = _logs(root, tmp_path, monkeypatch, capsys, records, True, "715", "--task", "1")
    assert code == 2 and "Expected a log of task 1 of at least one of the array's tasks (715_0, 715_1" in err
    code, out, err = _logs(root, tmp_path, monkeypatch, capsys, records, True, "715", "--follow")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "Got the whole array 715. Follow one task: `hpcai logs 715_0 --follow`." in err


def test_an_array_id_names_its_tasks_and_a_raw_id_one_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """find_job_tasks over sacct's rows (one call): 715's tasks in index order, the latest row of each;
    a task not started yet is found in its array's compact row; the raw id 719 of task 715_4 names that
    task alone; an unknown id is the usual error."""
    rows = [_record("715_10"), _record("715_2", "FAILED"), _record("715_2", "COMPLETED"),
            _record("715_[11-12]", "PENDING"), _record("715_4", raw="719")]
    calls: list[Any] = []

    def sacct(**kwargs: Any) -> list[AccountingRecord]:
        calls.append(kwargs)
        asked = kwargs["job_ids"][0]
        return [r for r in rows if asked.split("_")[0] == r.job_id.split("_")[0] or asked == r.job_id_raw]

    monkeypatch.setattr(accounting, "_sacct", sacct)
    monkeypatch.setattr(accounting, "queue_jobs", lambda **kwargs: [])
    whole = accounting.find_job_tasks("715")
    assert whole.array and [(r.job_id, r.state) for r in whole.records] == [
        ("715_2", "COMPLETED"), ("715_4", "COMPLETED"), ("715_10", "COMPLETED"), ("715_[11-12]", "PENDING")]
    assert len(calls) == 1
    one = accounting.find_job_tasks("715_2")
    assert not one.array and [r.job_id for r in one.records] == ["715_2"]
    waiting = accounting.find_job_tasks("715_12")  # not started: Slurm's row is 715_[11-12]
    assert not waiting.array and [(r.job_id, r.state) for r in waiting.records] == [("715_12", "PENDING")]
    raw = accounting.find_job_tasks("719")
    assert not raw.array and [r.job_id for r in raw.records] == ["715_4"]
    from hpc_aidc.errors import JobNotFoundError

    with pytest.raises(JobNotFoundError):
        accounting.find_job_tasks("999")
