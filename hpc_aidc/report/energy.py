"""A job's energy summary as the report needs it, read from its AdminComment (pure).

The summary format belongs to `hpc_aidc.monitor.acct` (`encode`/`decode`). `decode` builds a full
Totals (~6 us); a month report reads up to a million of them, so a comment that is exactly one v1
summary in `encode`'s layout is read by one regular expression (~0.6 us) for the five numbers a report
uses. Both paths agree (tested on `encode` output); anything else goes through `decode`. A comment
without a summary, or one that does not decode, is "unknown" (None), never zero."""

from __future__ import annotations

import re
from typing import NamedTuple

from hpc_aidc.errors import EnergyError
from hpc_aidc.monitor.acct import NA, TAG, decode

_V1 = re.compile(
    re.escape(TAG) + r" nodes=\S* gpus=\S+ gpu_j=(\S+) gpu_kwh=\S+ cpu_j=(\S+) dur_s=\S+ p_mean_w=\S+ "
    r"p_max_w=\S+ util=(\S+) idle_gpu_s=(\S+) tokens=(\S+) samples=(\S+) j_per_token=\S+ j_per_sample=\S+ "
    r"src=\S+ sim=([01]) approx=[01] missing=\S*(?: runs=[0-9]+)?"
)
_match = _V1.fullmatch


class JobEnergy(NamedTuple):
    gpu_j: float | None  # None: this job's GPU energy is unknown
    cpu_j: float | None
    util: float | None  # mean GPU utilisation, percent
    idle_gpu_s: float | None
    tokens: float | None
    simulated: bool
    samples: float | None = None  # rows (inference) or samples the job reported


def _num(text: str) -> float | None:
    return None if text == NA else float(text)


def job_energy(admin_comment: str) -> JobEnergy | None:
    """The energy numbers in an AdminComment; None when it carries no (readable) summary."""
    m = _match(admin_comment)
    if m is not None:
        gpu_j, cpu_j, util, idle, tokens, samples, sim = m.groups()
        try:
            return JobEnergy(_num(gpu_j), _num(cpu_j), _num(util), _num(idle), _num(tokens), sim == "1",
                             _num(samples))
        except ValueError:
            pass  # a hand-edited number: decode says what is wrong, and we count it unknown
    if TAG not in admin_comment:
        return None
    try:
        t = decode(admin_comment)
    except EnergyError:
        return None
    return JobEnergy(t.gpu_j, t.cpu_j, t.util_mean, t.idle_gpu_s, t.tokens, t.simulated, t.samples)
