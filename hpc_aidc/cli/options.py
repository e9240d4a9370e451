"""Resource options shared by every `hpcai submit` command."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

# Plain ints: range checks live in spec/, whose messages say what to do.


def resource_options(default_job_name: str) -> Callable[[F], F]:
    def decorate(f: F) -> F:
        options = [
            click.option("--nodes", "-N", type=int, default=None, help="Number of nodes [1]."),
            click.option("--ntasks-per-node", type=int, default=None,
                         help="Tasks (ranks) per node [one per GPU, else 1]."),
            click.option("--gpus-per-node", "-G", type=int, default=None, help="GPUs per node [0]."),
            click.option("--gpu-type", default=None, help="GPU GRES type, e.g. h100 [partition's type]."),
            click.option("--cpus-per-task", "-c", type=int, default=None, help="CPUs per task [1]."),
            click.option("--account", "-A", default=None, help="Slurm account (project) to charge."),
            click.option("--partition", "-p", default=None, help="Partition [site default]."),
            click.option("--qos", "-q", default=None, help="Quality of service [site default]."),
            click.option("--time", "-t", "time_limit", default=None,
                         help="Time limit: MM, HH:MM:SS, D-HH:MM:SS [site default]."),
            click.option("--job-name", "-J", default=default_job_name, show_default=True, help="Job name."),
            click.option("--dry-run", is_flag=True,
                         help="Print the exact sbatch script (and check it with sbatch --test-only); submit nothing."),
            click.option("--test-only/--no-test-only", default=True, show_default=True,
                         help="With --dry-run: ask slurmctld whether the job would be accepted."),
            click.option("--wait", is_flag=True, help="Wait for the job to end; exit non-zero if it failed."),
            click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON."),
        ]
        for option in reversed(options):
            f = option(f)
        return f

    return decorate
