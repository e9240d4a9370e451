"""`hpcai devcluster up | down | status [--slurm VERSION]`: wraps the packaged slurm/devcluster/*.sh (they need
root). 22.05 is this machine's own Slurm (Debian 12); 24.11 and 26.05 run the same scripts inside a Debian
trixie or sid chroot in private namespaces (slurm/devcluster/chroot.sh)."""

from __future__ import annotations

import os
import subprocess
import sys

import click

HOST_SLURM = "22.05"
CHROOT_SLURM = ("24.11", "26.05")

slurm_option = click.option(
    "--slurm", "version", type=click.Choice([HOST_SLURM, *CHROOT_SLURM]), default=HOST_SLURM, show_default=True,
    help="Slurm version: 22.05 is this machine's; 24.11 (Debian trixie) and 26.05 (sid) run in a chroot.")


def _run(script: str, *args: str, env: dict[str, str] | None = None) -> None:
    """Run a dev cluster script and exit with its status. The chroot's scripts get the caller's environment:
    chroot.sh passes only HPCAI_* on, and inside, the venv is where it is here (/opt/hpcai/venv, bound in)."""
    from hpc_aidc.assets import asset_path

    path = asset_path("slurm", "devcluster", script)
    sys.exit(subprocess.run(["bash", str(path), *args], env=env, check=False).returncode)


def _run_for(version: str, action: str, *chroot_args: str, host_env: dict[str, str] | None = None) -> None:
    """`action` on the dev cluster of `version`: the host's `<action>.sh`, or `chroot.sh VERSION <action>`."""
    if version == HOST_SLURM:
        # The host's scripts run the Python running this command (it must be root's: up.sh installs the admin
        # kit with it, and `hpcai admin install` refuses one that others can write).
        python = os.environ.get("HPCAI_DEV_PYTHON", sys.executable)
        _run(f"{action}.sh", env={**os.environ, "HPCAI_DEV_PYTHON": python, **(host_env or {})})
    else:
        _run("chroot.sh", version, action, *chroot_args)


@click.group()
def devcluster() -> None:
    """A real Slurm on this machine: slurmctld, 4 slurmd (n1..n4, 4 GPUs each as GRES), slurmdbd. Slurm 22.05
    is the machine's own; --slurm 24.11 or 26.05 runs the same cluster in a Debian chroot."""


@devcluster.command()
@slurm_option
@click.option("--cgroup", is_flag=True,
              help="Track and confine jobs with cgroups (proctrack/cgroup, task/cgroup: cores and GPU devices).")
def up(version: str, cgroup: bool) -> None:
    """Install what is missing and start every daemon (idempotent)."""
    _run_for(version, "up", "--cgroup" if cgroup else "--no-cgroup",
             host_env={"HPCAI_DEVCLUSTER_CGROUP": "1" if cgroup else "0"})


@devcluster.command()
@slurm_option
def down(version: str) -> None:
    """Stop every daemon the dev cluster started, by pid (a chroot's namespaces go with them)."""
    _run_for(version, "down")


@devcluster.command()
@slurm_option
def status(version: str) -> None:
    """Which daemons run; sinfo when they all do."""
    _run_for(version, "status")
