"""Which Slurm hpc-aidc talks to, and what it knows of that version (pure).

Tested on real clusters of each of TESTED (their outputs are in tests/recorded/: 22.05 at the top level,
the others in slurm-<version>/). A release between the oldest and the newest is expected to work (the parsers
accept both forms seen on either side); one outside that range is untested. The version comes from
`scontrol show config`'s SLURM_VERSION line, or from a client's `--version` ("slurm 24.11.5")."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple


class SlurmVersion(NamedTuple):
    major: int
    minor: int
    micro: int = 0

    @property
    def release(self) -> str:
        """'24.11', the release a version belongs to (Slurm numbers releases YY.MM)."""
        return f"{self.major}.{self.minor:02d}"

    def __str__(self) -> str:
        return f"{self.release}.{self.micro}"


TESTED = (SlurmVersion(22, 5), SlurmVersion(24, 11), SlurmVersion(26, 5))
OLDEST, NEWEST = TESTED[0], TESTED[-1]
# `sacct --batch-script`: 22.05 prints the stored script and a newline of its own after it; 24.11 and 26.05
# print the script exactly (tests/recorded/*/sacct_batch_script.txt). Releases in between were not seen: they
# are taken to behave as 22.05 did.
SACCT_SCRIPT_EXACT_SINCE = SlurmVersion(24, 11)

_VERSION = re.compile(r"(?<![\d.])(\d{2})\.(\d{1,2})(?:\.(\d+))?")


def parse_version(text: str) -> SlurmVersion | None:
    """'24.11.5', 'slurm 24.11.5', 'slurm-wlm 26.05.5', '22.05.8-1' -> the version; None when none is there."""
    m = _VERSION.search(text)
    if not m:
        return None
    return SlurmVersion(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def config_version(config: str) -> SlurmVersion | None:
    """The SLURM_VERSION line of `scontrol show config` (the controller's version)."""
    for line in config.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "SLURM_VERSION":
            return parse_version(value)
    return None


def sacct_adds_script_newline(version: SlurmVersion) -> bool:
    """Whether `sacct --batch-script` of this version ends the script with a newline of its own."""
    return version[:2] < SACCT_SCRIPT_EXACT_SINCE[:2]


TESTED_NAMES = ", ".join(v.release for v in TESTED)


@dataclass(frozen=True)
class Support:
    version: SlurmVersion
    status: str            # "tested", "expected to work" or "untested"
    warning: str | None    # what is not supported, for an untested version

    def line(self) -> str:
        return f"Slurm {self.version}: {self.status}" + ("" if self.status == "tested" else
                                                          f" (tested: {TESTED_NAMES})")


def support(version: SlurmVersion) -> Support:
    """How far hpc-aidc knows this version: tested, between tested ones, or outside them."""
    release = version[:2]
    if any(release == t[:2] for t in TESTED):
        return Support(version, "tested", None)
    if OLDEST[:2] < release < NEWEST[:2]:
        return Support(version, "expected to work", None)
    if release < OLDEST[:2]:
        why = (f"older than {OLDEST.release}, the oldest release hpc-aidc supports: its sacct, squeue, scontrol and "
               "sbatch output was never seen, so parsers may misread it (e.g. job states, GPUs, array tasks), and "
               "options hpc-aidc passes may be unknown to it; upgrade Slurm")
    else:
        why = (f"newer than {NEWEST.release}, the newest release hpc-aidc was tested on: parsers may misread output "
               "that changed since (sacct, squeue, scontrol show job, sbatch --test-only) and requests may be "
               "refused; check `hpcai jobs`, `hpcai status` and a dry run with --test-only, and report what differs")
    return Support(version, "untested", f"Slurm {version} is untested: {why}")
