"""Inputs of batch inference: a packed Zarr store, JSONL, plain text (one item per line) or Parquet, split
into input shards that every array task derives the same way (the plan is computed once at submit and
stored with the output). Each shard has a checksum, so a completion record names exactly the input it
covers, and every row a stable id (its global index, or the input's `id` field).

Reading never raises for one bad row: undecodable text, invalid JSON, a missing field or an empty item
becomes a row that carries its error, and the run records it and goes on."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpc_aidc.errors import DataError, expected

if TYPE_CHECKING:
    import numpy.typing as npt

DEFAULT_ROWS_PER_SHARD = 1024
_SCAN_BLOCK = 8 << 20


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

    @property
    def num_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def rows_per_shard(self) -> int:
        return max((s.rows for s in self.shards), default=1)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "field": self.field,
                "shards": [asdict(s) for s in self.shards]}


def plan_from_json(d: dict[str, Any]) -> InputPlan:
    return InputPlan(str(d["kind"]), str(d["path"]), str(d["field"]),
                     tuple(InputShard(**s) for s in d["shards"]))


@dataclass(frozen=True)
class Row:
    """One input item: text, or token ids (packed stores), or the reason it cannot be used."""

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
    if kind == "zarr":
        shards = _plan_zarr(p)
    elif kind == "parquet":
        shards = _plan_parquet(p, field, rows_per_shard)
    else:
        shards = _plan_lines(p, rows_per_shard)
        if kind == "jsonl":
            _check_field(p, field)
    if not shards or not any(s.rows for s in shards):
        raise DataError(expected("an input with at least one row", str(p), "Check the file is not empty."))
    return InputPlan(kind, str(p), field, tuple(shards))


def _plan_lines(path: Path, rows_per_shard: int) -> list[InputShard]:
    """Line offsets in one pass: a shard is rows_per_shard lines (the last line may lack its newline)."""
    shards: list[InputShard] = []
    size = path.stat().st_size
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
                    break
                digest.update(block[at:nl + 1])
                pos += nl + 1 - at
                at = nl + 1
                rows += 1
                if rows == rows_per_shard:
                    shards.append(InputShard(len(shards), len(shards) * rows_per_shard, rows, digest.hexdigest(),
                                             start, pos))
                    start, rows, digest = pos, 0, hashlib.sha256()
    if pos > start:  # a last line without a newline is a row too
        rows += 0 if size == 0 or _ends_with_newline(path) else 1
        shards.append(InputShard(len(shards), len(shards) * rows_per_shard, rows, digest.hexdigest(), start, pos))
    return shards


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
        if not isinstance(obj, dict):
            return Row(rid, error="a JSON line that is not an object")
        if "id" in obj and isinstance(obj["id"], (str, int)) and not isinstance(obj["id"], bool):
            rid = str(obj["id"])
        value = obj.get(plan.field)
        if not isinstance(value, str):
            return Row(rid, error=f"no text field {plan.field!r}" if value is None
                       else f"field {plan.field!r} is not text")
        text = value
    if not text.strip():
        return Row(rid, error="empty input")
    return Row(rid, text=text)


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
        elif not text.strip():
            rows.append(Row(key, error="empty input"))
        else:
            rows.append(Row(key, text=text))
    return rows


def iter_rows(plan: InputPlan) -> Iterator[Row]:
    for shard in plan.shards:
        yield from read_shard(plan, shard)
