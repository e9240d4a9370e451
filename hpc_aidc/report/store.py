"""The accounting store on disk (the edge: files). Layout under the site profile's `report_store`:

    state.json                                   watermark, longest span, jobs awaiting energy (0644)
    jobs/account=<account>/month=<YYYY-MM>/part-<n>.parquet    rows of store_table.COLUMNS
    rollups/account=<account>/month=<YYYY-MM>/{days,waits,edges,months}-<gen>.parquet    sums by day and
                                                        month, queue waits, edge rows (store_rollup)
    all/month=<YYYY-MM>/{days,waits,edges,months}-<digest>.parquet    the same for every account (root's)

`jobs/account=<a>`, `rollups/account=<a>` and everything below them belong to root and the Unix group named
like the account (when there is one; else root's group), mode 0750/0640: a project's members read its rows,
nobody else can, whatever path they try. `all/` (every account's rollups of a month in one file of each
kind, named by a digest of the partitions' generations they sum, so that a report over every account opens
a file of each kind a month, not one per account) is root's alone. Only the ingest writes (as root, under a
lock), each file whole (temporary file + rename), so a reader sees the old or the new file, never half of
one; a reader that lists a part the ingest has just merged away retries once.

Upsert: rows are keyed by store_table.KEY. A row whose key is stored with the same summary and
state is skipped; one that changed (a summary that arrived late) replaces the stored row; new rows go
to a new part. A partition of more than MAX_PARTS parts merges its newest parts (all but the oldest, or all when the
newest together outgrow the oldest)."""

from __future__ import annotations

import contextlib
import grp
import hashlib
import io
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hpc_aidc.errors import AccessError, ConfigError
from hpc_aidc.fsutil import DIR_FLAGS, atomic_write_at, file_lock
from hpc_aidc.report.store_rollup import EDGES, KINDS, Rollups
from hpc_aidc.report.store_table import KEY, SCHEMA_VERSION, arrow_schema, edge_schema

if TYPE_CHECKING:
    import pyarrow as pa

STATE = "state.json"
JOBS = "jobs"
ROLLUPS = "rollups"  # a tree of its own, so engines reading jobs/ see one schema
ALL = "all"  # every account's rollups of a month together (root's alone)
LOCK = ".ingest.lock"
MAX_PARTS = 8
ROW_GROUP = 4096  # rows: small enough that a report over whole days skips most of a part (read_order)
_SIGNATURE = ("comment_hash", "state", "multi_run")
DIR_MODE = 0o750
FILE_MODE = 0o640
_ACCOUNT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_PART = re.compile(r"part-([0-9]{8})-([0-9]{8})\.parquet")
_ROLLUP = re.compile(r"(days|waits|edges|months)-([0-9]{8})\.parquet")
_ALL_ROLLUP = re.compile(r"(days|waits|edges|months)-([0-9a-f]{16})\.parquet")


@dataclass(frozen=True)
class StoreState:
    """What the store holds: every allocation that ended at or before `watermark` (None: nothing yet)."""

    watermark: int | None = None
    max_span_s: int = 0  # longest end - (start or submit) stored: how far back a month's jobs began
    awaiting: tuple[str, ...] = field(default=())  # job ids stored while their energy was still spooled
    schema: int = SCHEMA_VERSION
    days_zone: str | None = None  # the time zone whose local days the rollups sum (store_rollup.local_zone)


def account_dir_name(account: str) -> str:
    if not _ACCOUNT.fullmatch(account):
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


def _group_id(account: str) -> int:
    try:
        return grp.getgrnam(account).gr_gid
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

    def __init__(self, root: Path) -> None:
        self.root = root

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
        """A directory fd on `<tree>/account=<account>/month=<month>`, created root:<group> 0750."""
        gid = _group_id(account)
        fds = [os.open(self.root, DIR_FLAGS)]
        try:
            fds.append(_mkdir_at(fds[-1], tree, 0, 0o755))
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

        gid = _group_id(account)
        with self.partition(account, month) as fd:
            names = os.listdir(fd)
            parts = live_parts(names)
            for leftover in set(n for n in names if _PART.fullmatch(n)) - set(parts):  # an ingest that died mid-swap
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
            # always contains those it supersedes: see live_parts.
            start = min((holder[k] for k in replaced), default=len(parts))
            if start + 1 > MAX_PARTS:  # parts after this write: start + 1
                sizes = [os.stat(n, dir_fd=fd).st_size for n in parts]
                start = min(start, 0 if len(parts) < 2 or sum(sizes[1:]) >= sizes[0] else 1)
            tables = [pq.read_table(_fd_path(fd, n), schema=arrow_schema()) for n in parts[start:]]
            if replaced:
                tables = [t.filter(pa.array([k not in replaced for k in _keys(t)])) for t in tables]
            tables.append(rows.take(pa.array(fresh, pa.int64())).select(list(arrow_schema().names)))
            merged = pa.concat_tables(tables)
            first = _gens(parts[start])[0] if start < len(parts) else _next_gen(parts)
            name = f"part-{first:08d}-{_next_gen(parts):08d}.parquet"
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
        before it got here; how many. Until then readers use rows for them (store.list_store).
        A month the watermark has passed by a day gets no new rows: its parts become one (a reader pays
        per file it opens; a year of daily ingests would otherwise be up to MAX_PARTS files a partition)."""
        stale: dict[str, list[tuple[str, list[str]]]] = {}
        gens: dict[str, dict[str, int]] = {}  # per month, each account's last part generation
        for account, month in self._partitions():
            with self.partition(account, month) as fd:
                parts = live_parts(os.listdir(fd))
                if len(parts) > 1 and watermark is not None and watermark > month_end(month) + 86400:
                    parts = [self._merge(fd, parts, _group_id(account))]
                if not parts:
                    continue
                gens.setdefault(month, {})[account] = last_gen(parts)
                if current_rollups(_listing(self.root / ROLLUPS / account_dir_name(account) / f"month={month}"),
                                   parts) is None:
                    stale.setdefault(month, []).append((account, parts))
        for month, partitions in stale.items():  # one query a month: most ingests change one month
            self._roll_up(month, partitions)
        for month, month_gens in gens.items():
            if not all_rollups(_listing(self.root / ALL / f"month={month}"), month_gens):
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
                m = _ALL_ROLLUP.fullmatch(old)
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
        name = f"part-{_gens(parts[0])[0]:08d}-{last_gen(parts):08d}.parquet"
        self._replace(fd, parts, table, name, gid)
        return name

    def drop_rollups(self) -> None:
        """Remove every rollup (they are built again from the parts)."""
        for tree in (ROLLUPS, ALL):
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.root / tree)

    def _roll_up(self, month: str, partitions: list[tuple[str, list[str]]]) -> None:
        """Write the rollups (store_rollup) of a month's partitions over their parts, each named by its
        parts' last generation, then remove older ones. Readers take rollups only when their generation
        is the parts'. The parts are read by path: the ingest is root and every directory below the
        root-owned store is root's (the tree is made through directory fds)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from hpc_aidc.report.store_rollup import build

        files = [str(self.root / JOBS / account_dir_name(a) / f"month={month}" / n) for a, parts in partitions
                 for n in parts]
        tables = build(files)
        for account, parts in partitions:
            gen = last_gen(parts)
            gid = _group_id(account)
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
                    m = _ROLLUP.fullmatch(old)
                    if m and int(m.group(2)) != gen:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(old, dir_fd=fd)


def _write_file(fd: int, name: str, buf: io.BytesIO, gid: int) -> None:
    """A store file, whole, owned root:<the account's group> (when root) and FILE_MODE."""
    atomic_write_at(fd, name, buf.getvalue(), FILE_MODE, (0, gid) if os.geteuid() == 0 else None, durable=False)


def month_end(month: str) -> int:
    """The local midnight that ends the month "YYYY-MM"."""
    year, number = int(month[:4]), int(month[5:7])
    year, number = (year + 1, 1) if number == 12 else (year, number + 1)
    return int(time.mktime((year, number, 1, 0, 0, 0, 0, 0, -1)))


def _listing(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def read_order(table: pa.Table) -> list[pa.Table]:
    """A part's rows in three sections, each sorted by end: jobs that ran more than once, jobs that
    crossed a midnight or never ran, the rest. A report over whole days reads rows only at the period's
    edges (store_query): the first sections always, of the rest only row groups (a few hours of ends
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


def _gens(name: str) -> tuple[int, int]:
    m = _PART.fullmatch(name)
    assert m is not None
    return int(m.group(1)), int(m.group(2))


def last_gen(parts: list[str]) -> int:
    """The newest generation a partition's parts hold: what its rollups are named by."""
    return max(_gens(n)[1] for n in parts)


def _next_gen(parts: list[str]) -> int:
    return max((_gens(n)[1] for n in parts), default=0) + 1


def live_parts(names: list[str]) -> list[str]:
    """The parts of a partition listing, oldest generation first, without those superseded by a part
    whose generation range contains theirs (a reader may list between the ingest's write of a merged
    part and its removal of the old ones)."""
    spans = sorted((_gens(n), n) for n in names if _PART.fullmatch(n))
    return [n for (a, b), n in spans if not any(c <= a and b <= d and (c, d) != (a, b) for (c, d), _ in spans)]


def current_rollups(names: list[str], parts: list[str]) -> tuple[str, ...] | None:
    """The partition's rollup files (one of each store_rollup.KINDS) when they cover exactly its live
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


def _fd_path(fd: int, name: str) -> str:
    return f"/proc/self/fd/{fd}/{name}"


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
    try:
        names = os.listdir(jobs)
    except FileNotFoundError:
        return Listing((), None, frozenset())
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
                rollups = current_rollups(_listing(r), parts)
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
