"""`<job_root>/<user>`: created 0750, refused unless it is the user's own directory that nobody else can
write; a submission never lists it, and a refused one removes only what it wrote itself."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hpc_aidc.errors import AccessError, HpcAidcError, SlurmError
from hpc_aidc.ids import current_user
from hpc_aidc.scheduler.submit import STAGING_PREFIX, prepare_user_folder, submit_function


@pytest.fixture()
def job_root() -> Iterator[Path]:
    """A shared job root like the site's (1777, in /tmp so that other users can reach it)."""
    root = Path(tempfile.mkdtemp(prefix="hpcai-folder-", dir="/tmp"))
    root.chmod(0o1777)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def no_listing(monkeypatch: pytest.MonkeyPatch, job_root: Path) -> list[str]:
    """Every way Python lists a directory fails the test when pointed at a user folder (or the job root).
    A submission's own staging folder inside it (two files at most) may be listed, to be removed."""
    calls: list[str] = []

    def guard(name: str, original: Callable[..., Any], arg: int = 0) -> Callable[..., Any]:
        def listing(*args: Any, **kwargs: Any) -> Any:
            target = args[arg] if len(args) > arg else kwargs.get("path", ".")
            if isinstance(target, int):  # a directory fd (shutil.rmtree)
                target = os.readlink(f"/proc/self/fd/{target}")
            path = Path(os.fspath(target)).absolute()
            if path == job_root or path.parent == job_root:
                calls.append(f"{name}({target})")
                raise AssertionError(f"listed {target} with {name}")
            return original(*args, **kwargs)
        return listing

    monkeypatch.setattr(os, "listdir", guard("os.listdir", os.listdir))
    monkeypatch.setattr(os, "scandir", guard("os.scandir", os.scandir))
    monkeypatch.setattr(os, "walk", guard("os.walk", os.walk))
    monkeypatch.setattr(Path, "iterdir", guard("Path.iterdir", Path.iterdir))
    monkeypatch.setattr(Path, "glob", guard("Path.glob", Path.glob))
    monkeypatch.setattr(Path, "rglob", guard("Path.rglob", Path.rglob))
    return calls


def _other_uid() -> int:
    return pwd.getpwnam("alice").pw_uid if os.getuid() == 0 else 0


def test_missing_folder_is_created_0750_whatever_the_umask(job_root: Path, no_listing: list[str]) -> None:
    for umask in (0o077, 0o000):
        user_dir = job_root / f"u{umask:o}"
        previous = os.umask(umask)
        try:
            prepare_user_folder(user_dir)
        finally:
            os.umask(previous)
        st = user_dir.lstat()
        assert user_dir.is_dir() and not user_dir.is_symlink()
        assert st.st_mode & 0o7777 == 0o750 and st.st_uid == os.getuid()
    prepare_user_folder(job_root / "u0")  # an existing good folder is accepted as it is
    assert no_listing == []


def test_a_missing_job_root_is_created(tmp_path: Path) -> None:
    prepare_user_folder(tmp_path / "jobs" / "someone")
    assert (tmp_path / "jobs" / "someone").is_dir()


@pytest.mark.parametrize(("mode", "needle"), [
    (0o770, "writable by group) instead. Run `chmod go-w"),
    (0o757, "writable by others) instead. Run `chmod go-w"),
    (0o777, "writable by group and others) instead. Run `chmod go-w"),
])
def test_group_or_world_writable_folder_is_refused(job_root: Path, mode: int, needle: str) -> None:
    user_dir = job_root / "me"
    user_dir.mkdir()
    user_dir.chmod(mode)
    with pytest.raises(AccessError) as info:
        prepare_user_folder(user_dir)
    message = str(info.value)
    assert message.startswith(f"Expected the job directory {user_dir} to be writable by you alone. Got mode ")
    assert needle in message and "\n" not in message
    assert user_dir.stat().st_mode & 0o777 == mode  # refused, not "fixed" behind the user's back


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a folder to another user")
def test_folder_owned_by_someone_else_is_refused(job_root: Path) -> None:
    user_dir = job_root / "me"
    user_dir.mkdir(mode=0o755)
    os.chown(user_dir, _other_uid(), -1)
    with pytest.raises(AccessError, match=r"to be owned by you \(root\)\. Got owner 'alice' instead\. Ask your "
                                          r"admins to give it to you \(`chown root "):
        prepare_user_folder(user_dir)
    user_dir.chmod(0o700)  # unreadable to us as well: still the same clear refusal (root reads anyway)
    with pytest.raises(AccessError, match="to be owned by you"):
        prepare_user_folder(user_dir)


def test_symlinked_folder_is_refused_and_not_followed(job_root: Path) -> None:
    elsewhere = job_root / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (job_root / "me").symlink_to(elsewhere)
    with pytest.raises(AccessError, match=r"to be a directory of yours\. Got a symbolic link to .*elsewhere.* "
                                          r"instead\. Remove the link"):
        prepare_user_folder(job_root / "me")
    (job_root / "dangling").symlink_to(job_root / "nowhere")
    with pytest.raises(AccessError, match="Got a symbolic link"):
        prepare_user_folder(job_root / "dangling")
    assert not (job_root / "nowhere").exists()  # not created through the link


def test_a_full_job_directory_is_one_line_before_anything_is_submitted(job_root: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: Any, **kwargs: Any) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkdtemp", full)
    with pytest.raises(AccessError, match=r"to write in the job directory .*\. Got 'No space left on device' "
                                          r"instead\. Free space there"):
        submit_function(print, ("x",), {"job_name": "never"}, job_root / "me" / "%j")


def test_a_file_in_place_of_the_folder_is_refused(job_root: Path) -> None:
    (job_root / "me").write_text("")
    with pytest.raises(AccessError, match=r"Got a file instead\. Move it away"):
        prepare_user_folder(job_root / "me")


# -- submission against the real dev cluster (in-process, to watch the folder while sbatch runs) -------------

def _params(name: str, **extra: Any) -> dict[str, Any]:
    return {"job_name": name, "partition": "debug", "time": 1, "nodes": 1, "ntasks_per_node": 1,
            "account": "physics", **extra}


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.cluster
@pytest.mark.usefixtures("cluster")
def test_submission_never_lists_the_user_folder(job_root: Path, no_listing: list[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    user_dir = job_root / current_user()
    name = f"nolist-{uuid.uuid4().hex[:8]}"
    with pytest.raises(SlurmError, match="sbatch refused the job"):
        submit_function(print, ("x",), _params(name, partition="ghost"), user_dir / "%j")
    job = submit_function(print, ("x",), _params(name, additional_parameters={"hold": True}), user_dir / "%j")
    monkeypatch.undo()  # the test itself may list now
    try:
        assert no_listing == []
        assert _entries(user_dir) == {job.job_id}  # no staging folder, no per-submission symlink
        assert _entries(job.folder) == {f"{job.job_id}_submission.sh", f"{job.job_id}_submitted.pkl"}
        assert job.script == job.folder / f"{job.job_id}_submission.sh" and f"#SBATCH --job-name={name}" in \
            job.script.read_text()
    finally:
        subprocess.run(["scancel", job.job_id], check=False)


@pytest.mark.cluster
@pytest.mark.usefixtures("cluster")
def test_refused_submission_leaves_a_sibling_created_meanwhile(job_root: Path) -> None:
    """While sbatch refuses the job, another submission (here a thread) keeps adding folders next to ours:
    every one of them, and everything that was there before, is still there afterwards."""
    user_dir = job_root / current_user()
    prepare_user_folder(user_dir)
    (user_dir / "41").mkdir()
    (user_dir / "41" / "41_0_log.out").write_text("an old job\n")
    (user_dir / ".cache").mkdir()
    before = _entries(user_dir)
    stop = threading.Event()
    siblings: list[str] = []

    def concurrent_submissions() -> None:
        while not stop.is_set():
            name = f"{9000 + len(siblings)}"
            (user_dir / name).mkdir()
            (user_dir / name / f"{name}_submitted.pkl").write_bytes(b"another submission")
            siblings.append(name)
            stop.wait(0.002)

    thread = threading.Thread(target=concurrent_submissions)
    thread.start()
    try:
        for _ in range(10):  # each takes a few ms (sbatch's round trip): siblings appear during each one
            with pytest.raises(HpcAidcError, match="sbatch refused the job"):
                submit_function(print, ("x",), _params("refused", partition="ghost"), user_dir / "%j")
    finally:
        stop.set()
        thread.join()
    assert len(siblings) >= 5
    assert _entries(user_dir) == before | set(siblings)
    assert all((user_dir / s / f"{s}_submitted.pkl").exists() for s in siblings)
    assert (user_dir / "41" / "41_0_log.out").read_text() == "an old job\n"
    assert not [n for n in _entries(user_dir) if n.startswith(STAGING_PREFIX)]
