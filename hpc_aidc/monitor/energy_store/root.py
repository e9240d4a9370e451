"""The energy store's root, opened and checked before anything in it is trusted, and what is found
in it: a job's runs, the nodes with records in a run, the accounting drop box."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from hpc_aidc.errors import EnergyError
from hpc_aidc.ids import parse_job_id
from hpc_aidc.monitor.energy_store.layout import ACCOUNTING, RUN_DIR
from hpc_aidc.monitor.energy_store.record_dir import RecordDir, open_dir


def open_store(root: Path) -> RecordDir:
    """The store root, checked: root-owned; if others may write it, only with the sticky bit."""
    found = open_dir(root)
    if found is None:
        raise EnergyError(f"Expected the energy store {root} to exist. Got no such directory. "
                          "Ask an admin to create it (root-owned, mode 0711, or 1733 where jobs sample "
                          "themselves).")
    if found.uid != 0 and found.uid != os.geteuid():
        found.close()
        raise EnergyError(f"Expected the energy store {root} to be owned by root. Got uid {found.uid}. "
                          f"Ask an admin to run `chown root {root}`.")
    if found.mode & 0o002 and not found.mode & stat.S_ISVTX:
        found.close()
        raise EnergyError(f"Expected the energy store {root} to be mode 0711 or 1733. Got "
                          f"{found.mode:o}: anyone could replace another job's records. Ask an admin to "
                          f"run `chmod 1733 {root}`.")
    return found


@contextlib.contextmanager
def opened(root: Path, *names: str) -> Iterator[RecordDir | None]:
    """store/<names...> opened step by step (no links), None when any step is absent."""
    current: RecordDir | None = open_store(root)
    try:
        for name in names:
            assert current is not None
            nxt = current.sub(name)
            current.close()
            current = nxt
            if current is None:
                break
        yield current
    finally:
        if current is not None:
            current.close()


def runs(root: Path, job_id: str) -> list[int]:
    """The runs a job has records of, oldest first."""
    with opened(root, parse_job_id(job_id)) as job:
        if job is None:
            return []
        return sorted(int(m.group(1)) for n in job.names() if (m := RUN_DIR.match(n)))


def nodes_with_records(run_dir: RecordDir) -> list[str]:
    return sorted(n[: -len(".meta.json")] for n in run_dir.names() if n.endswith(".meta.json"))


def accounting_dir(root: Path) -> RecordDir | None:
    """The accounting drop box, None where the site stores no energy in Slurm accounting."""
    with open_store(root) as store:
        return store.sub(ACCOUNTING)
