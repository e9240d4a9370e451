"""The work a job reports (tokens, samples), for J/token and J/sample. A job process appends lines
`tokens=N` / `samples=N` to a file `work.<node>.<anything>` in its run's work/ directory (see
`work_path`); every line counts, so each process reports the work it did itself."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hpc_aidc.errors import ConfigError, expected

KINDS = ("tokens", "samples")
MAX_WORK_BYTES = 1 << 20  # per file: root reads these, and a user must not make it read gigabytes


@dataclass(frozen=True)
class Work:
    tokens: float | None = None
    samples: float | None = None


def parse_work(text: str) -> Work:
    """Sum of `kind=number` lines; blank lines and # comments are skipped, junk lines too (a job's
    half-written line must not break the summary)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        key = key.strip().lower()
        if not sep or key not in KINDS:
            continue
        try:
            totals[key] = totals.get(key, 0.0) + float(value)
        except ValueError:
            continue
    return Work(totals.get("tokens"), totals.get("samples"))


def add_work(parts: Iterable[Work]) -> Work:
    def total(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return sum(present) if present else None

    items = list(parts)
    return Work(total([w.tokens for w in items]), total([w.samples for w in items]))


def work_line(kind: str, amount: float) -> str:
    if kind not in KINDS:
        raise ConfigError(expected(f"a work kind from {KINDS}", kind, "Use --tokens or --samples."))
    if amount < 0:
        raise ConfigError(expected("a work amount >= 0", amount, "Report what the process did."))
    return f"{kind}={amount:g}\n"


def work_path(run_dir: Path, node: str, pid: int) -> Path:
    """Where a job's process reports its work: the run's work/ directory (the job's user owns it)."""
    return run_dir / "work" / f"work.{node}.{pid}"


def report_work(store: Path, job_id: str, run: int, node: str, tokens: float | None = None,
                samples: float | None = None) -> bool:
    """Append this process's work to its job's energy records (run's work/ directory); False when there
    is nowhere to report (no sampler made the directory, not a Slurm job). Never raises: energy
    accounting must not break the work it measures."""
    import os

    lines = "".join(work_line(k, v) for k, v in (("tokens", tokens), ("samples", samples)) if v is not None)
    if not lines:
        return False
    path = work_path(store / job_id / f"r{run}", node, os.getpid())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    except OSError:
        return False
    try:
        os.write(fd, lines.encode())
    finally:
        os.close(fd)
    return True
