"""Staging: per user and job, once per node, concurrent stagers safe, the loader prefers the copy."""

from __future__ import annotations

import multiprocessing as mp
import stat
from pathlib import Path

import numpy as np
import pytest

from hpc_aidc.data.dataset import ShardedDataset
from hpc_aidc.data.stage import local_path, stage, staged_copy
from hpc_aidc.data.verify import verify_store
from hpc_aidc.ids import current_user


def _stage_one(args: tuple[str, str, str]) -> bool:
    store, scratch, job = args
    return stage(store, scratch, environ={"USER": "alice", "SLURM_JOB_ID": job})[1]


def test_concurrent_stagers_copy_once(packed: tuple[Path, np.ndarray], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store, ref = packed
    scratch = tmp_path / "scratch"
    with mp.get_context("fork").Pool(4) as pool:
        copied = pool.map(_stage_one, [(str(store), str(scratch), "77")] * 4)
    assert sorted(copied) == [False, False, False, True]
    env = {"USER": "alice", "SLURM_JOB_ID": "77"}
    local = staged_copy(store, scratch, env)
    assert local == local_path(store, scratch, env) and local is not None
    # the user is the real uid's name: $USER (which anyone can set) changes nothing
    assert f"hpcai-{current_user()}" in str(local) and "job-77" in str(local)
    assert local_path(store, scratch, {"USER": "bob", "SLURM_JOB_ID": "77"}) == local
    assert verify_store(local).ok
    assert local_path(store, scratch, {"SLURM_JOB_ID": "78"}) != local
    assert stat.S_IMODE((scratch / f"hpcai-{current_user()}").stat().st_mode) == 0o700

    monkeypatch.setattr("hpc_aidc.data.stage.default_scratch", lambda environ=None: scratch)
    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    ds = ShardedDataset(store)
    assert ds.root == local
    np.testing.assert_array_equal(ds[5], ref[5])
