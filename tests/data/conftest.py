"""Small fixtures for the data tests, generated on the fly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hpc_aidc.data.pack import PackOptions, pack_local


@pytest.fixture
def token_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    tokens = np.random.default_rng(0).integers(0, 60000, 50_000, dtype=np.uint16)
    path = tmp_path / "in" / "tokens.bin"
    path.parent.mkdir()
    tokens.tofile(path)
    return path, tokens


@pytest.fixture
def packed(tmp_path: Path, token_file: tuple[Path, np.ndarray]) -> tuple[Path, np.ndarray]:
    """A small token store: 390 samples of 128 tokens, 32 samples per shard (13 shards)."""
    path, tokens = token_file
    out = tmp_path / "tok.zarr"
    pack_local(PackOptions(inputs=(str(path),), out=str(out), seq_len=128, shard_mib=32 * 256 / 2**20))
    return out, tokens[: 390 * 128].reshape(390, 128)


@pytest.fixture
def jsonl(tmp_path: Path) -> tuple[Path, list[str]]:
    texts = [f"document {i} " + "héllo wörld " * (i % 7) for i in range(200)]
    path = tmp_path / "in" / "docs.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path, texts
