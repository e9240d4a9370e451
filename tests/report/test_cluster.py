"""`hpcai report` against the real dev cluster: real jobs under two accounts, then the report's
per-account CPU- and GPU-hours against sreport for the same period, energy against the jobs' own
summaries, access between users, and the static site in headless Chromium.

sreport reads slurmdbd's hourly rollups, and the current hour is rolled up only when it ends. The test
forces it with `sacctmgr -i rollup <hour start> <next hour>`: given an end, slurmdbd rolls those hours
now (running jobs counted to the end of the hour) without moving its own last-rollup mark, so the
regular hourly rollup still happens. Both sides then use the same hour-aligned period, in seconds
(`sreport -t seconds`), with no job of the two accounts still running."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time

import pytest
from conftest import REPO, RunHpcai, assert_clean_error

from hpc_aidc.monitor.acct import decode, encode
from hpc_aidc.monitor.summary import Totals

pytestmark = pytest.mark.cluster
ACCOUNTS = ("physics", "climate")
ARTIFACTS = REPO / "artifacts" / "report-site"
FMT = "%Y-%m-%dT%H:%M:%S"


def _t(epoch: float) -> str:
    return time.strftime(FMT, time.localtime(epoch))


def _sh(*argv: str, user: str | None = None, check: bool = True) -> str:
    full = ["runuser", "-u", user, "--", *argv] if user else list(argv)
    return subprocess.run(full, capture_output=True, text=True, check=check, cwd="/tmp", timeout=120).stdout


def _hour(epoch: float) -> int:
    return int(epoch) // 3600 * 3600 if time.localtime(epoch).tm_gmtoff % 3600 == 0 else int(epoch)


def _busy(accounts: tuple[str, ...]) -> list[str]:
    """Jobs of the accounts that run or may start (a held job can do neither: it never changes usage)."""
    out = _sh("squeue", "--noheader", "--format=%i %r", f"--account={','.join(accounts)}")
    return [line.split()[0] for line in out.splitlines() if line.strip() and "JobHeld" not in line]


def _wait_idle(accounts: tuple[str, ...], limit_s: float = 300) -> None:
    deadline = time.time() + limit_s
    while _busy(accounts):
        if time.time() > deadline:
            pytest.fail(f"jobs of {accounts} kept running for {limit_s:.0f} s: {_busy(accounts)}")
        time.sleep(2)


def _submit(user: str, account: str, *args: str) -> str:
    out = _sh("sbatch", "--parsable", "-A", account, "-t", "5", "-o", "/dev/null", *args, "--wrap", "sleep 3",
              user=user)
    return out.strip().split(";")[0]


@pytest.fixture(scope="module")
def jobs(cluster: None) -> dict[str, object]:
    """Real jobs under both accounts (an array among them), finished, each with an energy summary."""
    begin = _hour(time.time())
    ids = [_submit("alice", "physics", "-N", "2", "--gres=gpu:2"),
           _submit("alice", "physics", "-N", "1", "--gres=gpu:1", "-c", "2"),
           _submit("bob", "climate", "-N", "1", "--gres=gpu:4"),
           _submit("bob", "climate", "-N", "1", "--gres=gpu:1", "--array=0-1")]
    deadline = time.time() + 240
    while True:
        rows = _sh("sacct", "-X", "-n", "-P", f"--jobs={','.join(ids)}",
                   "--format=JobID,State,AdminComment").splitlines()
        done = [r for r in rows if r.split("|")[1] not in {"PENDING", "RUNNING", "COMPLETING", "REQUEUED"}]
        if len(rows) >= 5 and len(done) == len(rows) and all("hpcai-energy-v1" in r for r in rows):
            break
        if time.time() > deadline:
            # the energy layer's epilog did not store a summary: write one the same way it would
            for r in rows:
                job_id, _, comment = r.split("|", 2)
                if "hpcai-energy-v1" not in comment:
                    line = encode(Totals(("n1",), 1, 36000.0, None, 3.0, 100.0, 120.0, 80.0, 0.0, None, None,
                                         "counter", True, False))
                    _sh("sacctmgr", "-i", "modify", "job", "where", f"jobid={job_id}", "set", f"AdminComment={line}")
            break
        time.sleep(2)
    return {"ids": ids, "begin": begin}


def _sreport(since: int, until: int) -> dict[str, dict[str, float]]:
    out = _sh("sreport", "-n", "-P", "cluster", "AccountUtilizationByUser", f"start={_t(since)}",
              f"end={_t(until)}", "-t", "seconds", "--tres=cpu,gres/gpu",
              "format=account,login,tresname,used")
    usage: dict[str, dict[str, float]] = {}
    for line in out.splitlines():
        account, login, tres, used = line.split("|")
        if not login:  # the account's own line (sum of its users)
            usage.setdefault(account, {})[tres] = float(used) / 3600.0
    return usage


def test_cpu_and_gpu_hours_match_sreport(jobs: dict[str, object], hpcai: RunHpcai) -> None:
    since = int(jobs["begin"])  # type: ignore[call-overload]
    for _attempt in range(3):
        _wait_idle(ACCOUNTS)
        until = _hour(time.time()) + 3600
        _sh("sacctmgr", "-i", "rollup", _t(since), _t(until))
        expected = _sreport(since, until)
        proc = hpcai("report", "usage", "--json", "--since", _t(since),
                     "--until", _t(until), "-A", "physics", "-A", "climate")
        if not _busy(ACCOUNTS):
            break  # nothing started while we compared
    assert proc.returncode == 0, proc.stderr
    got = {line["account"]: line for line in json.loads(proc.stdout)["lines"]}
    assert set(got) == set(ACCOUNTS)
    for account in ACCOUNTS:
        assert got[account]["cpu_hours"] == pytest.approx(expected[account]["cpu"], abs=2 / 3600), account
        assert got[account]["gpu_hours"] == pytest.approx(expected[account]["gres/gpu"], abs=2 / 3600), account
        assert got[account]["gpu_hours"] > 0


def test_energy_matches_the_jobs_summaries(jobs: dict[str, object], hpcai: RunHpcai) -> None:
    ids = ",".join(jobs["ids"])  # type: ignore[arg-type]
    rows = [r.split("|", 4) for r in _sh("sacct", "-X", "-n", "-P", f"--jobs={ids}",
                                         "--format=JobID,Start,End,Account,AdminComment").splitlines()]
    start = min(time.mktime(time.strptime(r[1], FMT)) for r in rows)
    end = max(time.mktime(time.strptime(r[2], FMT)) for r in rows) + 1
    # every job of alice and bob in that window (others' tests may run jobs as them too), decoded directly
    window = [r.split("|", 4) for r in _sh(
        "sacct", "-X", "-n", "-P", "-a", "--duplicates", "-u", "alice,bob", f"--starttime={_t(start)}",
        f"--endtime={_t(end)}", "--format=State,Start,End,Account,AdminComment").splitlines()]
    expected: dict[str, float] = {}
    for state, s, e, account, comment in window:
        if "hpcai-energy-v1" not in comment or state.startswith(("REQUEUED", "RUNNING")) or e == "Unknown":
            continue
        t = decode(comment)
        if t.gpu_j is None:
            continue
        s_, e_ = time.mktime(time.strptime(s, FMT)), time.mktime(time.strptime(e, FMT))
        frac = (min(e_, end) - max(s_, start)) / (e_ - s_) if e_ > s_ else 1.0
        expected[account] = expected.get(account, 0.0) + (t.gpu_j + (t.cpu_j or 0.0)) * frac / 3.6e6
    proc = hpcai("report", "usage", "--json", "-u", "alice", "-u", "bob",
                 "--since", _t(start), "--until", _t(end))
    assert proc.returncode == 0, proc.stderr
    got = {line["account"]: line["energy_kwh"] for line in json.loads(proc.stdout)["lines"]}
    assert set(expected) >= {"physics", "climate"}
    for account, kwh in expected.items():
        assert got[account] == pytest.approx(kwh, rel=1e-6), account


def test_users_see_only_their_projects(jobs: dict[str, object], hpcai: RunHpcai) -> None:
    since = _t(int(jobs["begin"]))  # type: ignore[call-overload]
    proc = hpcai("report", "usage", "--json", "--since", since, user="alice")
    assert proc.returncode == 0, proc.stderr
    assert {line["account"] for line in json.loads(proc.stdout)["lines"]} == {"physics"}
    assert_clean_error(hpcai("report", "usage", "-A", "physics", user="bob"), "bob", "physics")
    assert_clean_error(hpcai("report", "site", "--out", "/tmp/never", "-A", "physics", user="bob"), "physics")


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        return subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr",
                               "--v=0", *args], capture_output=True, text=True, timeout=90, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if "Uncaught" in line or ("CONSOLE" in line and "rror" in line) or "Failed to load resource" in line]


@pytest.mark.host_only  # Chromium: the site's rendering, the same on every Slurm
def test_site_opens_in_chromium(jobs: dict[str, object], hpcai: RunHpcai) -> None:
    if shutil.which("chromium") is None:
        pytest.fail("Debian's chromium is not installed: apt-get install -y chromium")
    out = ARTIFACTS / "site"
    shutil.rmtree(out, ignore_errors=True)
    since = _t(int(jobs["begin"]) - 86400)  # type: ignore[call-overload]
    proc = hpcai("report", "site", "--out", str(out), "--since", since)
    assert proc.returncode == 0, proc.stderr
    pages = sorted((out / "projects").glob("*.html"))
    assert {p.stem for p in pages} >= {"physics", "climate"}
    for page in [out / "index.html", *pages]:
        html = page.read_text()
        assert "https://" not in html and "<script" not in html  # fully offline, no external JS
        run = _chromium("--dump-dom", page.as_uri())
        assert run.returncode == 0, run.stderr[-2000:]
        assert not _console_errors(run.stderr), _console_errors(run.stderr)
        assert "<svg" in run.stdout
        if page.name == "index.html":
            for p in pages:
                assert f'href="projects/{p.name}"' in run.stdout
        else:
            assert f"Project {page.stem}</h1>" in run.stdout
        sizes = [("desktop", "1280,1000")] + ([("phone", "390,844")] if page.stem in {"index", "physics"} else [])
        for name, size in sizes:
            shot = ARTIFACTS / f"{page.stem}-{name}.png"
            run = _chromium(f"--screenshot={shot}", f"--window-size={size}", page.as_uri())
            assert run.returncode == 0 and shot.stat().st_size > 10_000, run.stderr[-2000:]
