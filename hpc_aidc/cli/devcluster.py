"""`hpcai devcluster up | down | status`: wraps slurm/devcluster/*.sh (they need root)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from hpc_aidc.errors import ConfigError

SCRIPTS = Path(__file__).resolve().parents[2] / "slurm" / "devcluster"


def _run(script: str) -> None:
    path = SCRIPTS / script
    if not path.exists():
        raise ConfigError(
            f"Expected the dev cluster scripts at {SCRIPTS}. Got none: the dev cluster runs from a source "
            "checkout (pip install -e .)."
        )
    sys.exit(subprocess.run(["bash", str(path)], check=False).returncode)


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
