"""What `hpcai submit train` hands every srun task of a training job (pickled by submitit at submission,
read inside the allocation by hpc_aidc.node.train.train_task)."""

from __future__ import annotations

from dataclasses import dataclass

from hpc_aidc.spec.train import TrainConfig


@dataclass(frozen=True)
class TrainTask:
    config: TrainConfig
    folder_pattern: str          # <job_root>/<user>/%j
    env: tuple[tuple[str, str], ...] = ()
    launcher: str = "srun"       # srun: one srun task per rank; mpirun: ranks started by the site's MPI
