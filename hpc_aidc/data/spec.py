"""Frozen descriptions of a packed dataset: the manifest (what `verify`, `info` and the loader read) and
the pack plan (what every pack task reads). Pure: JSON in, dataclasses out, with house-style errors."""

from __future__ import annotations

import json
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
    return manifest


def read_manifest(store: str | Path) -> Manifest:
    path = Path(store) / MANIFEST_NAME
    try:
        text = path.read_text()
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
