"""Frozen descriptions of a packed dataset: the manifest (what `verify`, `info` and the loader read) and
the pack plan (what every pack task reads). Pure: JSON in, dataclasses out, with house-style errors;
`read_manifest` and `open_in_store` are the only file access.

A store may come from someone else (a shared dataset on the parallel filesystem), so its manifest is
input to check: shard paths and array names are relative paths without `.`/`..`/empty parts, and shard
files are opened one path component at a time relative to the store's directory, never following a
link, so nothing outside the store is ever read through it."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpc_aidc.errors import DataError

MANIFEST_NAME = "manifest.json"
PACK_DIR = ".pack"
FORMAT_VERSION = 1
COMPRESSIONS = ("none", "zstd", "blosc")
SAMPLES = "samples"


@dataclass(frozen=True)
class ArraySpec:
    """One per-sample Zarr array of the store: samples, labels or a metadata array."""

    name: str
    dtype: str
    sample_shape: tuple[int, ...]
    chunk_samples: int

    @property
    def ndim(self) -> int:
        return 1 + len(self.sample_shape)


@dataclass(frozen=True)
class ShardFile:
    """One shard file on disk with its checksum; `index` is the shard number along the sample axis."""

    array: str
    index: int
    path: str  # relative to the store root
    nbytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    kind: str  # "tokens" or "samples"
    num_samples: int
    shard_samples: int
    compression: str
    arrays: tuple[ArraySpec, ...]
    files: tuple[ShardFile, ...]
    tokenizer: Mapping[str, Any] | None = None
    num_tokens: int = 0
    dropped_tokens: int = 0
    num_documents: int = 0
    sources: tuple[str, ...] = ()
    version: int = FORMAT_VERSION

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_samples)

    def array(self, name: str) -> ArraySpec:
        for spec in self.arrays:
            if spec.name == name:
                return spec
        raise DataError(
            f"Expected an array named {name!r} in the dataset ({', '.join(a.name for a in self.arrays)}). "
            f"Got no such array. Pick one of those."
        )

    def shard_files(self, array: str) -> tuple[ShardFile, ...]:
        return tuple(f for f in self.files if f.array == array)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


def shard_key(index: int, ndim: int) -> str:
    """The Zarr v3 default chunk key of shard `index` along axis 0 (the other axes have one shard)."""
    return "c/" + "/".join([str(index)] + ["0"] * (ndim - 1))


def shard_bounds(index: int, shard_samples: int, num_samples: int) -> tuple[int, int]:
    start = index * shard_samples
    return start, min(num_samples, start + shard_samples)


def store_relpath(rel: str, store: str = "<memory>") -> tuple[str, ...]:
    """The parts of a path inside a store: relative, no empty, `.` or `..` part, no NUL.
    DataError (one line) otherwise: a manifest naming `../../x` or `/etc/x` is refused, not followed."""
    parts = tuple(rel.split("/"))
    if rel.startswith("/") or "\0" in rel or any(p in ("", ".", "..") for p in parts):
        raise DataError(
            f"Expected a relative path inside the store {store} (no '..', no leading '/'). Got {rel!r} "
            "instead. The manifest was edited or not written by `hpcai data pack`: re-pack the dataset."
        )
    return parts


def open_in_store(root: str | Path, rel: str) -> int:
    """A read-only fd of the regular file `rel` inside the store `root`: opened relative to the store's
    directory, one component at a time with O_NOFOLLOW, so neither `..` nor a symbolic link anywhere
    under the store can lead outside it. OSError (e.g. FileNotFoundError) when it is not there;
    DataError for a link or anything but a regular file."""
    parts = store_relpath(rel, str(root))
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the store itself may be a link
    try:
        for part in parts[:-1]:
            sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = sub
        # O_NONBLOCK: a FIFO under the name must not hang the reader (regular files ignore it)
        file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise DataError(
                f"Expected {rel} inside the store {root} as plain files and folders. Got a symbolic link or "
                "a file where a folder belongs (a link could lead outside the store). Re-pack the dataset, "
                "or copy it without links."
            ) from None
        raise
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        raise DataError(f"Expected {rel} in the store {root} to be a regular file. Got something else (a "
                        "device, pipe or folder). Re-pack the dataset.")
    os.set_blocking(file_fd, True)
    return file_fd


def _bad(store: str, what: str, got: object) -> DataError:
    return DataError(
        f"Expected {what} in {store}/{MANIFEST_NAME}. Got {got!r} instead. "
        "Re-run `hpcai data pack` for this dataset (an interrupted pack resumes)."
    )


def parse_manifest(data: Mapping[str, Any], store: str = "<memory>") -> Manifest:
    try:
        version = int(data["version"])
        if version != FORMAT_VERSION:
            raise _bad(store, f"format version {FORMAT_VERSION}", version)
        arrays = tuple(
            ArraySpec(name=str(a["name"]), dtype=str(a["dtype"]),
                      sample_shape=tuple(int(x) for x in a["sample_shape"]),
                      chunk_samples=int(a["chunk_samples"]))
            for a in data["arrays"]
        )
        files = tuple(
            ShardFile(array=str(f["array"]), index=int(f["index"]), path=str(f["path"]),
                      nbytes=int(f["nbytes"]), sha256=str(f["sha256"]))
            for f in data["files"]
        )
        manifest = Manifest(
            kind=str(data["kind"]), num_samples=int(data["num_samples"]),
            shard_samples=int(data["shard_samples"]),
            compression=str(data["compression"]), arrays=arrays, files=files,
            tokenizer=data.get("tokenizer"), num_tokens=int(data.get("num_tokens", 0)),
            dropped_tokens=int(data.get("dropped_tokens", 0)),
            num_documents=int(data.get("num_documents", 0)),
            sources=tuple(str(s) for s in data.get("sources", ())), version=version,
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise _bad(store, "a complete hpc-aidc manifest", f"{type(exc).__name__}: {exc}") from None
    if manifest.num_samples < 1 or manifest.shard_samples < 1 or min(a.chunk_samples for a in arrays) < 1:
        raise _bad(store, "positive sample, shard and chunk counts",
                   (manifest.num_samples, manifest.shard_samples))
    for spec in arrays:
        if len(store_relpath(spec.name, store)) != 1:
            raise _bad(store, "array names without '/'", spec.name)
    for f in files:
        store_relpath(f.path, store)
    return manifest


def read_manifest(store: str | Path) -> Manifest:
    path = Path(store) / MANIFEST_NAME
    try:
        fd = open_in_store(store, MANIFEST_NAME)
        with os.fdopen(fd, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except FileNotFoundError:
        pending = (Path(store) / PACK_DIR).is_dir()
        hint = ("The pack did not finish: re-run the same `hpcai data pack` command to finish it."
                if pending else "Point at a directory written by `hpcai data pack`.")
        raise DataError(
            f"Expected a packed dataset with {MANIFEST_NAME} at {store}. Got no manifest. {hint}") from None
    except OSError as exc:
        raise DataError(
            f"Expected a readable {path}. Got {exc.strerror}. Check the path and permissions.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(str(store), "valid JSON", str(exc)) from None
    return parse_manifest(data, str(store))


@dataclass(frozen=True)
class Source:
    """One input file of a pack, with the count of tokens (token data) or samples it contributes."""

    path: str
    kind: str  # bin, npy, text, jsonl, image
    count: int
    label: int | None = None  # image folders: the class index from the sub-folder name


@dataclass(frozen=True)
class PackPlan:
    """Everything a pack task needs, written once to <out>/.pack/plan.json before any shard is written."""

    kind: str
    sources: tuple[Source, ...]
    num_samples: int
    shard_samples: int
    compression: str
    arrays: tuple[ArraySpec, ...]
    seq_len: int = 0
    token_dtype_in: str = "uint16"  # dtype of raw .bin inputs
    tokenizer: Mapping[str, Any] | None = None
    extras: Mapping[str, str] = field(default_factory=dict)  # array name -> .npy path
    num_tokens: int = 0
    num_documents: int = 0

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_samples)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


def parse_plan(data: Mapping[str, Any]) -> PackPlan:
    return PackPlan(
        kind=data["kind"],
        sources=tuple(Source(**s) for s in data["sources"]),
        num_samples=int(data["num_samples"]), shard_samples=int(data["shard_samples"]),
        compression=str(data["compression"]),
        arrays=tuple(ArraySpec(a["name"], a["dtype"], tuple(a["sample_shape"]), int(a["chunk_samples"]))
                     for a in data["arrays"]),
        seq_len=int(data["seq_len"]), token_dtype_in=str(data["token_dtype_in"]),
        tokenizer=data.get("tokenizer"), extras=dict(data.get("extras", {})),
        num_tokens=int(data["num_tokens"]), num_documents=int(data["num_documents"]),
    )
