"""Who and which job: the one job-id validator and the one "who is the current user" (pure but for the
passwd lookup). Job ids reach file names and command lines, so they are validated here, once."""

from __future__ import annotations

import os
import pwd
import re

from hpc_aidc.errors import SpecError

# 123 (a job, or an array task's own id), 123_4 (array job 123, task 4)
_JOB_ID = re.compile(r"^[0-9]{1,12}(?:_[0-9]{1,9})?$")


def is_job_id(text: str) -> bool:
    return bool(_JOB_ID.match(text))


def parse_job_id(text: str | None, hint: str = "See `hpcai jobs`.") -> str:
    """`text` when it is a Slurm job id like 123 or 123_4; SpecError (exit 2) otherwise."""
    if text is None or not is_job_id(text):
        raise SpecError(f"Expected a Slurm job id like 123 or 123_4. Got {text!r} instead. {hint}")
    return text


def current_user() -> str:
    """The name of the user this process acts for (its real uid: never $USER, which anyone can set)."""
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
