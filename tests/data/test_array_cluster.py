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
    from hpc_aidc.ids import current_user
    from hpc_aidc.scheduler.data_pack import plan_pack
    from hpc_aidc.scheduler.submit import submit
    from hpc_aidc.scheduler.wait import wait_for_job
    from hpc_aidc.site_profile import load_site

    path, _ = token_file
    options = {"inputs": (str(path),), "seq_len": 128, "shard_mib": 0.01}
    local = pack_local(PackOptions(out=str(tmp_path / "local.zarr"), **options))
    out = tmp_path / "array.zarr"
    plan = prepare_pack(PackOptions(out=str(out), **options))
    request = plan_pack(load_site(), str(out), 2, user=current_user(), time_limit="00:05:00")
    done = submit(load_site(), request)
    assert wait_for_job(done.job_ids[1]).state == "COMPLETED" and plan.num_shards > 2
    assert wait_for_job(done.job_ids[0]).state == "COMPLETED"
    assert read_manifest(out).files == local.files
    assert verify_store(out).ok
