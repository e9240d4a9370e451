"""A training job whose job directory fills up at its second checkpoint, on the real dev cluster: the job
directory is a small tmpfs. The job stops with one line that `hpcai status` shows, the partial checkpoint
is removed and `latest` stays on the first; after the space is freed and the job requeued, it resumes and
ends COMPLETED with exactly the losses of an uninterrupted run (also when an earlier run left submitit's
temporary result file behind)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_kit import release_requeued
from conftest import HPCAI, wait_until

from hpc_aidc.formats.checkpoint_layout import tag_for
from hpc_aidc.spec.memory import checkpoint_bytes
from hpc_aidc.spec.train import parse_train_config

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.usefixtures("cluster")]

CONFIG = """
[model]
preset = "tiny"
n_layer = 2
[optimizer]
warmup_steps = 5
[train]
max_steps = 30
micro_batch = 8
zero = 2
[checkpoint]
every = 10
keep_last = 2
"""
RUNNING = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "REQUEUE_HOLD", "REQUEUE_FED"}


def _hpcai(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HPCAI, *args], capture_output=True, text=True, cwd="/tmp", check=False,
                          env={**os.environ, **(env or {})})


def _submit(config: Path, root: Path | None) -> tuple[dict[str, Any], str]:
    env = {"HPCAI_JOB_ROOT": str(root)} if root else {}
    proc = _hpcai("submit", "train", "-N", "2", "--ntasks-per-node", "1", "-A", "physics", "--config", str(config),
                  "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def _status(job_id: str, root: Path | None = None) -> dict[str, Any]:
    env = {"HPCAI_JOB_ROOT": str(root)} if root else {}
    proc = _hpcai("status", job_id, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def _wait(job_id: str, root: Path | None = None, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _status(job_id, root)
        if status["state"] not in RUNNING and status["partition"]:
            return status
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not end: {status}")


def _losses(folder: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def small_filesystem() -> Iterator[Path]:
    """A tmpfs that holds the job's files and one and a half checkpoints."""
    each = checkpoint_bytes(parse_train_config({"model": {"preset": "tiny", "n_layer": 2}}))
    mount = Path(tempfile.mkdtemp(prefix="hpcai-full-", dir="/tmp"))
    size = int(1.5 * each) + (2 << 20)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=1777", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=False)
    mount.rmdir()


def test_full_filesystem_stops_cleanly_and_a_requeue_completes(small_filesystem: Path, tmp_path: Path,
                                                               hpcai: Any) -> None:
    config = tmp_path / "train.toml"
    config.write_text(CONFIG)
    reference, _ = _submit(config, None)
    job, warning = _submit(config, small_filesystem)
    # warned at submission: 1.5 checkpoints of room where keep_last + 1 = 3 may be needed; submitted anyway
    assert "hpcai: warning: " in warning and "less than the 3 checkpoints" in warning
    job_id, folder = job["job_id"], Path(job["folder"])

    failed = _wait(job_id, small_filesystem)
    assert failed["state"] == "FAILED", failed
    problem = failed["problem"]
    assert problem.startswith(f"Expected to write checkpoint {tag_for(20)} in {folder / 'checkpoints'}. Got "), problem
    assert "Got 'No space left on device" in problem  # torch's writer does not say so; the filesystem does
    assert f"The latest complete checkpoint is {tag_for(10)}" in problem
    assert problem.endswith(f"then run `scontrol requeue {job_id}` to resume.")
    text = hpcai("status", job_id, env={"HPCAI_JOB_ROOT": str(small_filesystem)}).stdout
    assert f"problem:       {problem}\n" in text
    ckpt = folder / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == tag_for(10)
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == [tag_for(10)]  # the partial one is gone
    log = (folder / f"{job_id}_0_log.out").read_text()
    assert "Traceback" not in log and f"hpcai: error: {problem}" in log

    # What a run that died while submitit saved its result leaves (the bug this guards against): the
    # requeued run must still end COMPLETED.
    for task in (0, 1):
        (folder / f"{job_id}_{task}_result.pkl.save_tmp").write_bytes(b"")
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_filesystem)], check=True)  # space freed
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    release_requeued(job_id)
    # slurmdbd records the new run a moment after slurmctld starts it: until then sacct still says FAILED
    wait_until("the requeued run in accounting", lambda: _status(job_id, small_filesystem)["state"] != "FAILED", 120)

    done = _wait(job_id, small_filesystem)
    assert done["state"] == "COMPLETED", (done, (folder / f"{job_id}_0_log.out").read_text()[-3000:])
    assert done["problem"] is None and done["progress"]["restarts"] == 1
    assert not list(folder.glob("*.save_tmp"))
    ref = _wait(reference["job_id"])
    assert ref["state"] == "COMPLETED"
    ref_losses = _losses(Path(reference["folder"]))
    assert _losses(folder) == ref_losses and max(ref_losses) == 30  # the same loss curve, bitwise
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["final_loss"] == ref_losses[30] and summary["restarts"] == 1
