"""Slurm daemon logs: the lines that say a configured Prolog/Epilog script will never run.

Slurm 22.05's prep/script plugin checks PrologSlurmctld and EpilogSlurmctld once, when slurmctld starts
(`access(path, X_OK)` as SlurmUser). A script it cannot execute gets one line, e.g.

    [2026-12-07T08:28:29.113] error: Invalid EpilogSlurmctld(`/root/x/epilog_slurmctld.sh`): Permission denied

and from then on that script is silently never run. `scontrol reconfigure` neither re-checks nor re-logs:
only a restart does, and it logs `slurmctld version 22.05.8 started on cluster ...` first. So only the
lines after the last such start count: a problem fixed and restarted away does not fail forever.
(slurmd logs nothing at start for Prolog/Epilog; a job's failing one drains its node, which is seen.)

`invalid_scripts` is pure: log lines in, offending lines out. `scan_log` reads a log file as a stream.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Both are matched from the start of a line (after the timestamp, which LogTimeFormat=none leaves out): the
# log also holds text users wrote (a job_submit.lua refusal quotes the request), which must neither raise a
# false alarm nor, with a fake `started`, hide a real one. Slurm 22.05 quotes the path in backticks; the
# form without them (older Slurm, the issue report) counts too.
_STAMP = r"^(?:\[[^\]]*\] )?"
INVALID_RE = re.compile(
    _STAMP + r"error: Invalid (?P<setting>(?:Prolog|Epilog)(?:Slurmctld)?)\((?:`(?P<quoted>[^`]*)`|(?P<bare>[^)]*))\):"
    r"\s*(?P<reason>.*)$")


def _start_re(daemon: str) -> re.Pattern[str]:
    return re.compile(_STAMP + rf"{re.escape(daemon)} version \S+ started(?: on cluster \S+)?$")


@dataclass(frozen=True)
class InvalidScript:
    line: str       # the log line as written (timestamp and all)
    setting: str    # Prolog, Epilog, PrologSlurmctld or EpilogSlurmctld
    path: str       # the script as slurm.conf names it
    reason: str     # strerror: "Permission denied", "No such file or directory", ...


@dataclass(frozen=True)
class LogScan:
    path: str                                   # the log file
    invalid: tuple[InvalidScript, ...] = ()     # since the daemon's last start
    skipped: str | None = None                  # why the log was not read (unset, missing, unreadable)


def invalid_scripts(lines: Iterable[str], daemon: str = "slurmctld") -> tuple[InvalidScript, ...]:
    """The `Invalid Prolog|Epilog|PrologSlurmctld|EpilogSlurmctld(...)` lines after the daemon's last
    `<daemon> version ... started` line (all of them when the log holds no start, e.g. after rotation)."""
    started = _start_re(daemon)
    found: list[InvalidScript] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if "Invalid " in line:
            m = INVALID_RE.match(line)
            if m:
                path = m["quoted"] if m["quoted"] is not None else m["bare"]
                found.append(InvalidScript(line, m["setting"], path, m["reason"].strip()))
        elif " started" in line and started.match(line):
            found = []
    return tuple(found)


def scan_log(path: str | None, daemon: str = "slurmctld") -> LogScan:
    """Read a daemon's log file line by line (it may be large); an unset or unreadable log is skipped."""
    if not path:
        return LogScan("", skipped=f"no {daemon} log file is set (it logs to syslog)")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return LogScan(path, invalid_scripts(f, daemon))
    except OSError as e:
        return LogScan(path, skipped=f"cannot read {path}: {e.strerror or e}")
