"""The Zarr v3 `sharding_indexed` shard file, read and written without zarr-python's per-chunk overhead.

A shard file is the inner chunks' encoded bytes followed by the index: one (offset, nbytes) little-endian
uint64 pair per inner chunk in C order, then the crc32c of those pairs as a little-endian uint32
(index_location "end", index_codecs [bytes, crc32c], zarr-python's default). An empty chunk is
(2**64-1, 2**64-1) and reads as the fill value (0). Our arrays are chunked along axis 0 only, so inner
chunk j of a shard holds samples [j*chunk, (j+1)*chunk); chunks are always stored at full shape."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from hpc_aidc.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

EMPTY = 2**64 - 1
ZSTD_LEVEL = 3
BLOSC_CNAME, BLOSC_LEVEL = "zstd", 5  # zarr_compressors spells the same cname out for mypy


def zarr_compressors(compression: str, itemsize: int) -> Any:
    """The zarr-python codec objects for a compression name (used when creating the arrays)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if compression == "none":
        return None
    if compression == "zstd":
        return (ZstdCodec(level=ZSTD_LEVEL, checksum=False),)
    return (BloscCodec(cname="zstd", clevel=BLOSC_LEVEL, shuffle="shuffle", typesize=itemsize),)


@functools.cache
def _codec(compression: str, itemsize: int) -> Any:
    import importlib

    numcodecs = importlib.import_module("numcodecs")  # untyped package: keep mypy strict elsewhere
    if compression == "zstd":
        return numcodecs.Zstd(level=ZSTD_LEVEL, checksum=False)
    return numcodecs.Blosc(cname=BLOSC_CNAME, clevel=BLOSC_LEVEL, shuffle=numcodecs.Blosc.SHUFFLE,
                           typesize=itemsize)


def encode_shard(data: npt.NDArray[Any], chunk_samples: int, chunks_per_shard: int, compression: str) -> bytes:
    """The bytes of one shard file holding `data` (its first axis is the samples of this shard)."""
    import google_crc32c
    import numpy as np

    n = data.shape[0]
    n_chunks = -(-n // chunk_samples)
    pad = n_chunks * chunk_samples - n
    if pad:  # chunks are stored at full shape; the tail past the array's end holds the fill value
        data = np.concatenate([data, np.zeros((pad, *data.shape[1:]), data.dtype)])
    data = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<"))
    index = np.full((chunks_per_shard, 2), EMPTY, dtype="<u8")
    if compression == "none":
        body = data.tobytes()
        size = len(body) // n_chunks
        index[:n_chunks, 0] = np.arange(n_chunks, dtype=np.uint64) * size
        index[:n_chunks, 1] = size
    else:
        codec = _codec(compression, data.dtype.itemsize)
        parts = [bytes(codec.encode(c)) for c in data.reshape(n_chunks, -1)]
        sizes = np.array([len(p) for p in parts], dtype=np.uint64)
        index[:n_chunks, 0] = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.uint64)
        index[:n_chunks, 1] = sizes
        body = b"".join(parts)
    raw = index.tobytes()
    crc: int = google_crc32c.value(raw)
    return body + raw + crc.to_bytes(4, "little")


def parse_index(tail: bytes, chunks_per_shard: int, file_size: int, name: str) -> npt.NDArray[np.uint64]:
    """The (offset, nbytes) pairs from the last 16*n+4 bytes of a shard file, checked: crc and bounds."""
    import google_crc32c
    import numpy as np

    want = chunks_per_shard * 16 + 4
    if len(tail) != want:
        raise DataError(f"Expected a shard index of {want} bytes at the end of {name}. Got a {file_size}-byte "
                        "file (truncated?). Run `hpcai data verify` and re-pack or re-stage this shard.")
    raw, crc = tail[:-4], int.from_bytes(tail[-4:], "little")
    if google_crc32c.value(raw) != crc:
        raise DataError(f"Expected the shard index checksum (crc32c) of {name} to match. Got a mismatch "
                        "(corrupted or truncated shard). Run `hpcai data verify` and re-pack or re-stage it.")
    index = np.frombuffer(raw, dtype="<u8").reshape(chunks_per_shard, 2)
    present = index[:, 0] != EMPTY
    if present.any() and int((index[present, 0] + index[present, 1]).max()) > file_size - want:
        raise DataError(f"Expected the chunks of {name} inside the file. Got an index pointing past its "
                        f"{file_size - want} data bytes. Re-pack or re-stage this shard.")
    return index


def decode_chunk(raw: bytes, compression: str, dtype: np.dtype[Any], shape: tuple[int, ...],
                 name: str) -> npt.NDArray[Any]:
    import numpy as np

    if compression != "none":
        try:
            raw = bytes(_codec(compression, dtype.itemsize).decode(raw))
        except Exception as exc:  # numcodecs raises RuntimeError/ValueError depending on the codec
            raise DataError(f"Expected a {compression}-compressed chunk in {name}. Got undecodable bytes "
                            f"({exc}). Run `hpcai data verify` and re-pack or re-stage this shard.") from None
    want = int(np.prod(shape)) * dtype.itemsize
    if len(raw) != want:
        raise DataError(f"Expected {want} bytes per chunk in {name}. Got {len(raw)}. Re-pack this shard.")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)
