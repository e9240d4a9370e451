"""The ingest's side of the accounting store (the edge: files): root-owned, locked, each file written whole
through directory fds. It upserts rows into a partition's parts (the package docstring gives the rules)
and builds the rollups over them."""

from __future__ import annotations

import contextlib
import grp
import io
import json
import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from hpc_aidc.errors import AccessError, ConfigError
from hpc_aidc.fsutil import DIR_FLAGS, atomic_write_at, file_lock
from hpc_aidc.report.store.layout import (
    ALL,
    ALL_ROLLUP_NAME,
    DIR_MODE,
    FILE_MODE,
    JOBS,
    LOCK,
    MAX_PARTS,
    PART_NAME,
    ROLLUP_NAME,
    ROLLUPS,
    ROW_GROUP,
    STATE,
    TREE_MODE,
    StoreState,
    account_dir_name,
    all_rollups,
    current_rollups,
    last_gen,
    live_parts,
    month_digest,
    month_end,
    names_in,
    next_gen,
    part_gens,
)
from hpc_aidc.report.store.rollup import EDGES, KINDS
from hpc_aidc.report.store.table import KEY, arrow_schema, edge_schema

if TYPE_CHECKING:
    import pyarrow as pa

_SIGNATURE = ("comment_hash", "state", "multi_run")


def _group_id(readers: str, account: str) -> int:
    """The group that may read an account's partitions: the site's `report_store_readers` pattern (e.g.
    "{account}-coord"); root's alone without one. A project's members must not read every member's jobs
    (Slurm's PrivateData=jobs): their reports ask sacct, which shows each what Slurm lets them see."""
    if not readers:
        return 0
    try:
        return grp.getgrnam(readers.replace("{account}", account)).gr_gid
    except KeyError:
        return 0


def _mkdir_at(parent_fd: int, name: str, gid: int, mode: int) -> int:
    """Open (creating) the directory `name` in `parent_fd`, owned by root:gid with `mode` when root."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, mode, dir_fd=parent_fd)
    fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    if os.geteuid() == 0:
        os.fchown(fd, 0, gid)
    os.fchmod(fd, mode)
    return fd


class StoreWriter:
    """The ingest's handle on the store: root-owned, locked, written only through directory fds."""

    def __init__(self, root: Path, readers: str = "") -> None:
        self.root = root
        self.readers = readers

    @contextlib.contextmanager
    def locked(self) -> Iterator[StoreWriter]:
        try:
            self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
            st = os.lstat(self.root)
        except OSError as exc:
            raise ConfigError(f"Expected a report store directory at {self.root}. Got {exc.strerror}. "
                              "Check [cluster].report_store in the site profile.") from None
        if st.st_uid != os.geteuid():
            raise AccessError(f"Expected `hpcai report ingest` to run as the report store's owner (uid {st.st_uid}). "
                              f"Got uid {os.geteuid()} instead. Admins run it as root (cron, or the systemd timer "
                              "of `hpcai admin templates`); reports read the store without it.")
        if not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o022:
            raise AccessError(f"Expected the report store {self.root} to be a directory writable by its owner "
                              f"alone. Got mode {stat.S_IMODE(st.st_mode):o}. Run `chmod 755 {self.root}`.")
        with file_lock(self.root / LOCK):
            yield self

    def write_state(self, state: StoreState) -> None:
        fd = os.open(self.root, DIR_FLAGS)
        try:
            atomic_write_at(fd, STATE, (json.dumps(asdict(state), indent=1) + "\n").encode(), 0o644)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def partition(self, account: str, month: str, tree: str = JOBS) -> Iterator[int]:
        """A directory fd on `<tree>/account=<account>/month=<month>`, root:<readers> 0750; the tree itself
        0711: whoever may read an account's partitions reaches them, nobody lists the accounts."""
        gid = _group_id(self.readers, account)
        fds = [os.open(self.root, DIR_FLAGS)]
        try:
            fds.append(_mkdir_at(fds[-1], tree, 0, TREE_MODE))
            fds.append(_mkdir_at(fds[-1], account_dir_name(account), gid, DIR_MODE))
            fds.append(_mkdir_at(fds[-1], f"month={month}", gid, DIR_MODE))
            yield fds[-1]
        finally:
            for fd in reversed(fds):
                os.close(fd)

    def upsert(self, account: str, month: str, rows: pa.Table) -> int:
        """Store `rows` (one partition's) and return how many were new or changed."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        gid = _group_id(self.readers, account)
        with self.partition(account, month) as fd:
            names = os.listdir(fd)
            parts = live_parts(names)
            # parts that live_parts drops: left by an ingest that died mid-swap
            for leftover in set(n for n in names if PART_NAME.fullmatch(n)) - set(parts):
                os.unlink(leftover, dir_fd=fd)
            stored: dict[tuple[object, ...], tuple[object, ...]] = {}
            holder: dict[tuple[object, ...], int] = {}  # key -> index of the part that holds it
            for index, name in enumerate(parts):
                t = pq.read_table(_fd_path(fd, name), columns=[*KEY, *_SIGNATURE])
                for key, sig in zip(_keys(t), _signatures(t), strict=True):
                    stored[key] = sig
                    holder[key] = index
            keys = _keys(rows)
            sigs = _signatures(rows)
            fresh = [i for i, (k, s) in enumerate(zip(keys, sigs, strict=True)) if stored.get(k) != s]
            if not fresh:
                return 0
            replaced = {keys[i] for i in fresh if keys[i] in stored}
            # Parts are rewritten as a suffix (newest first to go), so a new part's generation range
            # always contains those it supersedes: see layout.live_parts.
            start = min((holder[k] for k in replaced), default=len(parts))
            if start + 1 > MAX_PARTS:  # parts after this write: start + 1
                sizes = [os.stat(n, dir_fd=fd).st_size for n in parts]
                start = min(start, 0 if len(parts) < 2 or sum(sizes[1:]) >= sizes[0] else 1)
            tables = [pq.read_table(_fd_path(fd, n), schema=arrow_schema()) for n in parts[start:]]
            if replaced:
                tables = [t.filter(pa.array([k not in replaced for k in _keys(t)])) for t in tables]
            tables.append(rows.take(pa.array(fresh, pa.int64())).select(list(arrow_schema().names)))
            merged = pa.concat_tables(tables)
            first = part_gens(parts[start])[0] if start < len(parts) else next_gen(parts)
            name = f"part-{first:08d}-{next_gen(parts):08d}.parquet"
            self._replace(fd, parts[start:], merged, name, gid)  # its rollups are stale now: roll_up_all
            return len(fresh)

    @staticmethod
    def _replace(fd: int, old: list[str], table: pa.Table, name: str, gid: int) -> None:
        """Write `table` as the part `name` (in read order), then remove the parts it supersedes."""
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        sections = read_order(table)
        with pq.ParquetWriter(buf, sections[0].schema, compression="zstd") as out:
            for section in sections:  # row groups never mix sections: statistics then skip whole sections
                if section.num_rows:
                    out.write_table(section, row_group_size=ROW_GROUP)
        _write_file(fd, name, buf, gid)
        for part in old:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part, dir_fd=fd)

    def _partitions(self) -> Iterator[tuple[str, str]]:
        jobs = self.root / JOBS
        for account_dir in sorted(os.listdir(jobs)) if jobs.is_dir() else []:
            if account_dir.startswith("account="):
                for month_dir in sorted(os.listdir(jobs / account_dir)):
                    if month_dir.startswith("month="):
                        yield account_dir[len("account="):], month_dir[len("month="):]

    def roll_up_all(self, watermark: int | None = None) -> int:
        """Build the rollups of every partition whose rollups are missing or older than its parts: those the
        ingest changed (once per ingest, not per window), a store from before rollups, an ingest that died
        before it got here; how many. Until then readers use rows for them (listing.list_store).
        A month the watermark has passed by a day gets no new rows: its parts become one (a reader pays
        per file it opens; a year of daily ingests would otherwise be up to MAX_PARTS files a partition)."""
        stale: dict[str, list[tuple[str, list[str]]]] = {}
        gens: dict[str, dict[str, int]] = {}  # per month, each account's last part generation
        for account, month in self._partitions():
            with self.partition(account, month) as fd:
                parts = live_parts(os.listdir(fd))
                if len(parts) > 1 and watermark is not None and watermark > month_end(month) + 86400:
                    parts = [self._merge(fd, parts, _group_id(self.readers, account))]
                if not parts:
                    continue
                gens.setdefault(month, {})[account] = last_gen(parts)
                if current_rollups(names_in(self.root / ROLLUPS / account_dir_name(account) / f"month={month}"),
                                   parts) is None:
                    stale.setdefault(month, []).append((account, parts))
        for month, partitions in stale.items():  # one query a month: most ingests change one month
            self._roll_up(month, partitions)
        for month, month_gens in gens.items():
            if not all_rollups(names_in(self.root / ALL / f"month={month}"), month_gens):
                self._roll_up_all_accounts(month, month_gens)
        return sum(len(p) for p in stale.values())

    def _roll_up_all_accounts(self, month: str, gens: dict[str, int]) -> None:
        """all/month=<month>: each kind of the accounts' (current) rollups in one file with an account column."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        digest = month_digest(gens)
        fds = [os.open(self.root, DIR_FLAGS)]
        try:
            fds.append(_mkdir_at(fds[-1], ALL, 0, DIR_MODE))
            fds.append(_mkdir_at(fds[-1], f"month={month}", 0, DIR_MODE))
            for kind in KINDS:
                tables = []
                for account, gen in sorted(gens.items()):
                    folder = self.root / ROLLUPS / account_dir_name(account) / f"month={month}"
                    t = pq.read_table(folder / f"{kind}-{gen:08d}.parquet")
                    tables.append(t.append_column("account", pa.array([account] * t.num_rows, pa.string())))
                buf = io.BytesIO()
                pq.write_table(pa.concat_tables(tables), buf, compression="zstd", row_group_size=256 * 1024)
                _write_file(fds[-1], f"{kind}-{digest}.parquet", buf, 0)
            for old in os.listdir(fds[-1]):
                m = ALL_ROLLUP_NAME.fullmatch(old)
                if m and m.group(2) != digest:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(old, dir_fd=fds[-1])
        finally:
            for fd in reversed(fds):
                os.close(fd)

    def _merge(self, fd: int, parts: list[str], gid: int) -> str:
        """All of a partition's parts as one, named by their whole generation range (it supersedes them)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.concat_tables(pq.read_table(_fd_path(fd, n), schema=arrow_schema()) for n in parts)
        name = f"part-{part_gens(parts[0])[0]:08d}-{last_gen(parts):08d}.parquet"
        self._replace(fd, parts, table, name, gid)
        return name

    def drop_rollups(self) -> None:
        """Remove every rollup (they are built again from the parts)."""
        for tree in (ROLLUPS, ALL):
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.root / tree)

    def _roll_up(self, month: str, partitions: list[tuple[str, list[str]]]) -> None:
        """Write the rollups (rollup) of a month's partitions over their parts, each named by its
        parts' last generation, then remove older ones. Readers take rollups only when their generation
        is the parts'. The parts are read by path: the ingest is root and every directory below the
        root-owned store is root's (the tree is made through directory fds)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from hpc_aidc.report.store.rollup import build

        files = [str(self.root / JOBS / account_dir_name(a) / f"month={month}" / n) for a, parts in partitions
                 for n in parts]
        tables = build(files)
        for account, parts in partitions:
            gen = last_gen(parts)
            gid = _group_id(self.readers, account)
            with self.partition(account, month, ROLLUPS) as fd:
                for kind, table in zip(KINDS, tables, strict=True):
                    mine = table.filter(pc.equal(table.column("account"), account)).drop_columns(["account"])
                    if kind == EDGES:  # rows as the parts hold them, but the summary's text
                        schema = edge_schema()
                        mine = mine.select(schema.names).cast(schema)
                    buf = io.BytesIO()
                    pq.write_table(mine, buf, compression="zstd", row_group_size=256 * 1024)
                    _write_file(fd, f"{kind}-{gen:08d}.parquet", buf, gid)
                for old in os.listdir(fd):
                    m = ROLLUP_NAME.fullmatch(old)
                    if m and int(m.group(2)) != gen:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(old, dir_fd=fd)


def _write_file(fd: int, name: str, buf: io.BytesIO, gid: int) -> None:
    """A store file, whole, owned root:<the account's group> (when root) and FILE_MODE."""
    atomic_write_at(fd, name, buf.getvalue(), FILE_MODE, (0, gid) if os.geteuid() == 0 else None, durable=False)


def read_order(table: pa.Table) -> list[pa.Table]:
    """A part's rows in three sections, each sorted by end: jobs that ran more than once, jobs that
    crossed a midnight or never ran, the rest. A report over whole days reads rows only at the period's
    edges (query): the first sections always, of the rest only row groups (a few hours of ends
    each) that statistics cannot skip."""
    import pyarrow as pa
    import pyarrow.compute as pc

    offset = time.localtime().tm_gmtoff  # local days, near enough: the order only makes reads fast

    def day(column: str) -> pa.ChunkedArray:
        return pc.floor(pc.divide(pc.add(pc.cast(table.column(column), pa.float64()), offset), 86400))

    multi = pc.fill_null(table.column("multi_run"), False)
    crossed = pc.and_(pc.fill_null(pc.not_equal(day("start"), day("end")), True), pc.invert(multi))
    ordered = table.append_column("_a", pc.invert(multi)).append_column("_b", pc.invert(crossed)).sort_by(
        [("_a", "ascending"), ("_b", "ascending"), ("end", "ascending")]).drop_columns(["_a", "_b"])
    n_multi = pc.sum(pc.cast(multi, pa.int64())).as_py() or 0
    n_crossed = pc.sum(pc.cast(crossed, pa.int64())).as_py() or 0
    return [ordered.slice(0, n_multi), ordered.slice(n_multi, n_crossed), ordered.slice(n_multi + n_crossed)]


def _keys(table: pa.Table) -> list[tuple[object, ...]]:
    return list(zip(*(table.column(c).to_pylist() for c in KEY), strict=True))


def _signatures(table: pa.Table) -> list[tuple[object, ...]]:
    """What may change in a stored row: a summary that arrived, a state, the job running again."""
    return list(zip(*(table.column(c).to_pylist() for c in _SIGNATURE), strict=True))


def _fd_path(fd: int, name: str) -> str:
    return f"/proc/self/fd/{fd}/{name}"
