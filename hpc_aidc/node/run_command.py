"""The task function of `hpcai submit run`: each srun task runs the user's command, argv as given
(never through a shell, so no argument is ever interpreted)."""

from __future__ import annotations

import subprocess
import sys


class CommandFailed(RuntimeError):
    """The user's command exited non-zero; raising makes submitit mark the task, and so the job, failed."""


def run_command(argv: list[str]) -> int:
    sys.stdout.flush()
    returncode = subprocess.run(argv, check=False).returncode
    if returncode != 0:
        raise CommandFailed(f"command {argv[0]!r} exited with code {returncode}")
    return returncode
