"""Where the accounting store keeps what (the package docstring draws the tree): names, modes, the state
file, and which of a partition's files are current: its live parts by generation, its rollups by the last
generation they cover, a month's all/ rollups by the digest of the generations they sum."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from hpc_aidc.errors import ConfigError
from hpc_aidc.report.store.rollup import KINDS
from hpc_aidc.report.store.table import SCHEMA_VERSION

STATE = "state.json"
JOBS = "jobs"
ROLLUPS = "rollups"  # a tree of its own, so engines reading jobs/ see one schema
ALL = "all"  # every account's rollups of a month together (root's alone)
LOCK = ".ingest.lock"
MAX_PARTS = 8
ROW_GROUP = 4096  # rows: small enough that a report over whole days skips most of a part (writer.read_order)
DIR_MODE = 0o750
TREE_MODE = 0o711  # jobs/ and rollups/: reachable, not listable (the account names are private)
FILE_MODE = 0o640
_ACCOUNT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
PART_NAME = re.compile(r"part-([0-9]{8})-([0-9]{8})\.parquet")
ROLLUP_NAME = re.compile(r"(days|waits|edges|months)-([0-9]{8})\.parquet")
ALL_ROLLUP_NAME = re.compile(r"(days|waits|edges|months)-([0-9a-f]{16})\.parquet")


@dataclass(frozen=True)
class StoreState:
    """What the store holds: every allocation that ended at or before `watermark` (None: nothing yet)."""

    watermark: int | None = None
    max_span_s: int = 0  # longest end - (start or submit) stored: how far back a month's jobs began
    awaiting: tuple[str, ...] = field(default=())  # job ids stored while their energy was still spooled
    schema: int = SCHEMA_VERSION
    days_zone: str | None = None  # the time zone whose local days the rollups sum (rollup.local_zone)


def storable_account(account: str) -> bool:
    """Whether rows of `account` can have a partition of their own (a name that is one plain path part)."""
    return _ACCOUNT.fullmatch(account) is not None


def account_dir_name(account: str) -> str:
    if not storable_account(account):
        raise ConfigError(f"Expected a Slurm account name of letters, digits, '_', '.', '-'. Got {account!r} "
                          "instead. Rename the account or leave it out of the store.")
    return f"account={account}"


def read_state(root: Path) -> StoreState | None:
    """The store's state; None when `root` holds no store."""
    try:
        data = json.loads((root / STATE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Expected a readable report store state at {root / STATE}. Got {exc}. "
                          "Run `hpcai report ingest` as an admin to repair it.") from None
    if data.get("schema") != SCHEMA_VERSION:
        raise ConfigError(f"Expected report store schema {SCHEMA_VERSION} at {root}. Got {data.get('schema')!r}. "
                          "Add --live for now; admins rebuild it: move the store aside, then "
                          "`hpcai report ingest --since <first day>` (docs/report-store.md).")
    return StoreState(data.get("watermark"), int(data.get("max_span_s", 0)), tuple(data.get("awaiting", ())),
                      days_zone=data.get("days_zone"))


def month_end(month: str) -> int:
    """The local midnight that ends the month "YYYY-MM"."""
    year, number = int(month[:4]), int(month[5:7])
    year, number = (year + 1, 1) if number == 12 else (year, number + 1)
    return int(time.mktime((year, number, 1, 0, 0, 0, 0, 0, -1)))


def names_in(directory: Path) -> list[str]:
    """The names in `directory`; none when it does not exist (yet)."""
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def part_gens(name: str) -> tuple[int, int]:
    """The (first, last) generation a part's name says it holds."""
    m = PART_NAME.fullmatch(name)
    assert m is not None
    return int(m.group(1)), int(m.group(2))


def last_gen(parts: list[str]) -> int:
    """The newest generation a partition's parts hold: what its rollups are named by."""
    return max(part_gens(n)[1] for n in parts)


def next_gen(parts: list[str]) -> int:
    """The generation the next part written to a partition gets."""
    return max((part_gens(n)[1] for n in parts), default=0) + 1


def live_parts(names: list[str]) -> list[str]:
    """The parts of a partition listing, oldest generation first, without those superseded by a part
    whose generation range contains theirs (a reader may list between the ingest's write of a merged
    part and its removal of the old ones)."""
    spans = sorted((part_gens(n), n) for n in names if PART_NAME.fullmatch(n))
    return [n for (a, b), n in spans if not any(c <= a and b <= d and (c, d) != (a, b) for (c, d), _ in spans)]


def current_rollups(names: list[str], parts: list[str]) -> tuple[str, ...] | None:
    """The partition's rollup files (one of each rollup.KINDS) when they cover exactly its live
    `parts`, else None (also for a partition rolled up before a kind existed: the ingest builds it)."""
    if not parts:
        return None
    gen = last_gen(parts)
    files = tuple(f"{kind}-{gen:08d}.parquet" for kind in KINDS)
    return files if all(f in names for f in files) else None


def month_digest(gens: dict[str, int]) -> str:
    """What names a month's all/ rollups: the accounts and the last part generation each one's sum."""
    text = "".join(f"{account}:{gen}\n" for account, gen in sorted(gens.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def all_rollups(names: list[str], gens: dict[str, int]) -> tuple[str, ...] | None:
    """A month's all/ rollup files (one of each kind) when they sum exactly the partitions of `gens`."""
    digest = month_digest(gens)
    files = tuple(f"{kind}-{digest}.parquet" for kind in KINDS)
    return files if all(f in names for f in files) else None
