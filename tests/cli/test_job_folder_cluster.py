"""`hpcai submit` as an ordinary user into `<job_root>/<user>` on the real dev cluster: a folder that is
not the user's own, private one is refused with one line and nothing is submitted; a refused sbatch
leaves the folder exactly as it was."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import RunHpcai, assert_clean_error

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("cluster")]


@pytest.fixture()
def shared_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="hpcai-jobs-", dir="/tmp"))
    root.chmod(0o1777)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def _nothing_submitted(name: str, user: str = "alice") -> bool:
    queued = subprocess.run(["squeue", "-h", "-u", user, "-n", name, "-o", "%i"], capture_output=True, text=True,
                            check=True)
    known = subprocess.run(["sacct", "-n", "-X", "-P", "-u", user, "--name", name, "-S", "now-1hours", "-o",
                            "jobid"], capture_output=True, text=True, check=True)
    return queued.stdout.strip() == "" and known.stdout.strip() == ""


def _tree(root: Path) -> dict[str, tuple[int, int, bytes | str | None]]:
    """Every path under root with its mode, owner and content (file bytes, link target)."""
    out: dict[str, tuple[int, int, bytes | str | None]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        content: bytes | str | None = None
        if path.is_symlink():
            content = os.readlink(path)
        elif path.is_file():
            content = path.read_bytes()
        out[str(path.relative_to(root))] = (st.st_mode, st.st_uid, content)
    return out


def _owned_by_bob(d: Path) -> None:
    d.mkdir(mode=0o755)
    os.chown(d, _uid("bob"), -1)


def _group_writable(d: Path) -> None:
    d.mkdir()
    os.chown(d, _uid("alice"), -1)
    d.chmod(0o770)


def _world_writable(d: Path) -> None:
    d.mkdir()
    os.chown(d, _uid("alice"), -1)
    d.chmod(0o777)


def _symlink_to_bobs(d: Path) -> None:
    target = d.parent / "bob"
    target.mkdir(mode=0o777)
    os.chown(target, _uid("bob"), -1)
    d.symlink_to(target)


@pytest.mark.parametrize(("make", "needles"), [
    (_owned_by_bob, ["to be owned by you (alice)", "Got owner 'bob' instead", "Ask your admins"]),
    (_group_writable, ["writable by you alone", "mode 0770 (writable by group)", "chmod go-w"]),
    (_world_writable, ["writable by group and others", "chmod go-w"]),
    (_symlink_to_bobs, ["Got a symbolic link to", "Remove the link"]),
], ids=["other-owner", "group-writable", "world-writable", "symlink"])
def test_unsafe_user_folder_is_refused_and_nothing_submitted(
        hpcai: RunHpcai, shared_root: Path, make: Callable[[Path], None], needles: list[str]) -> None:
    user_dir = shared_root / "alice"
    make(user_dir)
    before = _tree(shared_root)
    name = f"unsafe-{uuid.uuid4().hex[:8]}"
    proc = hpcai("submit", "run", "-A", "physics", "-J", name, "--", "true", user="alice",
                 env={"HPCAI_JOB_ROOT": str(shared_root)})
    assert_clean_error(proc, str(user_dir), *needles)
    assert proc.stdout == ""
    assert _tree(shared_root) == before  # nothing written, nothing "repaired"
    assert _nothing_submitted(name)


def test_missing_user_folder_is_created_private(hpcai: RunHpcai, shared_root: Path) -> None:
    proc = hpcai("submit", "run", "-A", "physics", "--wait", "--json", "--", "true", user="alice",
                 env={"HPCAI_JOB_ROOT": str(shared_root)})
    assert proc.returncode == 0, proc.stderr
    st = (shared_root / "alice").lstat()
    assert st.st_uid == _uid("alice") and st.st_mode & 0o7777 == 0o750
    job_id = json.loads(proc.stdout)["job_id"]
    assert sorted(p.name for p in (shared_root / "alice").iterdir()) == [job_id]  # no staging left, no symlink


def test_refused_sbatch_leaves_the_user_folder_exactly_as_it_was(hpcai: RunHpcai, shared_root: Path) -> None:
    user_dir = shared_root / "alice"
    env = {"HPCAI_JOB_ROOT": str(shared_root)}
    first = hpcai("submit", "run", "-A", "physics", "--wait", "--json", "--", "true", user="alice", env=env)
    assert first.returncode == 0, first.stderr
    subprocess.run(["runuser", "-u", "alice", "--", "mkdir", str(user_dir / "notes")], check=True)
    subprocess.run(["runuser", "-u", "alice", "--", "touch", str(user_dir / "notes" / "todo")], check=True)
    before = _tree(shared_root)
    name = f"refused-{uuid.uuid4().hex[:8]}"
    # alice is not associated with climate: sbatch refuses, and the message says which accounts she has
    proc = hpcai("submit", "run", "-A", "climate", "-J", name, "--", "true", user="alice", env=env)
    assert_clean_error(proc, "associated with (physics)", "'climate'")
    assert _tree(shared_root) == before
    assert _nothing_submitted(name)


def test_data_pack_array_checks_the_user_folder_too(hpcai: RunHpcai, shared_root: Path) -> None:
    np = pytest.importorskip("numpy")
    tokens = shared_root / "tokens.npy"
    np.save(tokens, (np.arange(20_000) % 251).astype(np.uint16))
    tokens.chmod(0o644)
    _world_writable(shared_root / "alice")
    name_before = _tree(shared_root)
    out = shared_root / "out"
    out.mkdir()
    out.chmod(0o777)
    proc = hpcai("data", "pack", str(tokens), "-o", str(out / "corpus.zarr"), "--seq-len", "65", "--array", "2",
                 "-A", "physics", user="alice", env={"HPCAI_JOB_ROOT": str(shared_root)})
    assert_clean_error(proc, f"Expected the job directory {shared_root / 'alice'} to be writable by you alone",
                       "chmod go-w")
    assert {k: v for k, v in _tree(shared_root).items() if k in name_before} == name_before
    assert not (shared_root / "alice" / "data-pack").exists()
    assert _nothing_submitted("hpcai-pack")  # alice has never packed as an array on this cluster
