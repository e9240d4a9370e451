"""CLI latency: median wall time of `hpcai --help` and `hpcai submit run --dry-run`, next to the floor
(`python -c pass`) and Slurm's own `sbatch --test-only`, all measured in the same run.

Goal (issue 2): `hpcai --help` within 100 ms median on the dev machine.

    .venv/bin/python bench/cli_latency/run.py [--repeat 21] [--out bench/results/cli_latency.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HPCAI = str(Path(sys.executable).with_name("hpcai"))
GOAL_HELP_MS = 100.0


def time_command(argv: list[str], repeat: int, stdin: str | None = None) -> dict[str, float]:
    subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True)  # warm the page cache
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True)
        samples.append((time.perf_counter() - start) * 1000)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "max_ms": max(samples),
            "p90_ms": sorted(samples)[int(0.9 * (len(samples) - 1))]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/cli_latency.json")
    args = parser.parse_args()

    dry_run = [HPCAI, "submit", "run", "--dry-run", "--no-test-only", "-N", "2", "-G", "2", "--", "true"]
    cases: dict[str, tuple[list[str], str | None]] = {
        "python -c pass": ([sys.executable, "-c", "pass"], None),
        "hpcai --help": ([HPCAI, "--help"], None),
        "hpcai submit run --dry-run": (dry_run, None),
    }
    if shutil.which("sbatch"):
        script = subprocess.run(dry_run, capture_output=True, text=True, check=True).stdout
        cases["sbatch --test-only (same script)"] = (["sbatch", "--test-only"], script)
    results = {name: time_command(argv, args.repeat, stdin) for name, (argv, stdin) in cases.items()}

    floor = results["python -c pass"]["median_ms"]
    print(f"{'command':36s}{'median ms':>10s}{'p90 ms':>9s}{'vs python':>11s}")
    for name, r in results.items():
        print(f"{name:36s}{r['median_ms']:10.1f}{r['p90_ms']:9.1f}{r['median_ms'] / floor:10.1f}x")
    help_ms = results["hpcai --help"]["median_ms"]
    verdict = "met" if help_ms <= GOAL_HELP_MS else "MISSED"
    print(f"goal: hpcai --help <= {GOAL_HELP_MS:.0f} ms median: {verdict} ({help_ms:.1f} ms)")

    with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False) as fh:
        json.dump({"benchmark": "cli_latency", "repeat": args.repeat, "machine": platform.node(),
                   "python": platform.python_version(), "results": results,
                   "goal": {"hpcai --help median_ms <=": GOAL_HELP_MS, "met": help_ms <= GOAL_HELP_MS}},
                  fh, indent=2)
    Path(fh.name).replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
