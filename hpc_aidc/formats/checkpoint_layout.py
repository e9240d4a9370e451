"""The checkpoint layout a training job leaves in its job directory: `checkpoints/<tag>/` with a COMPLETE
marker, `latest` naming the newest complete tag, `best/` with its record. Written inside the allocation
(hpc_aidc.node.checkpoint) and read on the login side (inference from a job, space checks at submission)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpc_aidc.spec.memory import checkpoint_bytes

if TYPE_CHECKING:
    from hpc_aidc.spec.train import TrainConfig

LATEST = "latest"
COMPLETE = "COMPLETE"
# The best checkpoint (lowest validation loss) lives apart from the rotating ones, under
# checkpoints/best/<tag>/, with best.json saying its step and loss (and `latest` naming its tag, so
# DeepSpeed's own tools such as zero_to_fp32 read checkpoints/best as a checkpoint directory).
BEST = "best"
BEST_RECORD = "best.json"
def tag_for(step: int) -> str:
    return f"step{step:08d}"


def read_best(ckpt_dir: Path) -> dict[str, Any] | None:
    """The best checkpoint's record ({"step", "val_loss", "tag", ...}) when its tag is complete."""
    best_dir = ckpt_dir / BEST
    try:
        record = json.loads((best_dir / BEST_RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or not (best_dir / str(record.get("tag")) / COMPLETE).exists():
        return None
    return record


def latest_tag(ckpt_dir: Path) -> str | None:
    """The newest complete checkpoint, or None on a first run."""
    try:
        tag = (ckpt_dir / LATEST).read_text().strip()
    except FileNotFoundError:
        return None
    return tag if (ckpt_dir / tag / COMPLETE).exists() else None


def free_bytes(path: Path) -> int | None:
    """Space an unprivileged user may still write on the filesystem holding `path` (or its nearest
    existing parent), or None when that cannot be asked."""
    for candidate in (path, *path.parents):
        try:
            st = os.statvfs(candidate)
        except FileNotFoundError:
            continue
        except OSError:
            return None
        return st.f_bavail * st.f_frsize
    return None


def space_warning(directory: Path, config: TrainConfig) -> str | None:
    """One line when the filesystem of `directory` cannot hold the keep_last + 1 checkpoints a job has on
    disk while it writes a new one (the last N complete ones, plus the one being written), plus the best
    one when the job validates."""
    free = free_bytes(directory)
    each = checkpoint_bytes(config)
    best = ", plus the best one" if config.eval.every else ""
    copies = config.checkpoint.keep_last + 1 + (1 if best else 0)
    if free is None or free >= copies * each:
        return None
    return (f"{directory} has {format_bytes(free)} free, less than the {copies} checkpoints of ~{format_bytes(each)} "
            f"({format_bytes(copies * each)}) this job keeps while saving ([checkpoint] keep_last = "
            f"{config.checkpoint.keep_last}, plus the one being written{best}). Free space there or lower "
            "keep_last, or the job will stop at a checkpoint.")


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
