"""`hpcai submit train` on the nodes: every srun task is one DeepSpeed rank.

start: the rank's process start (submitit's leftovers, Slurm's warning signal, the rank's environment),
  then the Trainer; deepspeed_patches: DeepSpeed and torch start-up workarounds; trainer: the loop, its
  checkpoints, validation and requeue; step_stats: a step's loss, all-reduced and read a step later;
  run_timing: step and checkpoint times for throughput, MFU and the warning grace."""

# The package keeps these two names because jobs find them here by name: formats/node_call.py's TRAIN
# calls hpc_aidc.node.train:train_task, and submitit pickles of submissions made before they moved (jobs
# pending or requeued across an upgrade) hold hpc_aidc.node.train.train_task and .TrainTask.
from hpc_aidc.formats.train_task import TrainTask
from hpc_aidc.node.train.start import train_task

__all__ = ["TrainTask", "train_task"]
