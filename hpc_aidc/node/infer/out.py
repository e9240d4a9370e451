"""Writing inference outputs (edge): every output shard is written under a temporary name and moved into
place whole, so a reader (or a rerun) sees a shard completely or not at all.

- generate: JSONL or Parquet rows with the same schema on every row, error rows included:
  id, input, output, tokens, input_tokens, finish_reason (stop | length | error), error.
  The id has the input's id type (the plan's `id_type`): a JSON integer / Parquet int64, or a string.
- score: loglik.zarr (float64, NaN for error rows) and n_tokens.zarr (int32), plus the per-shard rows file
  (id, loglik, n_tokens, error).
- embed: embeddings.zarr [rows, width] float32 (NaN rows for errors), plus the per-shard rows file
  (id, n_tokens, error).
Zarr arrays are v3 with the sharding codec, one zarr shard per input shard; each task writes its shard
into a private temporary array and renames the shard file into the shared array (no two writers ever
touch one shard file), so zarr-python, tensorstore and pyarrow read the results."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpc_aidc.fsutil import DIR_FLAGS, atomic_write_at, atomic_write_bytes, atomic_write_text

GENERATE_COLUMNS = ("id", "input", "output", "tokens", "input_tokens", "finish_reason", "error")
SCORE_COLUMNS = ("id", "loglik", "n_tokens", "error")
EMBED_COLUMNS = ("id", "n_tokens", "error")
COLUMNS = {"generate": GENERATE_COLUMNS, "score": SCORE_COLUMNS, "embed": EMBED_COLUMNS}


def write_rows(path: Path, rows: Sequence[dict[str, Any]], task: str, fmt: str, *, id_type: str) -> None:
    """The shard's rows file (JSONL or Parquet), atomically; `id_type` ("int" or "str", the plan's) types
    the Parquet id column, so every shard of a run has the same schema."""
    columns = COLUMNS[task]
    if fmt == "jsonl":
        text = "".join(json.dumps({c: r.get(c) for c in columns}, ensure_ascii=False) + "\n" for r in rows)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        return
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"id": pa.int64() if id_type == "int" else pa.string(), "input": pa.string(), "output": pa.string(),
             "tokens": pa.list_(pa.int64()), "input_tokens": pa.int64(), "finish_reason": pa.string(),
             "error": pa.string(), "loglik": pa.float64(), "n_tokens": pa.int64()}
    schema = pa.schema([(c, types[c]) for c in columns])
    table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def write_zarr_shard(out: Path, name: str, k: int, first_row: int, values: Any, total_rows: int,
                     rows_per_shard: int) -> None:
    """Rows [first_row, first_row + len(values)) of OUT/<name>.zarr (shape [total_rows, ...]); the
    array's metadata is the same for every shard, so whichever shard comes first writes it."""
    import numpy as np
    import zarr

    values = np.asarray(values)
    shape = (total_rows, *values.shape[1:])
    shard_shape = (rows_per_shard, *values.shape[1:])
    inner = (min(rows_per_shard, max(1, 65536 // max(1, int(np.prod(values.shape[1:]) or 1)))), *values.shape[1:])
    while rows_per_shard % inner[0]:
        inner = (inner[0] - 1, *inner[1:])
    fill = float("nan") if values.dtype.kind == "f" else 0
    tmp = out / ".tmp" / f"{name}-{k}-{os.getpid()}.zarr"
    shutil.rmtree(tmp, ignore_errors=True)
    arr = zarr.create_array(store=str(tmp), shape=shape, chunks=inner, shards=shard_shape, dtype=values.dtype,
                            fill_value=fill, overwrite=True)
    arr[first_row:first_row + len(values)] = values
    final = out / f"{name}.zarr"
    final.mkdir(parents=True, exist_ok=True)
    if not (final / "zarr.json").exists():
        atomic_write_bytes(final / "zarr.json", (tmp / "zarr.json").read_bytes())
    key = Path("c", str(first_row // rows_per_shard), *("0" for _ in values.shape[1:]))
    source = tmp / key
    if source.exists():  # zarr skips a shard that holds only the fill value
        (final / key).parent.mkdir(parents=True, exist_ok=True)
        dir_fd = os.open(final / key.parent, DIR_FLAGS)
        try:
            atomic_write_at(dir_fd, key.name, source.read_bytes(), 0o644)
        finally:
            os.close(dir_fd)
    shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(value, sort_keys=True))
