"""Shared fixtures: the real dev cluster, and running the real `hpcai` CLI as root or another user."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECORDED = REPO / "tests" / "recorded"
FAKE_NVML = REPO / "tests" / "monitor" / "fake_nvml"
HPCAI = [sys.executable, "-m", "hpc_aidc.cli.main"]

RunHpcai = Callable[..., subprocess.CompletedProcess[str]]


def _cluster_up() -> bool:
    if shutil.which("scontrol") is None:
        return False
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, check=False)
    return ping.returncode == 0 and "UP" in ping.stdout


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the dev cluster is marked `cluster` however it asks for it (marker, fixture or
    usefixtures): `-m cluster` is the Slurm-facing part that `scripts/test.sh --slurm VERSION` runs."""
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()) and item.get_closest_marker("cluster") is None:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session", autouse=True)
def _installed_copy_is_current() -> None:
    """The CLI in subprocesses, the dev cluster's Slurm scripts and the users' jobs run hpc-aidc as installed
    in the root-owned venv (scripts/bootstrap.sh), not this checkout: a stale copy would test old code."""
    stamp = Path(sys.prefix) / ".hpcai-source"
    if not stamp.exists():
        return
    spec = importlib.util.spec_from_file_location("source_hash", REPO / "scripts" / "source_hash.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if stamp.read_text().strip() != module.source_hash(REPO):
        pytest.exit(f"{sys.prefix} holds an older build of hpc-aidc than this checkout: run "
                    "`bash scripts/bootstrap.sh` (scripts/test.sh does) first", returncode=3)


@pytest.fixture(scope="module", autouse=True)
def _revive_dead_nodes() -> None:
    """Before each test module: a node whose slurmd died (Slurm 22.05's slurmd has aborted here once on a
    heap check under a burst of job launches, leaving a core file) is brought back by the idempotent
    up.sh, so one crash fails one module, not every module after it."""
    if not _cluster_up():
        return
    states = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True,
                            check=False).stdout
    if any(word in states for word in ("down", "not_responding", "*")):
        subprocess.run(["bash", str(REPO / "slurm/devcluster/up.sh")], capture_output=True, check=False)


@pytest.fixture(scope="session")
def cluster() -> None:
    """The dev cluster, brought up if it is not running (the test command normally did it already)."""
    if not _cluster_up():
        subprocess.run(["bash", str(REPO / "slurm/devcluster/up.sh")], check=True)
    assert _cluster_up(), "the dev cluster did not come up; see /var/lib/hpcai-devcluster/log"


@pytest.fixture(scope="session")
def hpcai() -> RunHpcai:
    """Run the real CLI in a subprocess: `hpcai("jobs", "--json", user="alice", env={...})`. It keeps no state,
    so module-scoped fixtures may use it too."""

    def run(*args: str, user: str | None = None, env: Mapping[str, str] | None = None,
            cwd: str | os.PathLike[str] = "/tmp", timeout: float = 300) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **(env or {})}
        argv: Sequence[str] = [*HPCAI, *args]
        if user is not None:
            # runuser keeps only what we pass explicitly: the site profile and Python path.
            keep = {k: v for k, v in full_env.items() if k.startswith("HPCAI_") or k in {"PATH", "LANG"}}
            argv = ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in keep.items()), *argv]
        return subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, env=full_env,
                              timeout=timeout, check=False)

    return run


def wait_until(what: str, ready: Callable[[], object], timeout: float = 60, interval: float = 0.5,
               detail: Callable[[], object] | None = None) -> None:
    """Poll `ready` until it returns something true; fail with `what` after `timeout` seconds (and with what
    `detail` returns then, if given: the last state seen). The one wait helper of the suite (files and Slurm
    state both)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what} (not within {timeout:.0f} s)" + (
            f": {detail()}" if detail else "")
        time.sleep(interval)


@pytest.fixture()
def shared_root() -> Iterator[Path]:
    """A job root every test user can reach (pytest's tmp_path sits under a root-only directory)."""
    root = Path(tempfile.mkdtemp(prefix="hpcai-jobs-", dir="/tmp"))
    root.chmod(0o1777)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def user_folders(shared_root: Path) -> Path:
    """`shared_root` with root's, alice's and bob's folders made by root, as `hpcai admin user-folders` makes
    them on a site (users never make their own in a shared job root)."""
    from hpc_aidc.install.user_folders import ensure_user_folders

    ensure_user_folders(shared_root, ["root", "alice", "bob"])
    return shared_root


@pytest.fixture(scope="session")
def fake_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake NVML (tests/monitor/fake_nvml/fake_nvml.c), built with gcc once a session."""
    if str(FAKE_NVML) not in sys.path:
        sys.path.insert(0, str(FAKE_NVML))
    from fake_scenario import build_library

    return build_library(FAKE_NVML / "fake_nvml.c", tmp_path_factory.mktemp("fake-nvml"))


def assert_clean_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """The house rule for bad input: exit 2, one line on stderr, no traceback, nothing on stdout."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("hpcai: error: ") or lines[0].startswith("Error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
