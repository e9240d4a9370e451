"""The accounting store on the real dev cluster: `hpcai report ingest` as root, then reports and the site
from the store (plus the live tail) equal the --live sacct path for a period that cuts through a job
still running and a requeued job; a second ingest changes nothing; an energy summary that reaches
accounting after the job was stored (the spool of a slurmdbd outage) is counted once; bob reads none
of physics' rows by any path; a user cannot ingest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, RunHpcai, assert_clean_error

from hpc_aidc.monitor import spool
from hpc_aidc.site_profile import load_trusted_site

pytestmark = pytest.mark.cluster
FMT = "%Y-%m-%dT%H:%M:%S"
TAG = "hpcai-energy-v1"


def _sh(*argv: str, user: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    full = ["runuser", "-u", user, "--", *argv] if user else list(argv)
    return subprocess.run(full, capture_output=True, text=True, check=check, cwd="/tmp", timeout=120)


def _submit(user: str, account: str, *args: str, seconds: int = 2) -> str:
    out = _sh("sbatch", "--parsable", "-A", account, "-t", "5", "-o", "/dev/null", *args, "--wrap",
              f"sleep {seconds}", user=user).stdout
    return out.strip().split(";")[0]


def _states(ids: list[str]) -> dict[str, str]:
    out = _sh("sacct", "-X", "-n", "-P", "--duplicates", f"--jobs={','.join(ids)}", "--format=JobID,State").stdout
    return {line.split("|")[0]: line.split("|")[1] for line in out.splitlines()}


def _start(job_id: str) -> int:
    out = _sh("sacct", "-X", "-n", "-P", f"--jobs={job_id}", "--format=Start").stdout.split()
    return int(time.mktime(time.strptime(out[-1], FMT)))


def _comment(job_id: str) -> str:
    out = _sh("sacct", "-X", "-n", "-P", f"--jobs={job_id}", "--format=AdminComment").stdout
    return out.strip().splitlines()[-1] if out.strip() else ""


@pytest.fixture(scope="module")
def store(cluster: None) -> Path:
    site = load_trusted_site()
    assert site.report_store is not None, "the dev cluster's profile names a report_store"
    return site.report_store


@pytest.fixture(scope="module")
def jobs(cluster: None, store: Path) -> Iterator[dict[str, object]]:
    """Finished jobs of both accounts (an array, one requeued once), then one left running."""
    begin = int(time.time()) - 2
    ids = [_submit("alice", "physics", "-N", "2", "--gres=gpu:2"), _submit("bob", "climate", "--array=0-2"),
           _submit("alice", "physics", "--gres=gpu:1", seconds=6)]
    deadline = time.time() + 120
    while _states([ids[2]]).get(ids[2]) != "RUNNING":
        assert time.time() < deadline, _states(ids)
        time.sleep(1)
    _sh("scontrol", "requeue", ids[2])  # its first run ends REQUEUED; Slurm starts it again after its delay
    _sh("scontrol", "update", f"jobid={ids[2]}", "StartTime=now", check=False)
    while True:
        states = _states(ids[:3])
        done = [s for s in states.values() if s not in {"PENDING", "RUNNING", "COMPLETING", "REQUEUED"}]
        if len(done) >= 5 and all(TAG in _comment(j) for j in (ids[0], ids[2])):
            break
        assert time.time() < deadline + 180, states
        time.sleep(2)
    running = _submit("alice", "physics", "--gres=gpu:1", seconds=300)
    while _states([running]).get(running) != "RUNNING":
        assert time.time() < deadline + 240
        time.sleep(1)
    yield {"ids": ids, "running": running, "begin": begin}
    _sh("scancel", running, check=False)


def _ingest(hpcai: RunHpcai, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    return hpcai("report", "ingest", "--json", "--settle", "1second", *args, user=user)


def _usage(hpcai: RunHpcai, since: int, until: int, *args: str) -> dict[str, object]:
    proc = hpcai("report", "usage", "--json", "--since", time.strftime(FMT, time.localtime(since)),
                 "--until", time.strftime(FMT, time.localtime(until)), *args)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, object] = json.loads(proc.stdout)
    return out


def _lines(report: dict[str, object]) -> list[dict[str, object]]:
    return [*report["lines"], report["total"]]  # type: ignore[list-item]


def assert_same(a: dict[str, object], b: dict[str, object]) -> None:
    assert len(_lines(a)) == len(_lines(b)) > 1
    for x, y in zip(_lines(a), _lines(b), strict=True):
        assert x.keys() == y.keys()
        for key, value in x.items():
            if isinstance(value, float):
                assert y[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (x, key)
            else:
                assert y[key] == value, (x, key)


def test_store_reports_equal_sacct(jobs: dict[str, object], store: Path, hpcai: RunHpcai) -> None:
    begin = int(jobs["begin"])  # type: ignore[call-overload]
    first = _ingest(hpcai, "--since", time.strftime(FMT, time.localtime(begin - 3600)))
    assert first.returncode == 0, first.stderr
    state = json.loads((store / "state.json").read_text())
    assert state["watermark"] >= begin
    # cuts through the running job (at least a second after its start, which a fast ingest can beat); fixed,
    # so both sides count it alike
    started = _start(str(jobs["running"]))
    while time.time() < started + 3:
        time.sleep(0.5)
    until = int(time.time()) - 1
    for dims in (("--by", "account"), ("--by", "account", "--by", "user"), ("--by", "user", "--by", "day")):
        stored = _usage(hpcai, begin - 60, until, *dims)
        live = _usage(hpcai, begin - 60, until, *dims, "--live")
        assert_same(live, stored)
    total = stored["total"]
    assert total["requeues"] >= 1, total  # type: ignore[index]
    running = str(jobs["running"])
    assert total["running"] >= 1, (_states([running]), total)  # type: ignore[index]
    # the same through the site: every page identical
    out = {}
    for mode in ("store", "live"):
        d = REPO / "artifacts" / f"report-site-{mode}"
        proc = hpcai("report", "site", "--out", str(d), "--since", time.strftime(FMT, time.localtime(begin - 60)),
                     "--until", time.strftime(FMT, time.localtime(until)), *(("--live",) if mode == "live" else ()))
        assert proc.returncode == 0, proc.stderr
        out[mode] = {p.relative_to(d): p.read_text() for p in sorted(d.rglob("*.html"))}
    differ = sorted(str(p) for p in out["store"].keys() | out["live"].keys()
                    if out["store"].get(p) != out["live"].get(p))
    assert not differ, (differ, _page_diff(out["store"], out["live"], differ[0]))


def _page_diff(store: dict[Path, str], live: dict[Path, str], page: str) -> str:
    """The first lines where a page of the two sites differs (what a failure needs to be understood)."""
    import difflib

    a, b = store.get(Path(page), "").splitlines(), live.get(Path(page), "").splitlines()
    return "\n".join(list(difflib.unified_diff(a, b, "store", "live", lineterm="", n=1))[:40])


def _stored(store: Path) -> dict[tuple[object, ...], dict[str, object]]:
    """Every live row of the store by its key."""
    import pyarrow.parquet as pq

    from hpc_aidc.report.store.layout import live_parts
    from hpc_aidc.report.store.table import KEY

    rows: dict[tuple[object, ...], dict[str, object]] = {}
    for folder in {p.parent for p in store.glob("jobs/*/*/*.parquet")}:
        for name in live_parts(os.listdir(folder)):
            for row in pq.read_table(folder / name).to_pylist():
                rows[tuple(row[k] for k in KEY)] = row
    return rows


def test_second_ingest_changes_nothing(jobs: dict[str, object], store: Path, hpcai: RunHpcai) -> None:
    """Re-reading three hours rewrites nothing Slurm did not change in between. Other tests' jobs go on
    ending, and a summary may land after its job was stored (the first ingest of the module settles for a
    second only): those are the only rows a re-read may write."""
    # where the first ingest's window starts: its watermark less the default overlap (1 hour)
    start = json.loads((store / "state.json").read_text())["watermark"] - 3600
    first = _ingest(hpcai, "--settle", "2minutes")
    assert first.returncode == 0, first.stderr
    before = _stored(store)
    upto = json.loads((store / "state.json").read_text())["watermark"]
    again = _ingest(hpcai, "--overlap", "3hours", "--settle", "2minutes")  # re-reads all this module made
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["rows_read"] > 0, result
    after = _stored(store)
    assert before.keys() <= after.keys()
    changed = {k: row for k, row in after.items() if before.get(k) != row}
    for key, row in changed.items():
        old = before.get(key)
        if old is None:  # new: ended after the first read, or before its window (never read)
            assert row["end"] > upto or row["end"] < start, ("an overlap stored a row it had read before", row)
        else:
            assert old["admin_comment"] != row["admin_comment"] or old["state"] != row["state"], (old, row)
    assert result["rows_written"] == len(changed), (result, changed)  # nothing rewritten as it was


def test_late_energy_is_counted_once(jobs: dict[str, object], store: Path, hpcai: RunHpcai) -> None:
    """slurmdbd was away when the job ended: its summary sat in the spool, the job was stored without it;
    the backfill then stores it in AdminComment and the next ingest replaces the row."""
    begin = int(jobs["begin"])  # type: ignore[call-overload]
    job = _submit("bob", "climate", "--gres=gpu:1")
    deadline = time.time() + 120
    while TAG not in _comment(job):
        assert time.time() < deadline
        time.sleep(2)
    summary = _comment(job)
    energy_store = load_trusted_site().energy_store
    _sh("sacctmgr", "-i", "modify", "job", "where", f"jobid={job}", "set", "AdminComment=")
    spool.add(energy_store, job)
    try:
        time.sleep(2)
        result = json.loads(_ingest(hpcai).stdout)
        assert result["awaiting_energy"] >= 1, result
        _sh("sacctmgr", "-i", "modify", "job", "where", f"jobid={job}", "set", f"AdminComment={summary}")
    finally:
        spool.remove(energy_store, job)
    result = json.loads(_ingest(hpcai).stdout)
    assert result["awaiting_energy"] == 0 and result["rows_written"] >= 1, result
    until = int(time.time()) - 1
    stored = _usage(hpcai, begin - 60, until, "-A", "climate")
    live = _usage(hpcai, begin - 60, until, "-A", "climate", "--live")
    assert_same(live, stored)
    assert stored["total"]["energy_coverage"] == pytest.approx(1.0)  # type: ignore[index]


def test_bob_cannot_read_physics_rows(jobs: dict[str, object], store: Path, hpcai: RunHpcai) -> None:
    _ingest(hpcai)
    physics = store / "jobs" / "account=physics"
    part = next(physics.rglob("*.parquet"))
    rolled = store / "rollups" / "account=physics"
    days = next(rolled.rglob("days-*.parquet"))  # daily sums per user: as private as the rows
    every = next((store / "all").rglob("edges-*.parquet"))  # every account's edge rows: root's alone
    assert part.stat().st_mode & 0o007 == 0 and physics.stat().st_mode & 0o007 == 0
    assert days.stat().st_mode & 0o007 == 0 and rolled.stat().st_mode & 0o007 == 0
    assert every.stat().st_gid == 0 and every.stat().st_mode & 0o007 == 0
    python = sys.executable  # the root-owned venv: bob can run it, wherever the checkout is
    for argv in (["cat", str(part)], ["ls", str(physics)], ["find", str(store), "-name", "*.parquet"],
                 ["cat", str(days)], ["ls", str(rolled)], ["cat", str(every)], ["ls", str(every.parent)],
                 [python, "-c", f"import pyarrow.parquet as pq; print(pq.read_table('{part}'))"],
                 [python, "-c",
                  f"import duckdb; print(duckdb.sql(\"select * from read_parquet('{store}/jobs/*/*/*.parquet', "
                  "hive_partitioning=true) where account='physics'\").fetchall())"],
                 [python, "-c",
                  f"import duckdb; print(duckdb.sql(\"select * from read_parquet('{store}/rollups/*/*/*.parquet', "
                  "hive_partitioning=true, union_by_name=true) where account='physics'\").fetchall())"],
                 [python, "-c",
                  f"import duckdb; print(duckdb.sql(\"select * from read_parquet('{store}/all/*/*.parquet', "
                  "union_by_name=true) where account='physics'\").fetchall())"]):
        proc = _sh(*argv, user="bob", check=False)
        assert "physics" not in proc.stdout and "alice" not in proc.stdout, (argv, proc.stdout)
        # refused, or (find, a glob over the store) nothing of physics listed
        assert proc.returncode != 0 or argv[0] == "find" or proc.stdout.strip() == "[]", (argv, proc.stdout)
    # a plain member of physics reads none of it either (PrivateData=jobs: not her fellow members' jobs), nor
    # can she list which accounts the store holds; her reports ask sacct, which shows her what Slurm allows
    for argv in ([python, "-c", f"import pyarrow.parquet as pq; print(pq.read_table('{part}'))"],
                 ["ls", str(store / "jobs")], ["ls", str(store / "rollups")], ["cat", str(days)]):
        proc = _sh(*argv, user="alice", check=False)
        assert proc.returncode != 0 and "physics" not in proc.stdout, (argv, proc.stdout)
    mine = hpcai("report", "usage", "-A", "physics", "--by", "user", "--json", "--since", "now-1days", user="alice")
    assert mine.returncode == 0, mine.stderr
    assert {row["user"] for row in json.loads(mine.stdout)["lines"]} <= {"alice"}
    assert_clean_error(hpcai("report", "usage", "-A", "physics", user="bob"), "physics")
    climate = hpcai("report", "usage", "--json", "--since", "now-1days", user="bob")
    assert climate.returncode == 0 and "physics" not in climate.stdout, climate.stderr


def test_users_cannot_ingest_or_tamper(jobs: dict[str, object], store: Path, hpcai: RunHpcai) -> None:
    proc = hpcai("report", "ingest", user="alice")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    for target in (store / "state.json", store / "jobs", store / "rollups"):
        assert _sh("touch", str(target / "x") if target.is_dir() else str(target), user="alice",
                   check=False).returncode != 0
    assert os.stat(store).st_uid == 0 and os.stat(store).st_mode & 0o022 == 0
