"""The spool of job summaries that did not reach Slurm accounting yet (slurmdbd away, late nodes):
one empty file accounting/spool/<jobid> per job, written by EpilogSlurmctld (the SlurmUser) and removed
once the job's AdminComment holds its summary. Retrying recombines from the run lines, so a spooled
job is stored with whatever arrived meanwhile and nothing is counted twice."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from hpc_aidc.ids import is_job_id, parse_job_id
from hpc_aidc.monitor.energy_store.layout import SPOOL
from hpc_aidc.monitor.energy_store.record_dir import RecordDir
from hpc_aidc.monitor.energy_store.root import accounting_dir


def _spool(store_root: Path, create: bool) -> RecordDir | None:
    box = accounting_dir(store_root)
    if box is None:
        return None
    with box:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(SPOOL, 0o2770, dir_fd=box.fd)
        return box.sub(SPOOL)


def add(store_root: Path, job_id: str) -> bool:
    """Remember that the job's summary must still be stored; False where there is no accounting box."""
    spool = _spool(store_root, create=True)
    if spool is None:
        return False
    with spool:
        spool.write(parse_job_id(job_id), b"", None, 0o660)
    return True


def pending(store_root: Path) -> list[str]:
    """Spooled job ids, oldest job first."""
    spool = _spool(store_root, create=False)
    if spool is None:
        return []
    with spool:
        ids = [n for n in spool.names() if not n.startswith(".")]
    valid = [n for n in ids if is_job_id(n)]
    return sorted(valid, key=lambda n: tuple(int(p) for p in n.split("_")))


def remove(store_root: Path, job_id: str) -> None:
    spool = _spool(store_root, create=False)
    if spool is not None:
        with spool:
            spool.unlink(parse_job_id(job_id))
