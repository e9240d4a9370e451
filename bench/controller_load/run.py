"""Benchmark: what waiting costs the controllers. N clients (1, 10, 50) each follow one of N running jobs for a
while; the RPCs they cause at steady state (after a warm-up), per client per minute, to slurmctld (`sdiag`, by
user) and to slurmdbd (`sacctmgr show stats`, by user), for `hpcai logs JOB --follow`, `hpcai wait JOB`, and
submitit's own `job.wait()` on the same jobs in the same run (arms alternate per N). The clients run as bob,
whose RPCs nothing else makes meanwhile; his jobs are submitted before counting starts. Goal: at most 4 RPCs per
client per minute at steady state, and no more than submitit. Writes bench/results/controller_load.json."""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
USER, ACCOUNT = "bob", "climate"
SUBMITIT_WAIT = ("import sys, submitit; "
                 "submitit.SlurmJob(folder='/tmp/hpcai-bench-submitit/%j', job_id=sys.argv[1]).wait()")


def user_rpc_count(text: str, user: str) -> int:
    """`user`'s RPC count in `sdiag` or `sacctmgr show stats` output (its "... by user" section; the same on
    Slurm 24.11 and 26.05: tests/recorded/slurm-*/sdiag.txt); 0 when the user made none."""
    pattern = re.compile(rf"^\s*{re.escape(user)}\s+\(\s*\d+\)\s+count:(\d+)", re.MULTILINE)
    m = pattern.search(text.split("by user", 1)[-1])
    return int(m.group(1)) if m else 0


def rpcs() -> tuple[int, int]:
    """(slurmctld, slurmdbd) RPCs of USER so far."""

    def count(argv: list[str]) -> int:
        return user_rpc_count(subprocess.run(argv, capture_output=True, text=True, check=True).stdout, USER)

    return count(["sdiag"]), count(["sacctmgr", "show", "stats"])


def submit_jobs(n: int, seconds: int) -> list[str]:
    ids = []
    for _ in range(n):
        proc = subprocess.run(["runuser", "-u", USER, "--", "sbatch", "--parsable", "-A", ACCOUNT, "-p", "gpu",
                               "-t", str(seconds // 60 + 2), "-c", "1", "--mem=100", "-o", "/dev/null",
                               "--wrap", f"sleep {seconds}"], capture_output=True, text=True, cwd="/tmp", check=True)
        ids.append(proc.stdout.strip().split(";")[0])
    return ids


def client_argv(arm: str, job: str) -> list[str]:
    python = sys.executable
    if arm == "submitit":
        return ["runuser", "-u", USER, "--", python, "-c", SUBMITIT_WAIT, job]
    base = [python, "-m", "hpc_aidc.cli.main"]
    return ["runuser", "-u", USER, "--", *base, *(["logs", job, "--follow"] if arm == "follow" else ["wait", job])]


def run_arm(arm: str, jobs: list[str], seconds: float, warmup: float) -> dict[str, float]:
    """Clients started, `warmup` seconds (start-up and the first checks soon after submission, counted
    apart), then `seconds` of steady state counted."""
    start = rpcs()
    clients = [subprocess.Popen(client_argv(arm, j), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                cwd="/tmp") for j in jobs]
    time.sleep(warmup)
    before = rpcs()
    time.sleep(seconds)
    for c in clients:
        c.terminate()
    for c in clients:
        try:
            c.wait(10)
        except subprocess.TimeoutExpired:
            c.kill()
    after = rpcs()
    minutes = seconds / 60
    return {"slurmctld_per_client_per_min": (after[0] - before[0]) / len(jobs) / minutes,
            "slurmdbd_per_client_per_min": (after[1] - before[1]) / len(jobs) / minutes,
            "slurmctld_total": after[0] - before[0], "slurmdbd_total": after[1] - before[1],
            "startup_per_client": (before[0] - start[0] + before[1] - start[1]) / len(jobs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--arms", nargs="+", default=["follow", "wait", "submitit"])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "controller_load.json")
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, float]]] = {}
    for n in args.clients:
        jobs = submit_jobs(n, int((args.seconds + args.warmup + 15) * len(args.arms) + 60))
        time.sleep(5)  # submissions' own RPCs settle before counting
        results[str(n)] = {}
        for arm in args.arms:  # the same jobs for every arm, one arm after another
            results[str(n)][arm] = run_arm(arm, jobs, args.seconds, args.warmup)
            row = results[str(n)][arm]
            print(f"{n:3d} clients  {arm:9s} slurmctld {row['slurmctld_per_client_per_min']:6.2f}  slurmdbd "
                  f"{row['slurmdbd_per_client_per_min']:6.2f}  RPCs per client per minute", flush=True)
        subprocess.run(["scancel", *jobs], check=False)
    goal = all(r[arm]["slurmctld_per_client_per_min"] + r[arm]["slurmdbd_per_client_per_min"] <= 4.5
               for r in results.values() for arm in ("follow", "wait") if arm in r)
    not_above_submitit = all(
        r[arm]["slurmctld_per_client_per_min"] + r[arm]["slurmdbd_per_client_per_min"]
        <= r["submitit"]["slurmctld_per_client_per_min"] + r["submitit"]["slurmdbd_per_client_per_min"] + 0.5
        for r in results.values() for arm in ("follow", "wait") if arm in r and "submitit" in r)
    out = {"machine": platform.node(), "seconds_per_arm": args.seconds, "warmup_s": args.warmup, "user": USER,
           "results": results,
           "goal_at_most_4_per_client_per_minute": goal, "not_above_submitit": not_above_submitit,
           "slurm": subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"goal met: {goal}; not above submitit: {not_above_submitit} -> {args.out}")


if __name__ == "__main__":
    main()
