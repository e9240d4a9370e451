"""A store or a scratch folder may come from another (hostile) user: manifest shard paths never lead out
of the store (no `..`, no absolute path, no link), and staging refuses a per-user scratch folder that is
not private to us. Every refusal is one line (DataError; exit 2 through the CLI)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from conftest import RunHpcai

from hpc_aidc.data.dataset import ShardedDataset
from hpc_aidc.data.spec import MANIFEST_NAME, open_in_store, parse_manifest, read_manifest, store_relpath
from hpc_aidc.data.stage import local_path, stage, staged_copy
from hpc_aidc.data.verify import raise_if_bad, store_info, verify_store
from hpc_aidc.errors import DataError
from hpc_aidc.ids import current_user

OTHER_UID = 4242  # "bob" for the unit tests (any uid but ours)


def _one_line_exit_2(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in proc.stderr, proc.stderr


class _Opens:
    """Every path this process opens while active (an audit hook sees open(), os.open() and pathlib)."""

    active = False
    paths: ClassVar[list[str]] = []

    @classmethod
    def hook(cls, event: str, args: tuple[object, ...]) -> None:
        if cls.active and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            cls.paths.append(os.fsdecode(args[0]))


sys.addaudithook(_Opens.hook)


@pytest.fixture()
def opens() -> Iterator[list[str]]:
    _Opens.paths = []
    _Opens.active = True
    try:
        yield _Opens.paths
    finally:
        _Opens.active = False


def _edit_manifest(store: Path, **changes: object) -> None:
    doc = json.loads((store / MANIFEST_NAME).read_text())
    for key, value in changes.items():
        if key == "path0":
            doc["files"][0]["path"] = value
        elif key == "array0":
            doc["arrays"][0]["name"] = value
    (store / MANIFEST_NAME).write_text(json.dumps(doc))


@pytest.mark.parametrize("bad", ["../../x", "samples/../../x", "/etc/passwd", "samples//c/0/0", "./samples/c/0/0",
                                 "samples/c/0/", "", "a\0b"])
def test_manifest_paths_outside_the_store_are_refused(bad: str) -> None:
    with pytest.raises(DataError, match="Expected a relative path inside the store") as err:
        store_relpath(bad, "s.zarr")
    assert "\n" not in str(err.value)


def test_good_paths_pass() -> None:
    assert store_relpath("samples/c/0/0") == ("samples", "c", "0", "0")
    assert store_relpath("zarr.json") == ("zarr.json",)


def test_manifest_naming_dotdot_is_one_line_and_reads_nothing_outside(
        packed: tuple[Path, np.ndarray], tmp_path: Path, opens: list[str], hpcai: RunHpcai) -> None:
    store, _ = packed
    secret = tmp_path / "x"
    secret.write_text("secret")
    _edit_manifest(store, path0="../x")
    opens.clear()
    for call in (lambda: read_manifest(store), lambda: verify_store(store), lambda: store_info(store),
                 lambda: ShardedDataset(store, local=False), lambda: stage(store, tmp_path / "scratch")):
        with pytest.raises(DataError, match=r"Got '\.\./x' instead") as err:
            call()
        assert "\n" not in str(err.value)
    assert any(p == MANIFEST_NAME for p in opens), opens  # the hook sees the opens (the manifest's)
    assert not [p for p in opens if ".." in p.split("/") or p == str(secret)], opens
    assert not list((tmp_path / "scratch").rglob(MANIFEST_NAME))
    _one_line_exit_2(hpcai("data", "verify", str(store), timeout=120), "Got '../x' instead")
    _one_line_exit_2(hpcai("data", "stage", str(store), "--scratch", str(tmp_path / "s2"), timeout=120),
                     "relative path")


def test_array_name_with_a_path_is_refused(packed: tuple[Path, np.ndarray]) -> None:
    store, _ = packed
    doc = json.loads((store / MANIFEST_NAME).read_text())
    doc["arrays"][0]["name"] = "../samples"
    with pytest.raises(DataError, match="relative path inside the store"):
        parse_manifest(doc, str(store))
    doc["arrays"][0]["name"] = "a/b"
    with pytest.raises(DataError, match="array names without '/'"):
        parse_manifest(doc, str(store))


def test_symlinked_shard_leading_out_is_refused_everywhere(packed: tuple[Path, np.ndarray], tmp_path: Path,
                                                           hpcai: RunHpcai) -> None:
    store, _ = packed
    outside = tmp_path / "outside"
    outside.write_bytes((store / "samples/c/0/0").read_bytes())  # even identical bytes: a link is refused
    (store / "samples/c/0/0").unlink()
    (store / "samples/c/0/0").symlink_to(outside)
    report = verify_store(store)
    assert len(report.problems) == 1 and "samples/c/0/0" in report.problems[0] and "symbolic link" in report.problems[0]
    with pytest.raises(DataError, match="symbolic link"):
        raise_if_bad(report)
    with pytest.raises(DataError, match="symbolic link"):
        ShardedDataset(store, local=False)[0]
    with pytest.raises(DataError, match="symbolic link"):
        stage(store, tmp_path / "scratch")
    assert not list((tmp_path / "scratch").rglob(MANIFEST_NAME))  # no half-staged copy
    _one_line_exit_2(hpcai("data", "verify", str(store), timeout=120), "symbolic link")


def test_symlinked_folder_and_metadata_in_the_store_are_refused(packed: tuple[Path, np.ndarray],
                                                                tmp_path: Path) -> None:
    store, _ = packed
    elsewhere = tmp_path / "elsewhere"
    (store / "samples/c/1").rename(elsewhere)
    (store / "samples/c/1").symlink_to(elsewhere)
    with pytest.raises(DataError, match="symbolic link"):
        open_in_store(store, "samples/c/1/0")
    assert any("symbolic link" in p for p in verify_store(store, full=False).problems)
    (store / "samples/c/1").unlink()
    elsewhere.rename(store / "samples/c/1")
    (tmp_path / "meta.json").write_text("{}")
    (store / "samples/zarr.json").unlink()
    (store / "samples/zarr.json").symlink_to(tmp_path / "meta.json")
    with pytest.raises(DataError, match=r"samples/zarr\.json"):
        stage(store, tmp_path / "scratch")


def test_fifo_in_the_store_does_not_hang(packed: tuple[Path, np.ndarray]) -> None:
    store, _ = packed
    (store / "samples/c/2/0").unlink()
    os.mkfifo(store / "samples/c/2/0")
    with pytest.raises(DataError, match="regular file"):
        open_in_store(store, "samples/c/2/0")
    assert any("samples/c/2/0" in p for p in verify_store(store).problems)


# ---- the per-user scratch folder -------------------------------------------------------------------------

def _user_dir(scratch: Path) -> Path:
    return scratch / f"hpcai-{current_user()}"


@pytest.mark.skipif(os.geteuid() != 0, reason="planting a folder owned by someone else needs root")
def test_planted_folder_of_another_user_is_refused(packed: tuple[Path, np.ndarray], tmp_path: Path,
                                                   hpcai: RunHpcai) -> None:
    store, ref = packed
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o1777)
    os.chmod(scratch, 0o1777)
    planted = _user_dir(scratch)
    planted.mkdir(mode=0o755)
    os.chown(planted, OTHER_UID, OTHER_UID)
    with pytest.raises(DataError, match=f"owned by uid {OTHER_UID}") as err:
        stage(store, scratch, environ={"SLURM_JOB_ID": "5"})
    assert "\n" not in str(err.value)
    assert list(planted.iterdir()) == []  # nothing written into it
    # a copy "staged" there by the other user is never read: the loader reads the source
    fake = local_path(store, scratch, {"SLURM_JOB_ID": "5"})
    fake.mkdir(parents=True)
    (fake / MANIFEST_NAME).write_text("{}")
    assert staged_copy(store, scratch, {"SLURM_JOB_ID": "5"}) is None
    _one_line_exit_2(hpcai("data", "stage", str(store), "--scratch", str(scratch), timeout=120),
                     f"owned by uid {OTHER_UID}")
    np.testing.assert_array_equal(ShardedDataset(store)[1], ref[1])


def test_planted_symlink_is_refused(packed: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    store, _ = packed
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    _user_dir(scratch).symlink_to(target)
    with pytest.raises(DataError, match="symbolic link"):
        stage(store, scratch, environ={"SLURM_JOB_ID": "5"})
    assert list(target.iterdir()) == []
    assert staged_copy(store, scratch, {"SLURM_JOB_ID": "5"}) is None


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_folder_others_may_write_is_refused(packed: tuple[Path, np.ndarray], tmp_path: Path, mode: int) -> None:
    store, _ = packed
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    _user_dir(scratch).mkdir()
    os.chmod(_user_dir(scratch), mode)
    with pytest.raises(DataError, match=f"mode {mode:o}"):
        stage(store, scratch, environ={"SLURM_JOB_ID": "5"})


def test_own_readable_folder_is_tightened_and_used(packed: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    store, _ = packed
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    _user_dir(scratch).mkdir()
    os.chmod(_user_dir(scratch), 0o755)  # what older versions made
    local, copied = stage(store, scratch, environ={"SLURM_JOB_ID": "5"})
    assert copied and verify_store(local).ok
    assert stat.S_IMODE(os.lstat(_user_dir(scratch)).st_mode) == 0o700


def test_shared_scratch_without_sticky_bit_is_refused(packed: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    store, _ = packed
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    os.chmod(scratch, 0o777)
    with pytest.raises(DataError, match="sticky"):
        stage(store, scratch, environ={"SLURM_JOB_ID": "5"})
    os.chmod(scratch, 0o1777)
    assert stage(store, scratch, environ={"SLURM_JOB_ID": "5"})[1]


def test_job_id_from_the_environment_is_checked(packed: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="SLURM_JOB_ID"):
        stage(packed[0], tmp_path / "scratch", environ={"SLURM_JOB_ID": "../../etc"})
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="Expected a node-local scratch folder"):
        stage(packed[0], tmp_path / "file", environ={})
