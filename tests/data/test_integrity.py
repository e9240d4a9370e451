"""Corrupted or truncated shards are named by verify, by the loader, and by stage."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hpc_aidc.data.dataset import ShardedDataset
from hpc_aidc.data.stage import stage
from hpc_aidc.data.verify import raise_if_bad, verify_store
from hpc_aidc.errors import DataError

SHARD3 = "samples/c/3/0"


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_clean_store_verifies(packed: tuple[Path, np.ndarray]) -> None:
    report = verify_store(packed[0])
    assert report.ok and report.checked == 13


def test_corrupted_data_bytes(packed: tuple[Path, np.ndarray]) -> None:
    store, _ = packed
    _flip(store / SHARD3, 100)
    report = verify_store(store)
    assert len(report.problems) == 1 and SHARD3 in report.problems[0] and "sha256" in report.problems[0]
    with pytest.raises(DataError, match=SHARD3):
        raise_if_bad(report)
    with pytest.raises(DataError, match=SHARD3):
        ShardedDataset(store, verify="full")[3 * 32]
    with pytest.raises(DataError, match=SHARD3):
        stage(store, scratch=store.parent / "scratch", environ={"USER": "u", "SLURM_JOB_ID": "1"})
    assert not list((store.parent / "scratch").rglob("manifest.json"))  # no half-staged copy


@pytest.mark.parametrize("damage", ["truncate", "index"])
def test_truncated_or_bad_index_named_by_loader(packed: tuple[Path, np.ndarray], damage: str) -> None:
    store, _ = packed
    path = store / SHARD3
    if damage == "truncate":
        os.truncate(path, path.stat().st_size - 50)
    else:
        _flip(path, path.stat().st_size - 20)
    assert any(SHARD3 in p for p in verify_store(store, full=False).problems)
    ds = ShardedDataset(store)
    ds[0]  # other shards still read
    with pytest.raises(DataError, match=SHARD3):
        ds[3 * 32 + 1]
    with pytest.raises(DataError, match=SHARD3):
        ds.__getitems__([0, 3 * 32 + 5])


def test_missing_shard_named(packed: tuple[Path, np.ndarray]) -> None:
    store, _ = packed
    (store / SHARD3).unlink()
    assert verify_store(store).problems == (f"{SHARD3}: missing",)
    with pytest.raises(DataError, match=SHARD3):
        ShardedDataset(store)[3 * 32]
