"""The only code that talks to Slurm: submitit executors and batched sacct/squeue/sacctmgr calls."""
