"""Atomic checkpoints on shared storage: every rank writes its part into a new tag directory, all ranks
meet at a barrier, then rank 0 marks the tag complete and moves `latest` with an atomic rename. A
half-written checkpoint is never picked up; the last N complete ones are kept."""

from __future__ import annotations

import shutil
from pathlib import Path

from hpc_aidc.fsutil import atomic_write_text

LATEST = "latest"
COMPLETE = "COMPLETE"


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def publish(ckpt_dir: Path, tag: str, keep_last: int) -> None:
    """Rank 0, after the barrier: mark complete, move `latest`, prune old tags."""
    atomic_write_text(ckpt_dir / tag / COMPLETE, "ok\n")
    atomic_write_text(ckpt_dir / LATEST, tag + "\n")
    complete = sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and (p / COMPLETE).exists())
    for old in complete[:-keep_last]:
        if old.name != tag:
            shutil.rmtree(old, ignore_errors=True)
    for partial in (p for p in ckpt_dir.iterdir() if p.is_dir() and not (p / COMPLETE).exists()):
        if partial.name < tag:  # an interrupted save older than the newest complete one
            shutil.rmtree(partial, ignore_errors=True)


def latest_tag(ckpt_dir: Path) -> str | None:
    """The newest complete checkpoint, or None on a first run."""
    try:
        tag = (ckpt_dir / LATEST).read_text().strip()
    except FileNotFoundError:
        return None
    return tag if (ckpt_dir / tag / COMPLETE).exists() else None
