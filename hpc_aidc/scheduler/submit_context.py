"""What only the login node knows at submission (the submit directory's git state, the command), handed to
the job in $HPCAI_SUBMIT_CONTEXT for its environment.json: compute nodes may not have the user's checkout."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpc_aidc.formats.job_env import SUBMIT_CONTEXT_ENV
from hpc_aidc.render.environment import redact_argv

GIT_TIMEOUT_S = 5.0


def git_state(path: Path, timeout_s: float = GIT_TIMEOUT_S) -> dict[str, Any]:
    """{"commit", "dirty", "root"} of the checkout holding `path`; commit None with a reason when there is
    no git, no checkout, or git does not answer in time."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True,
                              timeout=timeout_s, check=True).stdout.strip()

    try:
        root = git("rev-parse", "--show-toplevel")
        commit = git("rev-parse", "HEAD")
        # Tracked files only: untracked outputs (logs, checkpoints) next to the code are not a change to it.
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except FileNotFoundError:
        return {"commit": None, "dirty": None, "root": None, "reason": "git is not installed"}
    except subprocess.TimeoutExpired:
        return {"commit": None, "dirty": None, "root": None, "reason": f"git did not answer in {timeout_s:g} s"}
    except subprocess.CalledProcessError as exc:
        first = (exc.stderr or "").strip().splitlines()
        return {"commit": None, "dirty": None, "root": None,
                "reason": first[0] if first else f"git exited with {exc.returncode}"}
    return {"commit": commit, "dirty": dirty, "root": root}


def submit_context(cwd: Path, argv: Sequence[str]) -> dict[str, Any]:
    """What only the login node knows at submission: the submit directory's git state, the command."""
    return {"cwd": str(cwd), "host": socket.gethostname(), "command": redact_argv(list(argv)),
            "git": git_state(cwd)}


def submit_context_env(cwd: Path | None = None, argv: Sequence[str] | None = None) -> dict[str, str]:
    """The variable for sbatch's environment: this submission's context as JSON."""
    context = submit_context(cwd or Path.cwd(), argv if argv is not None else ["hpcai", *sys.argv[1:]])
    return {SUBMIT_CONTEXT_ENV: json.dumps(context)}
