"""The readers' side of the accounting store (the edge: directory listings): which part and rollup files
a report over some months and accounts reads, and which accounts' partitions this process may not read."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hpc_aidc.report.store.layout import (
    ALL,
    JOBS,
    ROLLUPS,
    account_dir_name,
    all_rollups,
    current_rollups,
    last_gen,
    live_parts,
    names_in,
    storable_account,
)
from hpc_aidc.report.store.rollup import KINDS, Rollups


@dataclass(frozen=True)
class Listing:
    """What a reader found: part files, and the partitions' current rollups when every partition listed
    has them (else None: rollups are used for all partitions or none)."""

    files: tuple[str, ...]
    rollups: Rollups | None
    denied: frozenset[str]  # accounts whose partitions this process may not read


def list_store(root: Path, accounts: frozenset[str] | None, months: list[str]) -> Listing:
    """The store's files of the given months for `accounts` (None: every account; then, for root, the
    rollups of all/ when they are current for every month read)."""
    jobs = root / JOBS
    if accounts is not None:  # jobs/ is not listable (0711): a reader names the partitions it may see
        names = [account_dir_name(a) for a in accounts if storable_account(a)]
    else:
        try:
            names = os.listdir(jobs)
        except FileNotFoundError:
            return Listing((), None, frozenset())
        except PermissionError:  # not root: every account's partitions are root's
            return Listing((), None, frozenset({"*"}))
    files: list[str] = []
    rolled: list[tuple[str, ...]] = []
    gens: dict[str, dict[str, int]] = {}
    complete = True
    denied: set[str] = set()
    for entry in sorted(names):
        if not entry.startswith("account="):
            continue
        account = entry[len("account="):]
        if accounts is not None and account not in accounts:
            continue
        for month in months:
            d = jobs / entry / f"month={month}"
            try:
                listing = os.listdir(d)
            except FileNotFoundError:
                continue
            except PermissionError:
                denied.add(account)
                break
            parts = live_parts(listing)
            files += [str(d / n) for n in parts]
            if parts:
                gens.setdefault(month, {})[account] = last_gen(parts)
            r = root / ROLLUPS / entry / f"month={month}"
            try:
                rollups = current_rollups(names_in(r), parts)
            except PermissionError:
                rollups = None
            if rollups is None:
                complete = complete and not parts
            else:
                rolled.append(tuple(str(r / name) for name in rollups))
    found = None
    if complete and rolled:
        found = _all_accounts(root, gens) if accounts is None and not denied else None
        if found is None:
            days, waits, edges, by_month = (tuple(paths) for paths in zip(*rolled, strict=True))
            found = Rollups(days, waits, edges, by_month)
    return Listing(tuple(files), found, frozenset(denied))


def _all_accounts(root: Path, gens: dict[str, dict[str, int]]) -> Rollups | None:
    """The all/ rollups of the months in `gens`, when every one of them is current and readable."""
    by_kind: list[list[str]] = [[] for _ in KINDS]
    for month, month_gens in sorted(gens.items()):
        d = root / ALL / f"month={month}"
        try:
            names = all_rollups(os.listdir(d), month_gens)
        except (FileNotFoundError, PermissionError):
            return None
        if names is None:
            return None
        for paths, name in zip(by_kind, names, strict=True):
            paths.append(str(d / name))
    days, waits, edges, months = (tuple(paths) for paths in by_kind)
    return Rollups(days, waits, edges, months, whole=True)
