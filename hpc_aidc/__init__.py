"""hpc-aidc: AI work on Slurm GPU clusters made easy, fast and accountable."""

__version__ = "0.1.0"
