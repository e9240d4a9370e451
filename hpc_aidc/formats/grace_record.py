"""What a training run measured for its warning grace (longest step, longest checkpoint write), kept per
job shape in the user's job directory, so the next submission of the same shape asks Slurm for a grace
that covers them (spec.grace). Written by rank 0 after each checkpoint; read by `hpcai submit train`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from hpc_aidc.fsutil import atomic_write_text

# Exported into the job by `hpcai submit train`: the shape key (spec.grace.shape_key) and the grace asked for.
KEY_ENV = "HPCAI_GRACE_KEY"
GRACE_ENV = "HPCAI_SIGNAL_GRACE_S"


def record_dir(user_dir: Path) -> Path:
    """`<job_root>/<user>/.cache/grace`: beside the torch extensions cache, private like the user folder."""
    return user_dir / ".cache" / "grace"


def write_grace(user_dir: Path, key: str, step_s: float, checkpoint_s: float, needed_s: int, job_id: str) -> None:
    directory = record_dir(user_dir)
    directory.mkdir(parents=True, exist_ok=True)
    record = {"step_s": step_s, "checkpoint_s": checkpoint_s, "needed_s": needed_s, "job_id": job_id,
              "time": time.time()}
    atomic_write_text(directory / f"{key}.json", json.dumps(record) + "\n")


def read_grace(user_dir: Path, key: str) -> tuple[float, float, str] | None:
    """(longest step s, longest checkpoint write s, job id) of the last run of this shape, or None."""
    try:
        data = json.loads((record_dir(user_dir) / f"{key}.json").read_text())
        return float(data["step_s"]), float(data["checkpoint_s"]), str(data.get("job_id", "?"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
