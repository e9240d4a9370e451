"""Inputs of batch inference: a packed Zarr store, JSONL, plain text (one item per line) or Parquet, split
into input shards that every array task derives the same way (the plan is computed once at submit and
stored with the output). Each shard has a checksum, so a completion record names exactly the input it
covers, and every row a stable id (its global index, or the input's `id` field).

Ids keep their type: a JSONL `id` that is a JSON integer (never a boolean) or string, or a Parquet `id`
column of integers or strings, comes back in the outputs as it came in; an id that defaults to the row's
global index is an integer. One input has ids of one type: the plan records it (`id_type`), so every task
writes the same id column, also for a shard whose rows all have default ids, and a JSONL input that mixes
integer and string ids is refused when it is planned (`plan_inputs`), naming the first row that differs.

Reading never raises for one bad row: undecodable text, invalid JSON, a missing or null text field becomes
a row that carries its error, and the run records it and goes on. An empty text ("" or whitespace) is not
an error here: it is tokenised like any other (an encoder's tokenizer adds its special tokens, so it has an
embedding); the task runner records "empty after tokenisation" for a model that gives it no tokens."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpc_aidc.errors import DataError, expected

if TYPE_CHECKING:
    import numpy.typing as npt

DEFAULT_ROWS_PER_SHARD = 1024
_SCAN_BLOCK = 8 << 20
ID_TYPES = ("int", "str")
_INT64 = (-(1 << 63), (1 << 63) - 1)


@dataclass(frozen=True)
class InputShard:
    index: int
    first_row: int  # global index of the shard's first row
    rows: int
    sha256: str
    start: int = 0  # byte range (jsonl, text) or row range (parquet); unused for zarr
    end: int = 0


@dataclass(frozen=True)
class InputPlan:
    kind: str  # zarr | jsonl | text | parquet
    path: str
    field: str
    shards: tuple[InputShard, ...]
    # The type of the output id column: "int" (integer ids, or none: the row index) or "str" (string ids;
    # a row without one gets its index as a string). A plan written before ids kept their type reads as
    # "str", which is what its tasks wrote.
    id_type: str = "int"

    @property
    def num_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def rows_per_shard(self) -> int:
        return max((s.rows for s in self.shards), default=1)

    def output_id(self, row_id: str) -> int | str:
        """A row's id as the outputs carry it: `Row.id` (its string form) in the plan's id type."""
        return int(row_id) if self.id_type == "int" else row_id

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "field": self.field, "id_type": self.id_type,
                "shards": [asdict(s) for s in self.shards]}


def plan_from_json(d: dict[str, Any]) -> InputPlan:
    id_type = str(d.get("id_type", "str"))  # absent: a plan of a version whose ids were all strings
    if id_type not in ID_TYPES:
        raise ValueError(f"id_type {id_type!r} is not one of {ID_TYPES}")
    return InputPlan(str(d["kind"]), str(d["path"]), str(d["field"]),
                     tuple(InputShard(**s) for s in d["shards"]), id_type)


@dataclass(frozen=True)
class Row:
    """One input item: text, or token ids (packed stores), or the reason it cannot be used.

    `id` is the string form of the row's id, its key (sampling seeds, messages): the same for the
    integer 7 and the string "7", so seeds do not depend on the id's type. The outputs carry it in the
    plan's id type (`InputPlan.output_id`)."""

    id: str
    text: str | None = None
    tokens: npt.NDArray[Any] | None = None
    error: str | None = None


def detect_kind(path: Path) -> str:
    if path.is_dir():
        if (path / "manifest.json").exists():
            return "zarr"
        raise DataError(expected("a packed Zarr store (a directory with manifest.json), a .jsonl, .txt or "
                                 ".parquet file", str(path), "Pack the data with `hpcai data pack` or pass a file."))
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    return "text"


def plan_inputs(path: str | Path, field: str = "text", rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
                kind: str | None = None) -> InputPlan:
    """Shards and checksums of an input (reads it once)."""
    p = Path(path).resolve()
    if not p.exists():
        raise DataError(expected("an existing --input", str(path), "Check the path."))
    if rows_per_shard < 1:
        raise DataError(expected("--rows-per-shard >= 1", rows_per_shard, "Pass a positive row count."))
    kind = kind or detect_kind(p)
    id_type = "int"
    if kind == "zarr":
        shards = _plan_zarr(p)
    elif kind == "parquet":
        shards = _plan_parquet(p, field, rows_per_shard)
        id_type = _parquet_id_type(p, field)
    elif kind == "jsonl":
        _check_field(p, field)
        ids = _IdScan(p, rows_per_shard)
        shards = _plan_lines(p, rows_per_shard, ids.line)
        id_type = ids.id_type
    else:
        shards = _plan_lines(p, rows_per_shard)
    if not shards or not any(s.rows for s in shards):
        raise DataError(expected("an input with at least one row", str(p), "Check the file is not empty."))
    return InputPlan(kind, str(p), field, tuple(shards), id_type)


def _plan_lines(path: Path, rows_per_shard: int,
                on_line: Callable[[int, bytes], None] | None = None) -> list[InputShard]:
    """Line offsets in one pass: a shard is rows_per_shard lines (the last line may lack its newline).
    `on_line(row, line)` sees every line (without its newline) in the same pass."""
    shards: list[InputShard] = []
    size = path.stat().st_size
    row = 0  # global index of the line being read
    tail: list[bytes] = []  # the start of a line that block boundaries cut (only kept for on_line)
    with path.open("rb") as fh:
        start = pos = 0
        rows = 0
        digest = hashlib.sha256()
        while block := fh.read(_SCAN_BLOCK):
            at = 0
            while True:
                nl = block.find(b"\n", at)
                if nl < 0:
                    digest.update(block[at:])
                    pos += len(block) - at
                    if on_line is not None:
                        tail.append(block[at:])
                    break
                digest.update(block[at:nl + 1])
                if on_line is not None:
                    on_line(row, b"".join([*tail, block[at:nl]]) if tail else block[at:nl])
                    tail.clear()
                row += 1
                pos += nl + 1 - at
                at = nl + 1
                rows += 1
                if rows == rows_per_shard:
                    shards.append(InputShard(len(shards), len(shards) * rows_per_shard, rows, digest.hexdigest(),
                                             start, pos))
                    start, rows, digest = pos, 0, hashlib.sha256()
    if pos > start:  # a last line without a newline is a row too
        last = 0 if size == 0 or _ends_with_newline(path) else 1
        if last and on_line is not None:
            on_line(row, b"".join(tail))
        rows += last
        shards.append(InputShard(len(shards), len(shards) * rows_per_shard, rows, digest.hexdigest(), start, pos))
    return shards


def json_id(obj: dict[str, Any]) -> int | str | None:
    """A JSON object's row id: its `id` when that is an integer (a boolean is not) or a string, else None
    (the row's index stands in)."""
    value = obj.get("id")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    return value


class _IdScan:
    """The id type of a JSONL input, checked on every row while `_plan_lines` reads it.

    Why here: the planner already reads every byte of a JSONL input once (the shard checksums), so this is
    the one pass that sees every row; a sample could not promise the tasks one id type. To keep it cheap a
    line is parsed only when its bytes can hold an `id` key: a key is a JSON string, so it is `"id"`
    written out or spelt with a \\u escape; a line with neither has no id (its index stands in). A line
    that is not UTF-8 or not JSON is skipped here: reading it gives an error row, whose id is its index.
    The first row whose id has the other type (or an integer outside int64, which no id column holds)
    refuses the input with its row, line and shard. Cost, measured here on 100 MB: rows of 100 bytes with
    ids 2.4 s instead of 0.4 s for the checksums alone (Python's per-row overhead), rows of 2 KB 0.3 s
    instead of 0.1 s, rows without ids 0.6 s."""

    def __init__(self, path: Path, rows_per_shard: int) -> None:
        self.path, self.rows_per_shard = path, rows_per_shard
        self.first: tuple[str, int] | None = None  # (type, row) of the first row with an id

    @property
    def id_type(self) -> str:
        return self.first[0] if self.first else "int"

    def line(self, row: int, raw: bytes) -> None:
        if b'"id"' not in raw and b"\\u" not in raw:
            return
        try:
            obj = json.loads(raw.removesuffix(b"\r").decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            return
        value = json_id(obj) if isinstance(obj, dict) else None
        if value is None:
            return
        where = f"row {row} (line {row + 1}, shard {row // self.rows_per_shard})"
        if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
            raise DataError(expected(f"integer ids in the int64 range in {self.path}", f"{value} at {where}",
                                     "Give that row a smaller id, or quote the ids."))
        kind = "str" if isinstance(value, str) else "int"
        if self.first is None:
            self.first = (kind, row)
        elif kind != self.first[0]:
            raise DataError(expected(
                f"row ids of one type in {self.path} (all integers or all strings)",
                f"ids of two types, integer and string: the first {_TYPE_NAMES[kind]} id is {value!r} at {where}, "
                f"after {_TYPE_NAMES[self.first[0]]} ids from row {self.first[1]} on",
                "Give every row an id of one type (quote the integers, or leave ids out) and submit again."))


_TYPE_NAMES = {"int": "integer", "str": "string"}


def _check_field(path: Path, field: str, sample: int = 1000) -> None:
    """A field that none of the first rows has is a wrong --field, not a thousand bad rows."""
    keys: set[str] = set()
    with path.open("rb") as fh:
        for _, raw in zip(range(sample), fh, strict=False):
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict):
                if field in obj:
                    return
                keys.update(obj)
    if keys:
        raise DataError(expected(f"a field {field!r} in the rows of {path}", sorted(keys)[:10],
                                 "Pass --field with the name of the text field."))


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def _plan_zarr(path: Path) -> list[InputShard]:
    from hpc_aidc.data.spec import SAMPLES, read_manifest, shard_bounds

    m = read_manifest(path)
    out = []
    for f in m.shard_files(SAMPLES):
        lo, hi = shard_bounds(f.index, m.shard_samples, m.num_samples)
        out.append(InputShard(f.index, lo, hi - lo, f.sha256))
    return out


def _plan_parquet(path: Path, field: str, rows_per_shard: int) -> list[InputShard]:
    """Shards of rows_per_shard rows (start/end: the row range); a shard's checksum covers the bytes of
    the row groups it reads and its range."""
    pq = _pyarrow_parquet()
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    if field not in names:
        raise DataError(expected(f"a column {field!r} in {path} (--field)", names, "Pass --field COLUMN."))
    groups = []  # (first row, rows, byte range)
    first = 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        cols = [rg.column(i) for i in range(rg.num_columns)]
        lo = min(min(c.data_page_offset, c.dictionary_page_offset or c.data_page_offset) for c in cols)
        hi = max(lo + c.total_compressed_size for c in cols)
        groups.append((first, rg.num_rows, lo, max(hi, max(c.data_page_offset + c.total_compressed_size
                                                                for c in cols))))
        first += rg.num_rows
    out = []
    with path.open("rb") as fh:
        for k, start in enumerate(range(0, first, rows_per_shard)):
            end = min(first, start + rows_per_shard)
            digest = hashlib.sha256(f"{start}:{end}".encode())
            for g0, n, lo, hi in groups:
                if g0 < end and g0 + n > start:
                    fh.seek(lo)
                    digest.update(fh.read(hi - lo))
            out.append(InputShard(k, start, end - start, digest.hexdigest(), start, end))
    return out


def _parquet_id_type(path: Path, field: str) -> str:
    """The id type of a Parquet input, from its schema (a column has one type): "int" for an integer `id`
    column (uint64: when its values fit int64) or none, "str" for any other `id` column (strings; other
    types keep their string form, as before ids kept their type)."""
    pq = _pyarrow_parquet()
    import pyarrow as pa

    schema = pq.ParquetFile(path).schema_arrow
    if "id" not in schema.names or field == "id":
        return "int"
    kind = schema.field("id").type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if not pa.types.is_integer(kind):
        return "str"
    if pa.types.is_uint64(kind):
        import pyarrow.compute as pc

        top = pc.max(pq.read_table(path, columns=["id"]).column("id")).as_py()
        if top is not None and top > _INT64[1]:
            raise DataError(expected(f"an id column whose values fit int64 in {path}", f"uint64 values up to {top}",
                                     "Cast the id column to strings or smaller integers."))
    return "int"


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("Expected pyarrow for Parquet input. Got it not installed. "
                        "Install hpc-aidc with the [infer] extra.") from None
    return pq


def read_shard(plan: InputPlan, shard: InputShard) -> list[Row]:
    """The rows of one input shard, in input order."""
    if plan.kind == "zarr":
        return _read_zarr(plan, shard)
    if plan.kind == "parquet":
        return _read_parquet(plan, shard)
    with open(plan.path, "rb") as fh:
        fh.seek(shard.start)
        data = fh.read(shard.end - shard.start)
    if hashlib.sha256(data).hexdigest() != shard.sha256:
        raise DataError(f"Expected input shard {shard.index} of {plan.path} to be unchanged since submission. "
                        "Got other bytes. Inputs must not change under a run: submit to a new --output.")
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [_line_row(plan, shard.first_row + i, raw) for i, raw in enumerate(lines)]


def _line_row(plan: InputPlan, index: int, raw: bytes) -> Row:
    rid = str(index)
    raw = raw.removesuffix(b"\r")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Row(rid, error=f"invalid UTF-8 at byte {exc.start}")
    if plan.kind == "jsonl":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            return Row(rid, error=f"invalid JSON: {exc.msg}")
        except (ValueError, RecursionError) as exc:  # an integer of too many digits, too deep a nesting
            return Row(rid, error=f"invalid JSON: {exc}"[:300])
        if not isinstance(obj, dict):
            return Row(rid, error="a JSON line that is not an object")
        given = json_id(obj)
        if given is not None:
            rid = str(given)
        value = obj.get(plan.field)
        if not isinstance(value, str):
            return Row(rid, error=f"no text field {plan.field!r}" if value is None
                       else f"field {plan.field!r} is not text")
        text = value
    return Row(rid, text=text)  # empty text too: tokenisation decides (module docstring)


def _read_zarr(plan: InputPlan, shard: InputShard) -> list[Row]:
    from hpc_aidc.data.reader import ShardedArray
    from hpc_aidc.data.spec import SAMPLES, read_manifest

    manifest = read_manifest(plan.path)
    files = {f.index: f for f in manifest.shard_files(SAMPLES)}
    if files.get(shard.index) is None or files[shard.index].sha256 != shard.sha256:
        raise DataError(f"Expected shard {shard.index} of {plan.path} to be unchanged since submission. Got "
                        "another checksum in its manifest. Submit to a new --output.")
    arr = ShardedArray(plan.path, manifest, SAMPLES)
    try:
        block = arr.take(range(shard.first_row, shard.first_row + shard.rows))
    finally:
        arr.close()
    return [Row(str(shard.first_row + i), tokens=block[i]) for i in range(shard.rows)]


def _read_parquet(plan: InputPlan, shard: InputShard) -> list[Row]:
    pq = _pyarrow_parquet()
    pf = pq.ParquetFile(plan.path)
    names = pf.schema_arrow.names
    columns = [plan.field] + (["id"] if "id" in names and plan.field != "id" else [])
    texts: list[Any] = []
    ids: list[Any] = []
    first = 0
    for g in range(pf.metadata.num_row_groups):  # only the row groups the shard's rows are in
        n = pf.metadata.row_group(g).num_rows
        if first < shard.end and first + n > shard.start:
            table = pf.read_row_group(g, columns=columns)
            lo, hi = max(shard.start - first, 0), min(shard.end - first, n)
            texts += table.column(plan.field).to_pylist()[lo:hi]
            ids += (table.column("id").to_pylist()[lo:hi] if "id" in columns else [None] * (hi - lo))
        first += n
    rows = []
    for i, (text, rid) in enumerate(zip(texts, ids, strict=True)):
        key = str(rid) if rid is not None else str(shard.first_row + i)
        if not isinstance(text, str):
            rows.append(Row(key, error=f"field {plan.field!r} is not text" if text is not None else "null input"))
        else:
            rows.append(Row(key, text=text))  # empty text too: tokenisation decides (module docstring)
    return rows


def iter_rows(plan: InputPlan) -> Iterator[Row]:
    for shard in plan.shards:
        yield from read_shard(plan, shard)
