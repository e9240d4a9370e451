"""`hpcai devcluster up | down | status`: wraps the packaged slurm/devcluster/*.sh (they need root)."""

from __future__ import annotations

import os
import subprocess
import sys

import click


def _run(script: str) -> None:
    from hpc_aidc.assets import asset_path

    path = asset_path("slurm", "devcluster", script)
    # The dev cluster's Slurm scripts run the Python running this command (it must be root's: up.sh installs
    # the admin kit with it, and `hpcai admin install` refuses one that others can write).
    env = {**os.environ, "HPCAI_DEV_PYTHON": os.environ.get("HPCAI_DEV_PYTHON", sys.executable)}
    sys.exit(subprocess.run(["bash", str(path)], env=env, check=False).returncode)


@click.group()
def devcluster() -> None:
    """A real Slurm 22.05 on this machine: slurmctld, 4 slurmd (n1..n4, 4 GPUs each as GRES), slurmdbd."""


@devcluster.command()
def up() -> None:
    """Install what is missing and start every daemon (idempotent)."""
    _run("up.sh")


@devcluster.command()
def down() -> None:
    """Stop every daemon the dev cluster started, by pid."""
    _run("down.sh")


@devcluster.command()
def status() -> None:
    """Which daemons run; sinfo when they all do."""
    _run("status.sh")
