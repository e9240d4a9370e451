"""A flood of jobs cancelled while pending on the real dev cluster: alice submits a backlog of held jobs and
cancels it at once. slurmctld runs no epilog for them, so the EpilogSlurmctld of other jobs audits them from
slurmdbd. With a small per-epilog budget (energy.env's HPCAI_AUDIT_SWEEP_JOBS) no single epilog audits more
than that, the cursor advances epilog by epilog, and in the end every one of them is in the audit log exactly
once. (Before the sweep was bounded, the first epilog tried the whole backlog at once: with thousands it ran
past its time limit before it wrote its cursor, and every later one started over.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until

from hpc_aidc.site_profile import load_trusted_site

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.usefixtures("cluster"),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None, reason="needs root and runuser"),
]

FLOOD = 150
BUDGET = 25
ENERGY_ENV = Path("/etc/hpcai/energy.env")


def _write_root_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.test-{os.getpid()}")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)


@pytest.fixture()
def small_sweep_budget() -> Iterator[None]:
    """HPCAI_AUDIT_SWEEP_JOBS in root's energy.env, which the epilogs source at every run; restored after."""
    before = ENERGY_ENV.read_bytes()
    kept = [line for line in before.decode().splitlines() if not line.startswith("HPCAI_AUDIT_SWEEP_JOBS=")]
    _write_root_file(ENERGY_ENV, ("\n".join([*kept, f"HPCAI_AUDIT_SWEEP_JOBS={BUDGET}"]) + "\n").encode())
    try:
        yield
    finally:
        _write_root_file(ENERGY_ENV, before)


def _records(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


@pytest.mark.usefixtures("small_sweep_budget")
def test_a_flood_of_jobs_cancelled_while_pending_is_audited_once_each_in_bounded_steps() -> None:
    log = load_trusted_site().audit_log
    assert log is not None, "the dev cluster's site profile names no audit_log"
    submit = (f"for i in $(seq {FLOOD}); do sbatch --parsable --hold -A physics -J flood -o /dev/null "
              "--wrap true; done")
    proc = subprocess.run(["runuser", "-u", "alice", "--", "bash", "-c", submit], capture_output=True, text=True,
                          cwd="/tmp", check=True)
    flood = {line.split(";")[0] for line in proc.stdout.split()}
    assert len(flood) == FLOOD
    subprocess.run(["scancel", *sorted(flood)], check=True)

    def audited() -> Counter[str]:
        return Counter(str(r.get("job_id_raw")) for r in _records(log) if str(r.get("job_id_raw")) in flood)

    # Other jobs end: each one's EpilogSlurmctld audits itself, then at most BUDGET of the flood.
    triggers = 0
    while len(audited()) < FLOOD and triggers < 4 * FLOOD // BUDGET:
        trigger = subprocess.run(["sbatch", "--parsable", "-A", "physics", "-o", "/dev/null", "--wait", "--wrap",
                                  "true"], capture_output=True, text=True, cwd="/tmp", check=True).stdout.strip()
        triggers += 1
        wait_until(f"job {trigger} audited", lambda t=trigger: any(r.get("job_id_raw") == t for r in _records(log)),
                   60)
    wait_until("every job of the flood audited", lambda: len(audited()) == FLOOD, 120,
               detail=lambda: f"{len(audited())} of {FLOOD} after {triggers} epilogs")
    counts = audited()
    assert set(counts.values()) == {1}, [j for j, n in counts.items() if n != 1]
    # One sweep stamps its records with the same time: no sweep did more than its budget.
    per_sweep = Counter(str(r["recorded"]) for r in _records(log)
                        if str(r.get("job_id_raw")) in flood and r.get("never_ran"))
    assert sum(per_sweep.values()) == FLOOD
    assert max(per_sweep.values()) <= BUDGET and len(per_sweep) >= FLOOD // BUDGET, per_sweep
