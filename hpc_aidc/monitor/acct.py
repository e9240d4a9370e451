"""The job summary as text that survives Slurm accounting (pure). `sacctmgr modify job ... set
AdminComment=` lowercases the whole value and turns double quotes into backticks, so JSON and base64 are
out: the summary is lowercase `key=value` words after a versioned tag, e.g.
  hpcai-energy-v1 nodes=n1,n2 gpus=4 gpu_j=5012.5 gpu_kwh=0.00139 cpu_j=na dur_s=12.5 ... src=counter
"na" means unavailable (never written as 0). Derived keys (gpu_kwh, j_per_*) are for human readers of
sacct and are recomputed on decode. Unknown keys are ignored so newer writers stay readable."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from hpc_aidc.errors import EnergyError

if TYPE_CHECKING:
    from hpc_aidc.monitor.summary import Totals

TAG = "hpcai-energy-v1"
_TAG_RE = re.compile(r"(?:^|\s)hpcai-energy-v1(?:\s|$)")
NA = "na"
_SAFE = re.compile(r"^[a-z0-9_.,+\-]*$")


# `encode`'s exact layout: a reader of many summaries (a month report reads up to a million) takes the
# numbers it needs with one match (~0.6 us) instead of a full `decode` (~6 us); anything else decodes.
_ENCODED = re.compile(
    re.escape(TAG) + r" nodes=\S* gpus=\S+ gpu_j=(\S+) gpu_kwh=\S+ cpu_j=(\S+) dur_s=\S+ p_mean_w=\S+ "
    r"p_max_w=\S+ util=(\S+) idle_gpu_s=(\S+) tokens=(\S+) samples=(\S+) j_per_token=\S+ j_per_sample=\S+ "
    r"src=\S+ sim=([01]) approx=[01] missing=\S*(?: runs=[0-9]+)?"
)


def encoded_fields(text: str) -> tuple[str, ...] | None:
    """(gpu_j, cpu_j, util, idle_gpu_s, tokens, samples, sim) as written, when `text` is exactly one summary
    in `encode`'s layout; None otherwise (then `decode` it)."""
    m = _ENCODED.fullmatch(text)
    return m.groups() if m else None


def _num(value: float | None) -> str:
    return NA if value is None else f"{value:.10g}"


def _names(names: tuple[str, ...]) -> str:
    text = ",".join(n.lower() for n in names)
    if not _SAFE.match(text):
        raise EnergyError(f"Expected node names of [a-z0-9_.-]. Got {text!r} instead. Rename the nodes.")
    return text


def encode(t: Totals) -> str:
    pairs = [
        ("nodes", _names(t.nodes)), ("gpus", str(t.gpus)), ("gpu_j", _num(t.gpu_j)),
        ("gpu_kwh", _num(t.gpu_kwh)), ("cpu_j", _num(t.cpu_j)), ("dur_s", _num(t.duration_s)),
        ("p_mean_w", _num(t.power_mean_w)), ("p_max_w", _num(t.power_max_w)),
        ("util", _num(t.util_mean)), ("idle_gpu_s", _num(t.idle_gpu_s)),
        ("tokens", _num(t.tokens)), ("samples", _num(t.samples)),
        ("j_per_token", _num(t.j_per_token)), ("j_per_sample", _num(t.j_per_sample)),
        ("src", t.source), ("sim", str(int(t.simulated))), ("approx", str(int(t.approximate))),
        ("missing", _names(t.missing)), ("runs", str(t.runs)),
    ]
    return " ".join([TAG, *(f"{k}={v}" for k, v in pairs)])


def compose(existing: str, line: str) -> str:
    """AdminComment with our summary replaced by `line`, and whatever other tools keep there (jobstats'
    `JS1:...`, a site's notes) kept in front of it."""
    others = strip_summary(existing)
    return f"{others} {line}" if others else line


def strip_summary(text: str) -> str:
    """`text` without our tagged summary (the tag and the key=value words after it)."""
    match = _TAG_RE.search(text.lower())
    if match is None:
        return text.strip()
    words = text[match.end():].split()
    rest = 0
    while rest < len(words) and "=" in words[rest]:
        rest += 1
    return " ".join([text[:match.start()].strip(), *words[rest:]]).strip()


def contains_summary(text: str) -> bool:
    return bool(_TAG_RE.search(text))


def decode(text: str) -> Totals:
    """The Totals in an AdminComment (other text around the tagged part is ignored)."""
    from hpc_aidc.monitor.summary import Totals  # here: reports read most summaries without it (report.energy)

    match = _TAG_RE.search(text.lower())
    if match is None:
        raise EnergyError(
            f"Expected an energy summary tagged {TAG}. Got {text[:60]!r} instead. "
            "The job has no energy record (yet): did its epilog run?"
        )
    fields: dict[str, str] = {}
    for word in text.lower()[match.end():].split():
        key, sep, value = word.partition("=")
        if not sep:
            break  # the summary ends where other text starts
        fields[key] = value

    def num(key: str) -> float | None:
        raw = fields.get(key, NA)
        if raw == NA:
            return None
        try:
            return float(raw)
        except ValueError:
            raise EnergyError(f"Expected a number for {key} in the energy summary. Got {raw!r} instead. "
                              "The AdminComment was edited by hand?") from None

    def names(key: str) -> tuple[str, ...]:
        return tuple(n for n in fields.get(key, "").split(",") if n)

    return Totals(
        nodes=names("nodes"), gpus=int(num("gpus") or 0), gpu_j=num("gpu_j"), cpu_j=num("cpu_j"),
        duration_s=num("dur_s") or 0.0, power_mean_w=num("p_mean_w"), power_max_w=num("p_max_w"),
        util_mean=num("util"), idle_gpu_s=num("idle_gpu_s"), tokens=num("tokens"),
        samples=num("samples"), source=fields.get("src", "unavailable"),
        simulated=fields.get("sim") == "1", approximate=fields.get("approx") == "1",
        missing=names("missing"), runs=int(num("runs") or 1),
    )
