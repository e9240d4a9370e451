"""Per-job GPU/CPU energy: NVML and RAPL sensors, the per-node sampler, its records, the job summary and
its lowercase-safe encoding for Slurm's AdminComment. Pure modules (gpus, series, summary, acct, launch)
do no I/O; nvml, rapl, store and sampler sit at the edges. Nothing here imports pynvml or numpy at import
time, so the CLI root stays fast."""
