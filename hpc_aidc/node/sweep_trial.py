"""One trial of `hpcai submit sweep`: every srun task of array task i runs `python -m
hpc_aidc.node.sweep_trial SWEEP_DIR`, which trains trials/<i>.json (the resolved config written and
validated at submission) in the job directory <job_root>/<user>/<array job>_<i>, exactly as `hpcai submit
train` would: checkpoints, requeue (`scontrol requeue ARRAY_TASK`) and resume included."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from hpc_aidc.formats.sweep_trial import read_trial, trial_path
from hpc_aidc.fsutil import atomic_write_text
from hpc_aidc.spec.train import parse_train_config


def main(argv: list[str]) -> None:
    from hpc_aidc.formats.train_task import TrainTask
    from hpc_aidc.node.train.start import train_task
    from hpc_aidc.render.deepspeed_config import deepspeed_config

    sweep_dir = Path(argv[1])
    index = int(os.environ["SLURM_ARRAY_TASK_ID"])
    record = read_trial(sweep_dir, index)
    config = parse_train_config(record["config"], source=str(trial_path(sweep_dir, index)))
    user_dir = Path(record["user_dir"])
    if os.environ.get("SLURM_PROCID", "0") == "0":  # what `hpcai submit train` writes beside a job
        folder = user_dir / f"{os.environ['SLURM_ARRAY_JOB_ID']}_{index}"
        world = int(os.environ.get("SLURM_NTASKS", "1"))
        atomic_write_text(folder / "config.json", json.dumps(config.to_dict(), indent=2))
        atomic_write_text(folder / "deepspeed.json", json.dumps(deepspeed_config(config, world), indent=2))
        atomic_write_text(folder / "trial.json", json.dumps(
            {"sweep": str(sweep_dir), "index": index, "overrides": record["overrides"]}, indent=2))
    train_task(TrainTask(config=config, folder_pattern=str(user_dir / "%j"), env=tuple(record["env"].items())))


if __name__ == "__main__":
    main(sys.argv)
