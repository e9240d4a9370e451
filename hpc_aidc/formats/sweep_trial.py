"""A sweep's trial files: SWEEP_DIR/trials/<index>.json, written at submission (the resolved, validated
config of each trial) and read by the array task that trains it (hpc_aidc.node.sweep_trial)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TRIALS = "trials"  # SWEEP_DIR/trials/<index>.json


def trial_path(sweep_dir: Path, index: int) -> Path:
    return sweep_dir / TRIALS / f"{index}.json"


def read_trial(sweep_dir: Path, index: int) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(trial_path(sweep_dir, index).read_text())
    return record
