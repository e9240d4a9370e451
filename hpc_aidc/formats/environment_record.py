"""A job's environment.json (what the runtime loaded, written by task 0 at every start: node/environment.py),
and where it lies: the job directory, or <out>/environment/<jobid>.json for an inference run's array tasks,
which share one output directory. Read by `hpcai env` and `hpcai status --env` on the login side."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_FILE = "environment.json"
# Batch inference: array tasks share one output directory, so each writes <out>/environment/<jobid>.json.
INFER_ENV_DIR = "environment"


def write_environment(folder: Path, record: Mapping[str, Any], name: str = ENV_FILE) -> Path:
    from hpc_aidc.fsutil import DIR_FLAGS, atomic_write_at

    folder.mkdir(mode=0o750, exist_ok=True)  # an inference run's environment/ folder, at its first task
    dir_fd = os.open(folder, DIR_FLAGS)
    try:
        # 0640: the variables, even redacted, are the user's business.
        atomic_write_at(dir_fd, name, (json.dumps(record, indent=2, default=str) + "\n").encode(),
                        mode=0o640, durable=False)
    finally:
        os.close(dir_fd)
    return folder / name


def read_environment(folder: Path, name: str = ENV_FILE) -> dict[str, Any] | None:
    """The job's environment.json, None when it has none (not started yet, or not an hpcai job)."""
    try:
        value = json.loads((folder / name).read_text())
    except FileNotFoundError:
        return None
    return value if isinstance(value, dict) else None
