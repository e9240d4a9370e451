"""Per-project usage and energy reports from Slurm accounting (pure aggregation; edges in `source`)."""
