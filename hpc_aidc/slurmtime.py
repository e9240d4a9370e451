"""Slurm time-limit syntax, parsed to whole minutes (pure)."""

from __future__ import annotations

import re

from hpc_aidc.errors import SpecError

_FORMS = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
_DAYS = re.compile(r"^(\d+)-(\d+)(?::(\d+))?(?::(\d+))?$")
_PLAIN = re.compile(r"^(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time_limit(text: str) -> int:
    """Minutes in a Slurm time limit (seconds round up, as Slurm does). Rejects zero and junk."""
    value = text.strip()
    days = hours = minutes = seconds = 0
    minutes_bounded = True  # a leading minutes field (MM, MM:SS) may exceed 59, as in Slurm
    if m := _DAYS.match(value):
        days, hours = int(m[1]), int(m[2])
        minutes = int(m[3] or 0)
        seconds = int(m[4] or 0)
    elif m := _PLAIN.match(value):
        parts = [int(p) for p in m.groups() if p is not None]
        if len(parts) == 3:
            hours, minutes, seconds = parts
        else:
            minutes_bounded = False
            minutes, seconds = parts[0], (parts[1] if len(parts) == 2 else 0)
    else:
        raise SpecError(f"Expected a time limit as {_FORMS}. Got {text!r} instead. Example: --time 02:00:00.")
    if seconds >= 60 or (minutes_bounded and minutes >= 60):
        raise SpecError(f"Expected minutes and seconds below 60 in a time limit. Got {text!r} instead.")
    total = days * 1440 + hours * 60 + minutes + (1 if seconds else 0)
    if total <= 0:
        raise SpecError(f"Expected a time limit above zero. Got {text!r} instead. Example: --time 00:30:00.")
    return total


def format_time_limit(minutes: int) -> str:
    """Minutes back to Slurm's D-HH:MM:SS / HH:MM:SS form."""
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else f"{hours:02d}:{mins:02d}:00"
