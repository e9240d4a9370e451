"""The start of a training rank's process, run by submitit in every srun task: clear what an earlier
run of the job left, take over Slurm's warning signal, set the rank's environment from Slurm (or MPI),
apply DeepSpeed's start-up workarounds, record the environment, then hand over to the Trainer."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from hpc_aidc.formats.train_task import TrainTask
from hpc_aidc.node.train.deepspeed_patches import (
    import_muon_without_compiling,
    quiet_renamed_collectives,
    skip_inference_shm_kernel,
)
from hpc_aidc.node.train.run_timing import StartupPhases
from hpc_aidc.node.train.trainer import SlurmWarning, Trainer


def train_task(task: TrainTask) -> dict[str, Any]:
    """Entry point run by submitit in every srun task."""
    phases = StartupPhases()
    remove_stale_result_tmp()
    # submitit installed its own USR2 handler; ours checkpoints collectively at a step boundary instead
    # of inside the signal handler, where ranks would be at different points.
    signal.signal(signal.SIGUSR2, SlurmWarning.handler)
    if task.launcher == "mpirun":
        from hpc_aidc.node.mpi_env import mpi_rank_info

        info = mpi_rank_info()
    else:
        from hpc_aidc.node.slurm_env import rank_info

        info = rank_info(os.environ)
    os.environ.update(info.torch_env())
    os.environ.update(dict(task.env))
    quiet_renamed_collectives()
    skip_inference_shm_kernel()
    phases.done("import_deepspeed")
    import_muon_without_compiling()
    phases.done("import_dynamo")
    folder = Path(task.folder_pattern.replace("%j", info.job_id))
    from hpc_aidc.node.environment import capture_in_task

    capture_in_task(task.config.to_dict(), folder, first=info.rank == 0)  # after torch/DeepSpeed loaded
    return Trainer(task.config, folder, info.rank, info.world_size, info.local_rank,
                   local_world=info.local_world_size).run(phases)


def remove_stale_result_tmp() -> Path | None:
    """Remove this task's leftover submitit temporary result from an earlier run of the same job.

    submitit saves a task's result (or its error) to `<jobid>_<task>_result.pkl.save_tmp`, then renames it,
    and refuses to save when that temporary file already exists ("A temporary saved file already exists").
    A run that died while writing it (a full filesystem) leaves it behind, and the requeued run, which has
    the same job id and task, then FAILs after training to the end. Only this task writes that file, and
    only when it ends, so removing it at start is safe. Returns the removed path (None if none)."""
    if "SUBMITIT_FOLDER" not in os.environ:
        return None  # not started by submitit
    import submitit

    try:
        result = submitit.JobEnvironment().paths.result_pickle  # the very path submitit will save to
    except (KeyError, ValueError, RuntimeError):
        return None
    stale = result.with_suffix(result.suffix + ".save_tmp")  # as submitit's utils.temporary_save_path names it
    try:
        stale.unlink()
    except FileNotFoundError:
        return None
    except OSError as exc:
        print(f"hpcai: could not remove submitit's stale {stale}: {exc.strerror}", file=sys.stderr)
        return None
    return stale
