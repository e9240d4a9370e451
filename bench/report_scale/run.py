"""Benchmark: a month report over 1,000,000 job records (`hpcai report usage --from-file`, the same
sacct-format lines one sacct call returns), end to end through the CLI, next to sreport.

sreport is timed here on the dev cluster's own accounting (`sreport cluster AccountUtilizationByUser` over
the same month length), which is not the same data; `sreport_same_data.py` beside this file loads the same
million rows into slurmdbd (cluster `bench1m`), rolls them up and times sreport on them next to hpcai
(key "sreport_same_data" of the JSON, which this script keeps); see README.md in this directory.
Prints a table and writes
bench/results/report_scale.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from bench.report_scale.generate import generate  # noqa: E402
from hpc_aidc.render.table import format_table  # noqa: E402
from hpc_aidc.report.rows import format_row  # noqa: E402

CPU: list[tuple[float, float]] = []  # (cpu seconds of the child, 1-minute load average before it ran)


def _timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, load))
    return wall, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, default=Path("/tmp/hpcai-bench/report_scale_1m.txt"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "report_scale.json")
    args = parser.parse_args()

    if not args.data.exists():
        args.data.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with args.data.open("w") as f:
            for row in generate(args.jobs):
                f.write(format_row(row) + "\n")
        print(f"generated {args.jobs:,} rows in {time.perf_counter() - t0:.1f} s -> {args.data}")
    rows = sum(1 for _ in args.data.open())
    cli = [sys.executable, "-m", "hpc_aidc.cli.main", "report", "usage", "--from-file", str(args.data),
           "--since", "2026-10-01", "--until", "2026-11-01", "--format", "json"]
    ours = []
    for _ in range(args.repeat):
        seconds, proc = _timed(cli)
        if proc.returncode != 0:
            sys.exit(f"hpcai report failed: {proc.stderr}")
        ours.append(seconds)
    total = json.loads(proc.stdout)["total"]
    one_core = dict(os.environ, HPCAI_REPORT_WORKERS="1")
    single, _ = _timed(cli, one_core)

    now = time.time()
    start = time.strftime("%Y-%m-%dT%H:00:00", time.localtime(now - 31 * 86400))
    end = time.strftime("%Y-%m-%dT%H:00:00", time.localtime(now))
    sreport_argv = ["sreport", "-n", "-P", "cluster", "AccountUtilizationByUser", f"start={start}", f"end={end}",
                    "-t", "hours", "--tres=cpu,gres/gpu"]
    sreport = []
    for _ in range(args.repeat):
        seconds, proc = _timed(sreport_argv)
        sreport.append(seconds if proc.returncode == 0 else float("nan"))
    sacct = ["sacct", "-a", "-X", "-n", "-P", "-o", "jobid", f"--starttime={start}", f"--endtime={end}"]
    dev_jobs = subprocess.run(sacct, capture_output=True, text=True, check=False).stdout.count("\n")

    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "rows": rows,
        "hpcai_report_usage_s": {"median": statistics.median(ours), "runs": ours},
        "hpcai_report_usage_one_process_s": single,
        "cpu_s_and_load_per_run": CPU[: args.repeat + 1],
        "best_s": min(ours),
        "rows_per_s": rows / statistics.median(ours),
        "limit_s": 5.0,
        "within_limit": statistics.median(ours) <= 5.0,
        "best_within_limit": min(ours) <= 5.0,
        "report_total": {k: total[k] for k in ("jobs", "gpu_hours", "cpu_hours", "energy_kwh", "energy_coverage")},
        "sreport_account_utilization_s": {"median": statistics.median(sreport), "runs": sreport,
                                          "data": f"dev cluster accounting, {dev_jobs} jobs, {start}..{end}",
                                          "same_data": False},
    }
    table = format_table(
        ["what", "rows", "median s", "runs"],
        [["hpcai report usage --from-file (month, by account)", f"{rows:,}", f"{statistics.median(ours):.2f}",
          " ".join(f"{s:.2f}" for s in ours)],
         ["  same, one process", f"{rows:,}", f"{single:.2f}", ""],
         ["sreport cluster AccountUtilizationByUser (dev cluster)", f"{dev_jobs:,}",
          f"{statistics.median(sreport):.2f}", " ".join(f"{s:.2f}" for s in sreport)]],
        right=(1, 2))
    print(table)
    print(f"\n{rows / statistics.median(ours):,.0f} rows/s; limit 5 s: median "
          f"{'met' if result['within_limit'] else 'MISSED'}, best {'met' if result['best_within_limit'] else 'MISSED'}")
    print("cpu s / load average before each run: " + ", ".join(f"{c:.1f}/{ld:.1f}" for c, ld in CPU[: args.repeat + 1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.exists():  # keep the same-data comparison written by sreport_same_data.py
        previous = json.loads(args.out.read_text()).get("sreport_same_data")
        if previous is not None:
            result["sreport_same_data"] = previous
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
