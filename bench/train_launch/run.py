"""Launch overhead and throughput of `hpcai submit train` (DeepSpeed ZeRO-1, 2 dev-cluster nodes, tiny
GPT) next to a hand-written sbatch + srun + plain torch DDP script with the same model and data, in the
same run, alternating. Startup = submit command start -> first optimizer step logged; steps/s over the
steps after the first 10.

Goals (issue 3): startup within 1.2x of the baseline (DeepSpeed op builds cached); ZeRO-1 steps/s
within 10% of the baseline.

    .venv/bin/python bench/train_launch/run.py [--repeat 5] [--steps 200] [--account physics]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HPCAI = [sys.executable, "-m", "hpc_aidc.cli.main"]
CONFIG = """
[model]
preset = "tiny"
n_layer = {n_layer}
[train]
max_steps = {steps}
zero = 1
[checkpoint]
every = 100000
"""


def _steps(path: Path, steps: int, timeout: float = 900) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            rows = [r for r in rows if "loss" in r]
            if rows and rows[-1]["step"] >= steps:
                return rows
        time.sleep(0.2)
    raise TimeoutError(path)


def _wait_gone(job_id: str) -> None:
    while subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout.strip():
        time.sleep(0.5)


def _measure(rows: list[dict[str, Any]], t0: float, steps: int) -> dict[str, float]:
    by_step = {r["step"]: r["time"] for r in rows}
    return {"startup_s": by_step[1] - t0, "steps_per_s": (steps - 10) / (by_step[steps] - by_step[10])}


def run_hpcai(steps: int, account: str, work: Path, n_layer: int = 2) -> dict[str, float]:
    config = work / "bench.toml"
    config.write_text(CONFIG.format(steps=steps, n_layer=n_layer))
    t0 = time.time()
    out = subprocess.run([*HPCAI, "submit", "train", "-N", "2", "--ntasks-per-node", "1", "-A", account,
                          "--config", str(config), "--json"], capture_output=True, text=True, check=True, cwd="/tmp")
    job = json.loads(out.stdout)
    rows = _steps(Path(job["folder"]) / "metrics.jsonl", steps)
    _wait_gone(job["job_id"])
    return _measure(rows, t0, steps)


def run_baseline(steps: int, account: str, work: Path, n_layer: int = 2) -> dict[str, float]:
    metrics = work / f"baseline-{time.time_ns()}.jsonl"
    env = {**os.environ, "HPCAI_PYTHON": sys.executable, "STEPS": str(steps), "METRICS": str(metrics),
           "N_LAYER": str(n_layer),
           "HPCAI_BASELINE": str(REPO / "bench/train_launch/ddp_baseline.py")}
    t0 = time.time()
    job_id = subprocess.run(["sbatch", "--parsable", "-A", account, str(REPO / "bench/train_launch/baseline.sbatch")],
                            capture_output=True, text=True, check=True, env=env, cwd="/tmp").stdout.strip()
    rows = _steps(metrics, steps)
    _wait_gone(job_id.split(";")[0])
    return _measure(rows, t0, steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--account", default="physics")
    parser.add_argument("--n-layer", type=int, default=2, help="Layers of the tiny GPT (its preset has 4).")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/train_launch.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="train-launch-", dir="/tmp"))
    work.chmod(0o755)
    run_hpcai(args.steps, args.account, work, args.n_layer)  # warm-up: DeepSpeed's JIT-built ops land in the cache
    samples: dict[str, list[dict[str, float]]] = {"hpcai submit train (DeepSpeed ZeRO-1)": [],
                                                  "sbatch + srun + torch DDP": []}
    for _ in range(args.repeat):
        samples["hpcai submit train (DeepSpeed ZeRO-1)"].append(run_hpcai(args.steps, args.account, work, args.n_layer))
        samples["sbatch + srun + torch DDP"].append(run_baseline(args.steps, args.account, work, args.n_layer))
    results = {name: {key: statistics.median(s[key] for s in runs) for key in ("startup_s", "steps_per_s")}
               for name, runs in samples.items()}
    ours, base = results.values()
    ratios = {"startup_ratio": ours["startup_s"] / base["startup_s"],
              "steps_per_s_ratio": ours["steps_per_s"] / base["steps_per_s"]}
    print(f"{'launcher':40s}{'startup s':>11s}{'steps/s':>10s}")
    for name, r in results.items():
        print(f"{name:40s}{r['startup_s']:11.2f}{r['steps_per_s']:10.2f}")
    print(f"startup ratio {ratios['startup_ratio']:.2f}x (goal <= 1.2x), "
          f"steps/s ratio {ratios['steps_per_s_ratio']:.2f} (goal >= 0.9)")
    args.out.write_text(json.dumps({"benchmark": "train_launch", "repeat": args.repeat, "steps": args.steps,
                                    "n_layer": args.n_layer,
                                    "median": results, "samples": samples, **ratios,
                                    "goals": {"startup_ratio_max": 1.2, "steps_per_s_ratio_min": 0.9}}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
