"""`verify` (every shard file: present, right size, sha256, a readable index) and `info` (a summary)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_aidc.data.shardfmt import parse_index
from hpc_aidc.data.spec import Manifest, ShardFile, open_in_store, read_manifest
from hpc_aidc.errors import DataError

_BLOCK = 8 << 20


def sha256_fd(fd: int) -> str:
    """sha256 of a whole open file (read with pread: the fd's offset is left alone)."""
    digest = hashlib.sha256()
    offset = 0
    while block := os.pread(fd, _BLOCK, offset):
        digest.update(block)
        offset += len(block)
    return digest.hexdigest()


def check_fd_digest(fd: int, name: str, expected: str | None) -> None:
    got = sha256_fd(fd)
    if expected is not None and got != expected:
        raise DataError(f"Expected sha256 {expected[:12]}… for shard {name}. Got {got[:12]}… (corrupted "
                        "shard). Re-pack or re-stage the dataset.")


def check_shard(root: Path, manifest: Manifest, f: ShardFile, full: bool = True) -> str | None:
    """None when the shard file is good, else one line naming it. The file is opened inside the store
    only (no `..`, no links: see `open_in_store`)."""
    try:
        fd = open_in_store(root, f.path)
    except FileNotFoundError:
        return f"{f.path}: missing"
    except OSError as exc:
        return f"{f.path}: {exc.strerror}"
    except DataError as exc:
        return f"{f.path}: {exc}"
    try:
        size = os.fstat(fd).st_size
        if size != f.nbytes:
            return f"{f.path}: {size} bytes, expected {f.nbytes} (truncated or overwritten)"
        if full and sha256_fd(fd) != f.sha256:
            return f"{f.path}: sha256 mismatch (corrupted)"
        spec = manifest.array(f.array)
        n = manifest.shard_samples // spec.chunk_samples
        want = 16 * n + 4
        tail = os.pread(fd, want, max(0, size - want))
    finally:
        os.close(fd)
    try:
        parse_index(tail, n, size, f.path)
    except DataError as exc:
        return f"{f.path}: {exc}"
    return None


@dataclass(frozen=True)
class VerifyReport:
    root: str
    checked: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(root: str | Path, full: bool = True,
                 progress: Callable[[int], None] | None = None) -> VerifyReport:
    root = Path(root)
    manifest = read_manifest(root)
    problems = []
    for spec in manifest.arrays:
        if not (root / spec.name / "zarr.json").is_file():
            problems.append(f"{spec.name}/zarr.json: missing")
    expected = {(a.name, i) for a in manifest.arrays for i in range(manifest.num_shards)}
    listed = {(f.array, f.index) for f in manifest.files}
    problems += [f"{a}: shard {i} not in the manifest" for a, i in sorted(expected - listed)]
    for f in manifest.files:
        problem = check_shard(root, manifest, f, full)
        if problem:
            problems.append(problem)
        if progress is not None:
            progress(1)
    return VerifyReport(str(root), len(manifest.files), tuple(problems))


def raise_if_bad(report: VerifyReport) -> None:
    if report.problems:
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise DataError(f"Expected every shard of {report.root} intact. Got {report.problems[0]}{more}. "
                        "Re-pack the dataset, or re-stage it if this is a staged copy.")


def store_info(root: str | Path) -> dict[str, Any]:
    root = Path(root)
    manifest = read_manifest(root)
    total = sum(f.nbytes for f in manifest.files)
    return {
        "path": str(root),
        "kind": manifest.kind,
        "num_samples": manifest.num_samples,
        "num_shards": manifest.num_shards,
        "shard_samples": manifest.shard_samples,
        "compression": manifest.compression,
        "arrays": {a.name: {"dtype": a.dtype, "sample_shape": list(a.sample_shape),
                            "chunk_samples": a.chunk_samples} for a in manifest.arrays},
        "bytes": total,
        "num_tokens": manifest.num_tokens,
        "dropped_tokens": manifest.dropped_tokens,
        "num_documents": manifest.num_documents,
        "tokenizer": dict(manifest.tokenizer) if manifest.tokenizer else None,
        "zarr_format": json.loads((root / "zarr.json").read_text()).get("zarr_format")
        if (root / "zarr.json").exists() else None,
        "files_on_disk": sum(1 for f in manifest.files if os.path.exists(root / f.path)),
    }
