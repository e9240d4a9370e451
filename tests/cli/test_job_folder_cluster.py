"""`hpcai submit` as an ordinary user into `<job_root>/<user>` on the real dev cluster: a folder that is
not the user's own, private one is refused with one line and nothing is submitted; a refused sbatch
leaves the folder exactly as it was."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cluster_kit import jobs_named, submit_json
from conftest import RunHpcai, assert_clean_error

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("cluster")]


def _uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


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
    (_owned_by_bob, ["to be owned by you (alice)", "Got owner 'bob' instead",
                     "Ask your admins to move it away and make it anew (`hpcai admin user-folders alice --repair`)"]),
    (_group_writable, ["writable by you alone", "mode 0770 (writable by group)", "chmod go-w"]),
    (_world_writable, ["writable by group and others", "chmod go-w"]),
    (_symlink_to_bobs, ["Got a symbolic link to", "hpcai admin user-folders alice --repair"]),
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
    assert jobs_named(name, user="alice") == ""


def test_a_missing_user_folder_is_made_by_root_not_by_the_user(hpcai: RunHpcai, shared_root: Path) -> None:
    env = {"HPCAI_JOB_ROOT": str(shared_root)}
    name = f"nofolder-{uuid.uuid4().hex[:8]}"
    proc = hpcai("submit", "run", "-A", "physics", "-J", name, "--", "true", user="alice", env=env)
    assert_clean_error(proc, f"Expected your job directory {shared_root / 'alice'}. Got none",
                       "Ask your admins to run `hpcai admin user-folders alice`")
    assert not (shared_root / "alice").exists() and jobs_named(name, user="alice") == ""
    made = hpcai("admin", "user-folders", "alice", "--job-root", str(shared_root), "--json")
    assert made.returncode == 0, made.stderr
    assert [o["action"] for o in json.loads(made.stdout)] == ["created"]
    job_id = submit_json(hpcai, "run", "-A", "physics", "--wait", "--", "true", user="alice", env=env)["job_id"]
    st = (shared_root / "alice").lstat()
    assert st.st_uid == _uid("alice") and st.st_mode & 0o7777 == 0o750
    assert sorted(p.name for p in (shared_root / "alice").iterdir()) == [job_id]  # no staging left, no symlink


def test_alice_cannot_own_a_part_of_bobs_job_tree(hpcai: RunHpcai, shared_root: Path) -> None:
    """alice makes bob's folder in the shared job root before him (with a folder inside, where a job of his
    would go): bob is refused with advice that hands him nothing of hers; root moves hers aside."""
    env = {"HPCAI_JOB_ROOT": str(shared_root)}
    for path in (shared_root / "bob", shared_root / "bob" / "4242"):
        subprocess.run(["runuser", "-u", "alice", "--", "mkdir", "-m", "0755", str(path)], check=True)
    proc = hpcai("submit", "run", "-A", "climate", "--", "true", user="bob", env=env)
    assert_clean_error(proc, "Got owner 'alice'", "hpcai admin user-folders bob --repair")
    assert "chown" not in proc.stderr
    report = hpcai("admin", "user-folders", "bob", "--job-root", str(shared_root))
    assert report.returncode == 1 and "unsafe" in report.stdout and "owned by alice" in report.stdout
    assert (shared_root / "bob").lstat().st_uid == _uid("alice")  # reported, not touched
    repaired = hpcai("admin", "user-folders", "bob", "--job-root", str(shared_root), "--repair")
    assert repaired.returncode == 0 and "repaired" in repaired.stdout, repaired.stderr
    bob_dir = shared_root / "bob"
    assert bob_dir.lstat().st_uid == _uid("bob") and list(bob_dir.iterdir()) == []
    aside = [p for p in shared_root.iterdir() if p.name.startswith(".bob.foreign-")]
    assert len(aside) == 1 and (aside[0] / "4242").is_dir()  # kept for the admins, out of bob's tree
    job_id = submit_json(hpcai, "run", "-A", "climate", "--wait", "--", "true", user="bob", env=env)["job_id"]
    assert {p.lstat().st_uid for p in bob_dir.rglob("*")} == {_uid("bob")} and (bob_dir / job_id).is_dir()


def test_refused_sbatch_leaves_the_user_folder_exactly_as_it_was(hpcai: RunHpcai, user_folders: Path) -> None:
    shared_root = user_folders
    user_dir = shared_root / "alice"
    env = {"HPCAI_JOB_ROOT": str(shared_root)}
    submit_json(hpcai, "run", "-A", "physics", "--wait", "--", "true", user="alice", env=env)
    subprocess.run(["runuser", "-u", "alice", "--", "mkdir", str(user_dir / "notes")], check=True)
    subprocess.run(["runuser", "-u", "alice", "--", "touch", str(user_dir / "notes" / "todo")], check=True)
    before = _tree(shared_root)
    name = f"refused-{uuid.uuid4().hex[:8]}"
    # alice is not associated with climate: sbatch refuses, and the message says which accounts she has
    proc = hpcai("submit", "run", "-A", "climate", "-J", name, "--", "true", user="alice", env=env)
    assert_clean_error(proc, "associated with (physics)", "'climate'")
    assert _tree(shared_root) == before
    assert jobs_named(name, user="alice") == ""


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
    assert jobs_named("hpcai-pack", user="alice") == ""  # alice has never packed as an array on this cluster
