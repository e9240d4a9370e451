"""Packing as a 2-task Slurm array on the dev cluster gives the same bytes as packing in one process."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from hpc_aidc.data.pack import PackOptions, pack_local, prepare_pack
from hpc_aidc.data.spec import read_manifest
from hpc_aidc.data.verify import verify_store


@pytest.mark.cluster
def test_two_task_array_matches_local_pack(token_file: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    if shutil.which("sbatch") is None:
        pytest.skip("no Slurm here")
    from hpc_aidc.scheduler.data_pack import submit_pack_array
    from hpc_aidc.site import load_site

    path, _ = token_file
    options = {"inputs": (str(path),), "seq_len": 128, "shard_mib": 0.01}
    local = pack_local(PackOptions(out=str(tmp_path / "local.zarr"), **options))
    out = tmp_path / "array.zarr"
    plan = prepare_pack(PackOptions(out=str(out), **options))
    submitted = submit_pack_array(load_site(), str(out), 2, time_limit="00:05:00", wait=True)
    assert submitted["tasks"] == 2 and plan.num_shards > 2
    assert read_manifest(out).files == local.files
    assert verify_store(out).ok
