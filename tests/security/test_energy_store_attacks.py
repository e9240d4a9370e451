"""Attacks on the root-run energy code by an ordinary user (alice), on a store where users can create job
directories (mode 1733: a site whose jobs sample themselves, or the dev cluster's store before this was
hardened). Root runs the sampler (as the prolog does) and the node epilog step; alice plants links at
every path root touches, a job directory of her own, a forged pid and forged records, and work reports
that are links or FIFOs. Each time: the root-owned canary is unchanged, no process of root's is killed,
no forged figure reaches accounting, and root says what it set aside."""

from __future__ import annotations

import grp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import FAKE_NVML, wait_until

sys.path.insert(0, str(FAKE_NVML))

from energy_testkit import HPCAI, SITE, ramp_scenario

from hpc_aidc.monitor import acct

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None
    or any(subprocess.run(["id", u], capture_output=True, check=False).returncode for u in ("alice", "bob")),
    reason="needs root and the dev cluster's users alice and bob")

CANARY_TEXT = "tokens=12345\nroot's canary: must never change\n"


@dataclass
class Arena:
    root: Path
    store: Path
    canary: Path
    canary_dir: Path
    env: dict[str, str]

    def as_alice(self, script: str) -> None:
        subprocess.run(["runuser", "-u", "alice", "--", "bash", "-c", f"set -euo pipefail; {script}"],
                       check=True, cwd="/tmp")

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*HPCAI, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=False)

    def prolog(self, job: str, node: str = "n1", log: Path | None = None) -> subprocess.CompletedProcess[str]:
        """The sampler as the prolog starts it: root, detached, for alice's job in project physics."""
        return self.run("energy", "sample", "--detach", "--job-id", job, "--node", node, "--interval", "0.1",
                        "--max-duration", "0.6", "--user", "alice", "--account", "physics", "--source",
                        "prolog", "--run", "0", "--log", str(log or self.root / "energy.log"))

    def epilog(self, job: str, node: str = "n1") -> subprocess.CompletedProcess[str]:
        return self.run("energy", "finish", "--job-id", job, "--node", node, "--run", "0", timeout=30)

    def assert_canary_intact(self) -> None:
        st = self.canary.lstat()
        assert self.canary.read_text() == CANARY_TEXT
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o600)
        assert sorted(p.name for p in self.canary_dir.iterdir()) == ["keep"]
        assert self.canary_dir.stat().st_uid == 0


@pytest.fixture()
def arena(fake_lib: Path) -> Iterator[Arena]:
    # Users must reach the store as on a cluster, so not under pytest's root-only temp dirs.
    root = Path(tempfile.mkdtemp(prefix="hpcai-attack-", dir="/tmp"))
    root.chmod(0o755)
    store = root / "energy"
    store.mkdir()
    store.chmod(0o1733)
    (store / "accounting").mkdir()
    (store / "accounting").chmod(0o2770)
    canary_dir = root / "rootdir"
    canary_dir.mkdir(mode=0o755)
    (canary_dir / "keep").write_text("keep\n")
    canary = root / "canary"
    canary.write_text(CANARY_TEXT)
    canary.chmod(0o600)
    site = root / "site.toml"
    site.write_text(SITE.format(root=root, store=store))
    scenario = ramp_scenario(start=time.time()).write(root / "scenario")
    scenario.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "CUDA_VISIBLE"))}
    env.pop("HPCAI_NVML_LIBRARY", None)
    env.update({"LD_LIBRARY_PATH": str(fake_lib.parent), "HPCAI_FAKE_NVML_SCENARIO": str(scenario),
                "HPCAI_SITE": str(site), "SLURM_JOB_GPUS": "0,1"})
    try:
        yield Arena(root, store, canary, canary_dir, env)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _wait_released(path: Path, timeout: float = 10.0) -> None:
    """Until the detached sampler let go of its lock (it stops by itself after --max-duration)."""
    import fcntl

    def released() -> bool:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    wait_until(f"{path} released by the sampler", released, timeout, interval=0.05)


NODE_FILES = ("n1.lock", "n1.meta.json", "n1.series.bin", "n1.end.json", "n1.summary.json")


def test_links_planted_in_a_job_dir_are_set_aside_never_followed(arena: Arena) -> None:
    job = arena.store / "501"
    links = " ".join(f"ln -s {arena.canary} {job}/r0/{name};" for name in NODE_FILES)
    arena.as_alice(f"mkdir -p {job}/r0; chmod 777 {job} {job}/r0; {links} ln -s {arena.canary_dir} {job}/r0/work")
    started = arena.prolog("501")
    assert started.returncode == 0, started.stderr
    _wait_released(job / "r0" / "n1.lock")
    done = arena.epilog("501")
    assert done.returncode == 0, done.stderr
    arena.assert_canary_intact()
    # root made a fresh job directory of its own and set alice's aside, and said so
    st = job.lstat()
    assert (st.st_uid, grp.getgrgid(st.st_gid).gr_name, st.st_mode & 0o7777) == (0, "physics", 0o750)
    aside = [p for p in arena.store.iterdir() if p.name.startswith(".quarantine.501.")]
    assert len(aside) == 1 and aside[0].stat().st_uid != 0
    assert "set aside" in (arena.root / "energy.log").read_text()
    for name in NODE_FILES:
        path = job / "r0" / name
        assert not path.is_symlink() and path.stat().st_uid == 0, name
    assert acct.decode(done.stdout).gpus == 2


def test_a_job_dir_that_is_a_link_is_set_aside(arena: Arena) -> None:
    arena.as_alice(f"ln -s {arena.canary_dir} {arena.store}/502")
    assert arena.prolog("502").returncode == 0
    _wait_released(arena.store / "502" / "r0" / "n1.lock")
    assert arena.epilog("502").returncode == 0
    arena.assert_canary_intact()
    assert not (arena.store / "502").is_symlink() and (arena.store / "502").stat().st_uid == 0


def test_work_reports_that_are_links_or_fifos_are_not_read(arena: Arena) -> None:
    assert arena.prolog("503").returncode == 0
    work = arena.store / "503" / "r0" / "work"
    assert work.stat().st_uid == pwd_uid("alice")
    arena.as_alice(f"ln -s {arena.canary} {work}/work.n1.1; mkfifo {work}/work.n1.2; "
                   f"printf 'tokens=100\\n' > {work}/work.n1.3; "
                   f"head -c 5000000 /dev/zero | tr '\\0' '7' > {work}/work.n1.4")
    _wait_released(arena.store / "503" / "r0" / "n1.lock")
    done = arena.epilog("503")  # a FIFO would block an open without O_NONBLOCK: the timeout catches it
    assert done.returncode == 0, done.stderr
    arena.assert_canary_intact()
    assert acct.decode(done.stdout).tokens == 100  # the link (tokens=12345) and the junk count nothing


def test_the_samplers_log_never_goes_through_a_users_folder(arena: Arena) -> None:
    # The prolog's --log comes from root's energy.env; were it in a folder alice owns, she could point it
    # anywhere: root opens it folder by folder and writes nowhere a folder on the way is not root's alone.
    mine = arena.root / "alice-logs"
    mine.mkdir(mode=0o755)
    shutil.chown(mine, "alice")
    arena.as_alice(f"ln -s {arena.canary_dir} {mine}/sub; ln -s {arena.canary} {mine}/energy.log")
    for n, log in enumerate((mine / "sub" / "energy.log", mine / "energy.log", mine / "new.log")):
        job = str(510 + n)
        started = arena.prolog(job, log=log)
        assert started.returncode == 0, started.stderr  # the sampler runs all the same, its output dropped
        _wait_released(arena.store / job / "r0" / "n1.lock")
    arena.assert_canary_intact()
    assert sorted(p.name for p in mine.iterdir()) == ["energy.log", "sub"]


def _fails_as_alice(script: str) -> bool:
    return subprocess.run(["runuser", "-u", "alice", "--", "bash", "-c", script], capture_output=True,
                          cwd="/tmp", check=False).returncode != 0


def test_the_work_folder_is_closed_to_its_user_when_the_run_ends(arena: Arena) -> None:
    assert arena.prolog("520").returncode == 0
    run = arena.store / "520" / "r0"
    work = run / "work"
    arena.as_alice(f"printf 'tokens=100\\n' > {work}/work.n1.1; printf 'tokens=20\\nsamples=3\\n' > {work}/work.n1.2")
    _wait_released(run / "n1.lock")
    done = arena.epilog("520")
    assert done.returncode == 0, done.stderr
    assert acct.decode(done.stdout).tokens == 120
    st = work.stat()
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o700)  # root's now: nothing to add, grow or reach
    counted = run / "n1.work.json"
    cst = counted.lstat()
    assert (cst.st_uid, grp.getgrgid(cst.st_gid).gr_name, cst.st_mode & 0o7777) == (0, "physics", 0o640)
    assert json.loads(counted.read_text())["tokens"] == 120
    assert os.listdir(work) == []  # counted once, then removed
    for script in (f"echo tokens=1 > {work}/work.n1.3", f"head -c 1000000 /dev/zero >> {work}/work.n1.1",
                   f"ls {work}", f"mkdir {work}/more"):
        assert _fails_as_alice(script), script
    arena.assert_canary_intact()


def test_work_reports_past_the_bounds_count_as_unknown(arena: Arena) -> None:
    from hpc_aidc.monitor.records import MAX_WORK_FILES

    assert arena.prolog("521").returncode == 0
    run = arena.store / "521" / "r0"
    arena.as_alice(f"cd {run}/work; for i in $(seq 0 {MAX_WORK_FILES + 50}); do echo tokens=1 > work.n1.$i; done")
    _wait_released(run / "n1.lock")
    done = arena.epilog("521")
    assert done.returncode == 0, done.stderr
    assert acct.decode(done.stdout).tokens is None and "work not counted" in done.stderr
    assert (run / "work").stat().st_uid == 0 and _fails_as_alice(f"echo tokens=1 >> {run}/work/work.n1.0")


def test_a_users_own_records_and_forged_pid_never_reach_root(arena: Arena) -> None:
    # A site where jobs sample themselves: alice's sampler makes her own records; then she forges them
    # (a huge energy) and the lock's pid (a root process), holding the lock so the epilog would signal.
    victim = subprocess.Popen(["sleep", "60"])
    try:
        env = " ".join(f"{k}={v}" for k, v in arena.env.items() if k.startswith(("HPCAI", "LD_")))
        arena.as_alice(f"cd /tmp; env {env} SLURM_JOB_GPUS=0 {' '.join(HPCAI)} energy sample --job-id 504 "
                       "--node n1 --interval 0.1 --max-duration 0.3 --run 0")
        run = arena.store / "504" / "r0"
        assert run.stat().st_uid == pwd_uid("alice")
        meta = json.loads((run / "n1.meta.json").read_text())
        meta["start_counters_mj"] = [0]
        forged_end = {"t_end": meta["t_start"] + 1, "end_counters_mj": [10**12], "rapl_end": None,
                      "source": "sampler"}
        (arena.root / "meta.json").write_text(json.dumps(meta))
        (arena.root / "end.json").write_text(json.dumps(forged_end))
        arena.as_alice(f"cp {arena.root}/meta.json {run}/n1.meta.json; "
                       f"cp {arena.root}/end.json {run}/n1.end.json; ln -s {arena.canary} {run}/n1.summary.json")
        holder = subprocess.Popen(["runuser", "-u", "alice", "--", "bash", "-c",
                                   f"exec 9>>{run}/n1.lock; flock 9; echo {victim.pid} > {run}/n1.lock; sleep 30"])
        try:
            time.sleep(0.5)
            done = arena.epilog("504")
        finally:
            holder.kill()
        assert done.returncode == 0, done.stderr
        assert victim.poll() is None, "root signalled a pid a user wrote"
        assert "not root's own" in done.stderr
        line = (arena.store / "accounting" / "504.r0.n1").read_text()
        totals = acct.decode(line)
        assert totals.gpu_j is None and totals.missing == () and totals.source == "unavailable", line
        arena.assert_canary_intact()
    finally:
        victim.kill()


def test_root_reads_no_site_profile_a_user_could_write(arena: Arena) -> None:
    site = arena.root / "alice-site.toml"
    site.write_text((arena.root / "site.toml").read_text().replace(str(arena.store), str(arena.canary_dir)))
    os.chown(site, pwd_uid("alice"), -1)
    proc = arena.run("--site", str(site), "energy", "finish", "--job-id", "505", "--node", "n1", "--run", "0")
    assert proc.returncode == 2 and "owned by root" in proc.stderr and "Traceback" not in proc.stderr
    arena.assert_canary_intact()


def test_bad_ids_reach_no_path(arena: Arena) -> None:
    for args in (("--job-id", "../rootdir"), ("--job-id", "1", "--node", "../../rootdir")):
        proc = arena.run("energy", "finish", *args, "--run", "0")
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    arena.assert_canary_intact()


def pwd_uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid

