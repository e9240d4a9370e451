"""A checkpoint write that fails (a full filesystem, a quota) stops the job cleanly: the partial tag is
removed, `latest` still names the last complete checkpoint, one line says what to do; a rerun resumes
from there and ends exactly like an uninterrupted run. Runs the real trainer in this process (DeepSpeed,
gloo, one rank) with the failure injected into DeepSpeed's checkpoint writer."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hpc_aidc.formats.checkpoint_layout import latest_tag, space_warning, tag_for
from hpc_aidc.node.checkpoint import FAILED_EVENT, WriteGuard, remove_incomplete, write_error
from hpc_aidc.render.progress import last_problem, read_metrics
from hpc_aidc.spec.memory import checkpoint_bytes
from hpc_aidc.spec.train import parse_train_config

DRIVER = Path(__file__).with_name("checkpoint_failure_driver.py")
CONFIG = {"model": {"preset": "tiny", "n_layer": 1}, "optimizer": {"warmup_steps": 2},
          "train": {"max_steps": 6, "micro_batch": 2, "zero": 2}, "checkpoint": {"every": 2, "keep_last": 2}}
TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"  # torch.save on a full tmpfs


def _train(folder: Path, *failure: str, restarts: int = 0) -> subprocess.CompletedProcess[str]:
    """One run of job 4242's only rank in a fresh process (as srun would start it)."""
    pytest.importorskip("deepspeed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}
    env["SLURM_RESTART_COUNT"] = str(restarts)
    return subprocess.run([sys.executable, str(DRIVER), str(folder), json.dumps(CONFIG), *failure],
                          capture_output=True, text=True, env=env, timeout=300, check=False)


def _summary(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _losses(folder: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics((folder / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("uninterrupted") / "job"
    return folder, _summary(_train(folder))


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "says"), [
    ("ENOSPC", "'No space left on device (ENOSPC)'"),
    ("EDQUOT", "'Disk quota exceeded (EDQUOT)'"),
    ("TORCH", "'the write failed ([enforce fail at inline_container.cc:672]"),
])
def test_failed_write_at_the_second_checkpoint(uninterrupted: tuple[Path, dict[str, Any]], tmp_path: Path,
                                               kind: str, says: str) -> None:
    folder = tmp_path / "job"
    proc = _train(folder, tag_for(4), kind)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]  # the job log's last line
    assert line.startswith(f"hpcai: error: Expected to write checkpoint step00000004 in {folder / 'checkpoints'}. "
                           f"Got {says}")
    assert "The latest complete checkpoint is step00000002" in line
    assert line.endswith("then run `scontrol requeue 4242` to resume.")
    ckpt = folder / "checkpoints"
    assert not (ckpt / tag_for(4)).exists()  # the partial tag is gone
    assert (ckpt / "latest").read_text().strip() == tag_for(2) and latest_tag(ckpt) == tag_for(2)
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == [tag_for(2)]
    records = read_metrics((folder / "metrics.jsonl").read_text().splitlines())
    message = line.removeprefix("hpcai: error: ")
    assert next(r for r in records if r.get("event") == FAILED_EVENT)["message"] == message
    assert last_problem(records) == message  # what `hpcai status` shows

    # Space freed, job requeued: the rerun resumes from step 2 and ends exactly like the uninterrupted run.
    summary = _summary(_train(folder, restarts=1))
    reference_folder, reference = uninterrupted
    assert summary["steps_this_run"] == 4 and summary["final_loss"] == reference["final_loss"]
    assert _losses(folder) == _losses(reference_folder)
    records = read_metrics((folder / "metrics.jsonl").read_text().splitlines())
    assert [r["step"] for r in records if r.get("event") == "start"] == [0, 2]
    assert last_problem(records) is None  # the rerun started: nothing to report any more
    assert latest_tag(ckpt) == tag_for(6)


def test_write_errors_are_told_apart_from_bugs() -> None:
    assert write_error(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device (ENOSPC)"
    chained = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    chained.__context__ = OSError(errno.EDQUOT, "Disk quota exceeded")  # torch.save into a file object
    assert write_error(chained) == "Disk quota exceeded (EDQUOT)"
    assert write_error(RuntimeError(TORCH_FULL)) is not None
    assert write_error(RuntimeError("CUDA error: an illegal memory access")) is None
    assert write_error(ValueError("bad state")) is None
    guard = WriteGuard()
    with pytest.raises(ValueError):
        guard.run(lambda: (_ for _ in ()).throw(ValueError("a bug")), "/x")
    assert guard.error is None
    guard.run(lambda: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")), "/a")
    guard.run(lambda: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")), "/b")
    assert (guard.error, guard.path) == ("No space left on device (ENOSPC)", "/a")  # the first one wins


def test_torchs_unexplained_write_failure_on_a_full_filesystem(monkeypatch: pytest.MonkeyPatch) -> None:
    class Vfs:
        f_frsize, f_bavail = 4096, 3

    monkeypatch.setattr(os, "statvfs", lambda path: Vfs)
    guard = WriteGuard()
    guard.run(lambda: (_ for _ in ()).throw(RuntimeError(TORCH_FULL)), "/jobs/u/1/checkpoints/step00000004/x.pt")
    assert guard.error == f"No space left on device (12.0 KiB free; the write failed ({TORCH_FULL}))"
    Vfs.f_bavail = 1 << 30
    roomy = WriteGuard()
    roomy.run(lambda: (_ for _ in ()).throw(RuntimeError(TORCH_FULL)), "/x.pt")
    assert roomy.error == f"the write failed ({TORCH_FULL})"  # not a full filesystem: said as it is


@pytest.mark.parametrize("message", [
    "basic_ios::clear: iostream error",  # torch.save closing its archive, with Debian sid's libstdc++
    "some wording a later torch may choose",
])
def test_any_runtime_error_of_a_write_on_a_full_filesystem_is_a_failed_write(monkeypatch: pytest.MonkeyPatch,
                                                                            message: str) -> None:
    class Vfs:
        f_frsize, f_bavail = 4096, 0

    monkeypatch.setattr(os, "statvfs", lambda path: Vfs)
    guard = WriteGuard()
    guard.run(lambda: (_ for _ in ()).throw(RuntimeError(message)), "/jobs/u/1/checkpoints/step00000004/rng.pt")
    assert guard.error == f"No space left on device (0 B free; the write failed ({message}))"
    Vfs.f_bavail = 1 << 30  # with room to spare, only torch's known write failures are write failures
    roomy = WriteGuard()
    if "iostream" in message:
        roomy.run(lambda: (_ for _ in ()).throw(RuntimeError(message)), "/x.pt")
        assert roomy.error == f"the write failed ({message})"
    else:
        with pytest.raises(RuntimeError):
            roomy.run(lambda: (_ for _ in ()).throw(RuntimeError(message)), "/x.pt")
        assert roomy.error is None


def test_a_half_written_tag_left_by_a_killed_run_is_removed_at_start(tmp_path: Path) -> None:
    for step in (2, 4, 6):
        (tmp_path / tag_for(step)).mkdir()
    (tmp_path / tag_for(2) / "COMPLETE").write_text("ok\n")
    (tmp_path / tag_for(4) / "COMPLETE").write_text("ok\n")
    (tmp_path / "latest").write_text(tag_for(4) + "\n")
    (tmp_path / tag_for(6) / "mp_rank_00_model_states.pt").write_bytes(b"partial")
    remove_incomplete(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", tag_for(2), tag_for(4)]
    remove_incomplete(tmp_path / "missing")  # a first run has no checkpoints yet


def test_checkpoint_size_matches_what_deepspeed_writes() -> None:
    # Measured here (tiny model, 470,528 parameters): model + optimizer files of one checkpoint.
    measured = {(0, "fp32"): 5682935, (2, "fp32"): 7541676, (3, "fp32"): 5664284, (0, "bf16"): 6632653,
                (2, "bf16"): 6600670, (3, "bf16"): 5664334}
    for (zero, precision), size in measured.items():
        config = parse_train_config({"model": {"preset": "tiny", "n_layer": 2},
                                     "train": {"zero": zero, "precision": precision}})
        assert config.model.n_params == 470_528
        assert abs(checkpoint_bytes(config) - size) / size < 0.01, (zero, precision)


def test_space_warning_when_keep_last_plus_one_do_not_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_train_config({"model": {"preset": "7b"}, "checkpoint": {"keep_last": 2}})
    each = checkpoint_bytes(config)

    class Vfs:
        f_frsize = 4096
        f_bavail = (3 * each - 1) // 4096

    monkeypatch.setattr(os, "statvfs", lambda path: Vfs)
    warning = space_warning(tmp_path / "not-yet" / "user", config)
    assert warning is not None and "\n" not in warning
    assert "less than the 3 checkpoints of ~" in warning and "keep_last = 2" in warning
    Vfs.f_bavail = 3 * each // 4096 + 1
    assert space_warning(tmp_path, config) is None


def test_stale_submitit_result_of_an_earlier_run_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit refuses to save a result while `<job>_<task>_result.pkl.save_tmp` exists ("A temporary
    saved file already exists"): a rerun of the job removes its own task's leftover, and only that."""
    from hpc_aidc.node.train.start import remove_stale_result_tmp

    assert remove_stale_result_tmp() is None or "SUBMITIT_FOLDER" in os.environ
    job = tmp_path / "77"
    job.mkdir()
    mine, other = job / "77_1_result.pkl.save_tmp", job / "77_0_result.pkl.save_tmp"
    for path in (mine, other, job / "77_1_result.pkl"):
        path.write_bytes(b"")
    for key, value in {"SUBMITIT_FOLDER": str(tmp_path / "%j"), "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "77",
                       "SLURM_PROCID": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert remove_stale_result_tmp() == mine
    assert not mine.exists() and other.exists() and (job / "77_1_result.pkl").exists()
    assert remove_stale_result_tmp() is None


def test_status_shows_the_problem_only_until_a_rerun_starts() -> None:
    lines = [json.dumps(r) for r in (
        {"event": "start", "step": 0}, {"step": 1, "max_steps": 6, "loss": 5.0},
        {"event": FAILED_EVENT, "message": "Expected to write checkpoint ... requeue 4242` to resume."})]
    assert last_problem(read_metrics(lines)) == "Expected to write checkpoint ... requeue 4242` to resume."
    assert last_problem(read_metrics([*lines, json.dumps({"event": "start", "step": 2})])) is None
    assert last_problem([]) is None
