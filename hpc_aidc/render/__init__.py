"""Pure renderers: specs to submitit parameters, sbatch text and config files. No I/O, no clock."""
