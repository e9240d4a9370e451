"""The task function of `hpcai submit run`: each srun task runs the user's command, argv as given
(never through a shell, so no argument is ever interpreted)."""

from __future__ import annotations

import subprocess
import sys
import threading


class CommandFailed(RuntimeError):
    """The user's command exited non-zero; raising makes submitit mark the task, and so the job, failed."""


def run_command(argv: list[str]) -> int:
    from hpc_aidc.node.environment import capture_in_task
    from hpc_aidc.render.environment import redact_argv

    # Task 0 records the job's environment (importing torch takes a second or two) beside the command,
    # not before it; the task ends only once the record is written.
    capture = threading.Thread(target=capture_in_task, args=({"command": redact_argv(argv)},), daemon=True)
    capture.start()
    sys.stdout.flush()
    returncode = subprocess.run(argv, check=False).returncode
    capture.join()
    if returncode != 0:
        raise CommandFailed(f"command {argv[0]!r} exited with code {returncode}")
    return returncode
