"""Root's own paths, attacked by an ordinary user (alice) who owns a folder root writes, reads or signals
through: the energy scripts' log, the dev cluster's pid files, a job's task log that root prints with
`hpcai logs`. Root never writes through a link, never reads a file that is not the job user's own plain
file, never waits on a FIFO, never signals a pid a user wrote; and the dev cluster keeps its run and log
folders root's alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, RunHpcai, wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None
    or any(subprocess.run(["id", u], capture_output=True, check=False).returncode for u in ("alice", "bob")),
    reason="needs root and the dev cluster's users alice and bob")

CANARY = "root's canary: must never change or show\n"


def as_alice(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "alice", "--", "bash", "-c", f"set -euo pipefail; {script}"],
                          capture_output=True, text=True, cwd="/tmp", check=False)


@pytest.fixture()
def area() -> Iterator[Path]:
    """A root-owned folder users can enter, with a root-only canary file and a folder alice owns."""
    root = Path(tempfile.mkdtemp(prefix="hpcai-rootpaths-", dir="/tmp"))
    root.chmod(0o755)
    (root / "canary").write_text(CANARY)
    (root / "canary").chmod(0o600)
    (root / "rootdir").mkdir(mode=0o755)
    (root / "alice").mkdir(mode=0o755)
    shutil.chown(root / "alice", "alice")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _canary_intact(area: Path) -> None:
    st = (area / "canary").lstat()
    assert (area / "canary").read_text() == CANARY and (st.st_uid, st.st_mode & 0o7777) == (0, 0o600)
    assert list((area / "rootdir").iterdir()) == []


def _energy_log(log: Path) -> subprocess.CompletedProcess[str]:
    """energy_log of slurm/energy/common.sh, as root's prolog calls it, logging to `log`."""
    script = f'set -euo pipefail; . "{REPO}/slurm/energy/common.sh"; HPCAI_ENERGY_LOG="$1"; energy_log "hello"'
    return subprocess.run(["bash", "-c", script, "energy_log", str(log)], capture_output=True, text=True,
                          timeout=30, check=False)


def test_root_never_logs_through_a_folder_another_user_owns(area: Path) -> None:
    planted = as_alice(f"ln -s {area}/canary {area}/alice/energy.log; ln -s {area}/rootdir {area}/alice/sub; "
                       f"mkfifo {area}/alice/fifo.log")
    assert planted.returncode == 0, planted.stderr
    for log in (area / "alice" / "energy.log", area / "alice" / "sub" / "energy.log", area / "alice" / "new.log",
                area / "alice" / "fifo.log"):
        done = _energy_log(log)  # a FIFO would hang an append: the timeout catches it
        assert done.returncode == 0 and "not logging to" in done.stderr, (log, done.stderr)
    _canary_intact(area)
    assert not (area / "alice" / "new.log").exists()
    # root's own folder: logged
    done = _energy_log(area / "energy.log")
    assert done.returncode == 0 and done.stderr == "" and "hello" in (area / "energy.log").read_text()


def _shell(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", f'set -euo pipefail; source "{REPO}/slurm/devcluster/common.sh"; {script}'],
                          capture_output=True, text=True, timeout=30, check=False)


def test_root_signals_no_pid_a_user_wrote(area: Path) -> None:
    victim = subprocess.Popen(["sleep", "60"])
    try:
        assert as_alice(f"echo {victim.pid} > {area}/alice/x.pid").returncode == 0
        (area / "root.pid").write_text(f"{victim.pid}\n")
        (area / "alice.pid").write_text(f"{victim.pid}\n")
        shutil.chown(area / "alice.pid", "alice")
        for pidfile in (f"{area}/alice/x.pid", f"{area}/alice.pid"):
            # a pid file in alice's folder, or one alice owns: not root's to act on
            done = _shell(f'alive "{pidfile}" && echo alive; signal_daemon TERM "{pidfile}"')
            assert done.returncode == 0 and "alive" not in done.stdout, done.stderr
            # one a daemon wrote as another account counts only when /proc shows its program
            done = _shell(f'signal_daemon TERM "{pidfile}" "$SLURMCTLD_BIN"')
            assert done.returncode == 0, done.stderr
        time.sleep(0.3)
        assert victim.poll() is None, "root signalled a pid a user wrote"
        # root's own pid file in root's folder is root's to act on
        assert _shell(f'pid_of "{area}/root.pid"').stdout.strip() == str(victim.pid)
        assert _shell(f'pid_of "{area}/root.pid" /usr/bin/sleep').stdout.strip() == str(victim.pid)
    finally:
        victim.kill()


@pytest.mark.cluster
@pytest.mark.usefixtures("cluster")
def test_the_dev_clusters_run_and_log_folders_are_roots_alone() -> None:
    run, logs = Path("/run/hpcai-devcluster"), Path("/var/lib/hpcai-devcluster/log")
    for folder in (run, logs):
        st = folder.lstat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o755), folder
        for entry in folder.iterdir():
            est = entry.lstat()
            assert not entry.is_symlink() and entry.is_file(), entry
            # slurmctld and slurmdbd open theirs as root and then hand the file (not the folder) to SlurmUser
            if entry.name not in {"slurmctld.pid", "slurmdbd.pid", "slurmctld.log", "slurmdbd.log", "energy.log"}:
                assert est.st_uid == 0, entry
    status = subprocess.run(["bash", str(REPO / "slurm/devcluster/status.sh")], capture_output=True, text=True,
                            check=False)
    assert status.returncode == 0 and "stopped" not in status.stdout, status.stdout


# -- `hpcai logs` as root on alice's job ---------------------------------------------------------------------

@pytest.mark.cluster
@pytest.mark.usefixtures("cluster")
def test_root_reads_a_job_log_only_as_the_users_own_plain_file(hpcai: RunHpcai, area: Path) -> None:
    proc = hpcai("submit", "run", "-A", "physics", "--wait", "--json", "--", "echo", "alice-was-here", user="alice")
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)
    folder, job_id = Path(job["folder"]), job["job_id"]
    log = folder / f"{job_id}_0_log.out"
    wait_until("the task log", log.exists, 30)
    shown = hpcai("logs", job_id)
    assert shown.returncode == 0 and "alice-was-here" in shown.stdout, shown.stderr

    attacks = {
        "a link to a root-only file": f"rm -f {log}; ln -s {area}/canary {log}",
        "a FIFO": f"rm -f {log}; mkfifo {log}",
        "the job folder as a link": f"mv {folder} {folder}.real; mkdir -p {area}/alice/j; "
                                    f"ln -s {area}/canary {area}/alice/j/{log.name}; ln -s {area}/alice/j {folder}",
    }
    try:
        for what, script in attacks.items():
            planted = as_alice(script)
            assert planted.returncode == 0, (what, planted.stderr)
            started = time.monotonic()
            shown = hpcai("logs", job_id, timeout=30)  # a FIFO would hang a plain open: the timeout says so
            assert shown.returncode == 2, (what, shown.returncode, shown.stdout, shown.stderr)
            assert "canary" not in shown.stdout and "Traceback" not in shown.stderr, what
            assert time.monotonic() - started < 20, what
            if what == "a FIFO":
                as_alice(f"rm -f {log}")
        # a hard link to root's file is refused too, where the kernel lets alice make one at all
        if as_alice(f"rm -f {folder}; mv {folder}.real {folder}; rm -f {log}; ln {area}/canary {log}").returncode == 0:
            shown = hpcai("logs", job_id)
            assert shown.returncode == 2 and "canary" not in shown.stdout
    finally:
        as_alice(f"[ -L {folder} ] && rm -f {folder} && mv {folder}.real {folder} || true")
    _canary_intact(area)
