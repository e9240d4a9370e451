"""Staging between real users of the dev cluster: bob plants /scratch/hpcai-alice before alice stages;
alice's `hpcai data stage` refuses it in one line (exit 2) and writes nothing into it, whatever $USER says.
In a clean scratch her copy lands in her own 0700 folder, named after her uid's user, not $USER."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from hpc_aidc.data.pack import PackOptions, pack_local

pytestmark = pytest.mark.cluster


@pytest.fixture()
def shared(cluster: None) -> Iterator[Path]:
    """A folder every user can read (pytest's own tmp folders are root's alone), with a packed store."""
    top = Path(tempfile.mkdtemp(prefix="hpcai-stage-"))
    os.chmod(top, 0o755)
    tokens = np.arange(20_000, dtype=np.uint16)
    (top / "tokens.bin").write_bytes(tokens.tobytes())
    pack_local(PackOptions(inputs=(str(top / "tokens.bin"),), out=str(top / "tok.zarr"), seq_len=64,
                           shard_mib=0.01))
    subprocess.run(["chmod", "-R", "a+rX", str(top)], check=True)
    scratch = top / "scratch"
    scratch.mkdir()
    os.chmod(scratch, 0o1777)  # like /tmp
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _stage_as(user: str, top: Path, *env: str) -> subprocess.CompletedProcess[str]:
    argv = ["runuser", "-u", user, "--", "env", f"PATH={os.environ['PATH']}", *env, sys.executable, "-m",
            "hpc_aidc.cli.main", "data", "stage", str(top / "tok.zarr"), "--scratch", str(top / "scratch"), "--json"]
    return subprocess.run(argv, capture_output=True, text=True, cwd="/tmp", timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_folder_planted_by_bob_is_refused_to_alice(shared: Path) -> None:
    bob = pwd.getpwnam("bob")
    planted = shared / "scratch" / "hpcai-alice"
    planted.mkdir()
    os.chown(planted, bob.pw_uid, bob.pw_gid)
    os.chmod(planted, 0o777)
    proc = _stage_as("alice", shared, "USER=bob", "LOGNAME=bob", "SLURM_JOB_ID=7")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("hpcai: error: ") and f"owned by uid {bob.pw_uid}" in proc.stderr
    assert str(planted) in proc.stderr
    assert list(planted.iterdir()) == []  # nothing written into bob's folder


def test_alice_stages_into_her_own_private_folder(shared: Path) -> None:
    proc = _stage_as("alice", shared, "USER=bob", "LOGNAME=bob", "SLURM_JOB_ID=7")
    assert proc.returncode == 0, proc.stderr
    local = Path(json.loads(proc.stdout)["local"])
    mine = shared / "scratch" / "hpcai-alice"
    assert local.is_relative_to(mine) and (local / "manifest.json").is_file()
    st = os.lstat(mine)
    assert st.st_uid == pwd.getpwnam("alice").pw_uid and stat.S_IMODE(st.st_mode) == 0o700
    assert not (shared / "scratch" / "hpcai-bob").exists()
    # bob, staging the same store, gets his own copy and cannot reach alice's
    assert _stage_as("bob", shared, "SLURM_JOB_ID=7").returncode == 0
    assert subprocess.run(["runuser", "-u", "bob", "--", "ls", str(mine)], capture_output=True,
                          check=False).returncode != 0
