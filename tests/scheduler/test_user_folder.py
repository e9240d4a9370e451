"""`<job_root>/<user>`: created 0750, refused unless it is the user's own directory that nobody else can
write; a submission never lists it, and a refused one removes only what it wrote itself."""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hpc_aidc.errors import AccessError, HpcAidcError, SlurmError
from hpc_aidc.ids import current_user
from hpc_aidc.render.sbatch import python_command, render_sbatch
from hpc_aidc.scheduler.request import BatchJob, JobRequest, PickledCall, job_ref
from hpc_aidc.scheduler.submit import STAGING_PREFIX, Submitted, submit
from hpc_aidc.scheduler.user_folder import prepare_user_folder
from hpc_aidc.site_profile import load_site


def submit_print(params: dict[str, Any], folder: Path) -> Submitted:
    """print("x") as a pickled call, through the one submission core."""
    script = render_sbatch(params, folder, python_command())
    call = PickledCall(print, ("x",), folder, int(params.get("time", 1)))
    return submit(load_site(), JobRequest(kind="test", user_dir=folder.parent, policy=None, audit_tag="test",
                                          jobs=(BatchJob(script, call=call),),
                                          output=str(folder).replace("%j", job_ref(0))))


@pytest.fixture()
def job_root(shared_root: Path) -> Path:
    """A shared job root (1777, in /tmp so that other users can reach it), root's: root makes its own folder."""
    return shared_root


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
                                          r"admins to move it away and make it anew \(`hpcai admin user-folders root "
                                          r"--repair`\)") as refused:
        prepare_user_folder(user_dir)
    assert "chown" not in str(refused.value)  # what alice made inside would stay hers
    user_dir.chmod(0o700)  # unreadable to us as well: still the same clear refusal (root reads anyway)
    with pytest.raises(AccessError, match="to be owned by you"):
        prepare_user_folder(user_dir)


def test_symlinked_folder_is_refused_and_not_followed(job_root: Path) -> None:
    elsewhere = job_root / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (job_root / "me").symlink_to(elsewhere)
    with pytest.raises(AccessError, match=r"to be a directory of yours\. Got a symbolic link to .*elsewhere.* "
                                          r"instead\. Ask your admins to move it away"):
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
        submit_print({"job_name": "never"}, job_root / "me" / "%j")


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
        submit_print(_params(name, partition="ghost"), user_dir / "%j")
    job = submit_print(_params(name, additional_parameters={"hold": True}), user_dir / "%j")
    job_id, folder = job.job_ids[0], Path(job.resolve(job.request.output or ""))
    monkeypatch.undo()  # the test itself may list now
    try:
        assert no_listing == []
        assert _entries(user_dir) == {job_id}  # no staging folder, no per-submission symlink
        assert _entries(folder) == {f"{job_id}_submission.sh", f"{job_id}_submitted.pkl"}
        assert f"#SBATCH --job-name={name}" in (folder / f"{job_id}_submission.sh").read_text()
    finally:
        subprocess.run(["scancel", job_id], check=False)


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
                submit_print(_params("refused", partition="ghost"), user_dir / "%j")
    finally:
        stop.set()
        thread.join()
    assert len(siblings) >= 5
    assert _entries(user_dir) == before | set(siblings)
    assert all((user_dir / s / f"{s}_submitted.pkl").exists() for s in siblings)
    assert (user_dir / "41" / "41_0_log.out").read_text() == "an old job\n"
    assert not [n for n in _entries(user_dir) if n.startswith(STAGING_PREFIX)]


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a folder to another user")
def test_a_job_folder_someone_else_made_is_never_used(job_root: Path) -> None:
    """submitit's job folder `<user>/<jobid>` (and every folder hpcai makes in the user folder) is made by
    us or refused: one another user made, or a link, could swap the pickled call we put there."""
    from hpc_aidc.scheduler.user_folder import claim_folder

    user_dir = job_root / "me"
    prepare_user_folder(user_dir)
    claim_folder(user_dir / "41")  # made now, ours
    assert (user_dir / "41").stat().st_uid == os.getuid()
    claim_folder(user_dir / "41")  # ours already: fine
    (user_dir / "42").mkdir(mode=0o755)
    os.chown(user_dir / "42", _other_uid(), -1)
    with pytest.raises(AccessError, match="Got owner 'alice'"):
        claim_folder(user_dir / "42")
    (user_dir / "43").symlink_to(job_root)
    with pytest.raises(AccessError, match="Got a symbolic link"):
        claim_folder(user_dir / "43")


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a folder to another user")
def test_an_inference_output_others_could_swap_is_refused(job_root: Path) -> None:
    """An inference run's plan names the model its tasks load: its output folder must be the user's alone
    and sit where no other user can swap it (a folder above writable by others must be sticky)."""
    from hpc_aidc.scheduler.user_folder import check_private_output

    check_private_output(job_root / "mine" / "out", "--output")  # /tmp and a 1777 root: sticky, fine
    open_dir = job_root / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # no sticky bit: anyone may rename what is in it
    with pytest.raises(AccessError, match=r"--output .*open/out.*Got .*open \(owner 'root', mode 0777\)"):
        check_private_output(open_dir / "out", "--output")
    planted = job_root / "planted"
    planted.mkdir(mode=0o755)
    os.chown(planted, _other_uid(), -1)
    with pytest.raises(AccessError, match=r"--output: .*Got owner 'alice'"):
        check_private_output(planted, "--output")
