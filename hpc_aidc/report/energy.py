"""A job's energy summary as the report needs it, read from its AdminComment (pure).

The summary format belongs to `hpc_aidc.monitor.acct`: a comment that is exactly one summary in
`encode`'s layout is read by its one match (`encoded_fields`), anything else by `decode`; both agree
(tested on `encode` output). A comment
without a summary, or one that does not decode, is "unknown" (None), never zero."""

from __future__ import annotations

from typing import NamedTuple

from hpc_aidc.errors import EnergyError
from hpc_aidc.monitor.acct import NA, TAG, decode, encoded_fields


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
    fields = encoded_fields(admin_comment)
    if fields is not None:
        gpu_j, cpu_j, util, idle, tokens, samples, sim = fields
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
