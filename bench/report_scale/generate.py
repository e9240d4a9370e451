"""A synthetic month of accounting: N allocations in sacct's report format (the same columns and
delimiter `hpcai report usage` asks sacct for), with real energy summaries in AdminComment.

Shape: 40 accounts (zipf-like sizes), 10 users each, partitions gpu/debug/cpu, array tasks, a few
requeued runs, jobs crossing the month's edges, running jobs at the end, ~70% with energy summaries
(a share without: unknown, never 0)."""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Iterator
from pathlib import Path

from hpc_aidc.monitor.acct import encode
from hpc_aidc.monitor.summary import Totals
from hpc_aidc.report.rows import JobRow, format_row

STATES = (("COMPLETED", 0.80), ("FAILED", 0.08), ("CANCELLED", 0.06), ("TIMEOUT", 0.04), ("OUT_OF_MEMORY", 0.02))


def _energy(rng: random.Random, gpus: int, cpus: int, elapsed: int, nodes: int) -> str:
    if rng.random() > 0.7:
        return ""
    power = rng.uniform(150.0, 650.0)
    util = rng.uniform(5.0, 99.0)
    tokens = gpus * elapsed * rng.uniform(500, 5000) if rng.random() < 0.3 else None
    t = Totals(
        nodes=tuple(f"n{i + 1}" for i in range(nodes)), gpus=gpus, gpu_j=power * gpus * elapsed if gpus else None,
        cpu_j=cpus * 8.0 * elapsed if rng.random() < 0.5 else None, duration_s=float(elapsed),
        power_mean_w=power, power_max_w=power * 1.2, util_mean=util,
        idle_gpu_s=gpus * elapsed * max(0.0, (20.0 - util) / 20.0), tokens=tokens, samples=None,
        source="counter", simulated=False, approximate=False,
    )
    return encode(t)


def generate(n: int, month: str = "2026-10", seed: int = 7) -> Iterator[JobRow]:
    rng = random.Random(seed)
    year, mon = (int(x) for x in month.split("-"))
    t0 = int(time.mktime((year, mon, 1, 0, 0, 0, 0, 0, -1)))
    t1 = int(time.mktime((year + (mon == 12), mon % 12 + 1, 1, 0, 0, 0, 0, 0, -1)))
    accounts = [f"proj{i:02d}" for i in range(40)]
    weights = [1.0 / (i + 1) for i in range(40)]
    job_id = 1_000_000
    made = 0
    while made < n:
        account = rng.choices(accounts, weights)[0]
        user = f"{account}_u{rng.randrange(10)}"
        partition = rng.choices(("gpu", "debug", "cpu"), (0.75, 0.15, 0.10))[0]
        nodes = 1 if partition != "gpu" else rng.choice((1, 1, 1, 2, 4, 8))
        gpus = 0 if partition == "cpu" else nodes * rng.choice((1, 2, 4, 4))
        cpus = nodes * rng.choice((4, 8, 16, 32))
        elapsed = int(rng.expovariate(1 / 1800)) + 1
        submit = rng.randrange(t0 - 86400, t1)
        eligible = submit
        start = submit + int(rng.expovariate(1 / 600))
        end: int | None = start + elapsed
        state = rng.choices([s for s, _ in STATES], [w for _, w in STATES])[0]
        if end is not None and end > t1 and rng.random() < 0.5:
            end, state, elapsed = None, "RUNNING", t1 - start
        if start > t1:
            start, end, state, elapsed = None, None, "PENDING", 0  # type: ignore[assignment]
        task_count = rng.choice((1,) * 18 + (4, 16))
        requeued = task_count == 1 and state == "COMPLETED" and rng.random() < 0.01
        job_id += 1
        for task in range(task_count):
            raw = job_id if task == 0 else job_id + task
            jid = f"{job_id}_{task}" if task_count > 1 else str(job_id)
            if requeued and start is not None and end is not None:
                first_end = start + elapsed // 3
                yield JobRow(jid, str(raw), "train", user, account, partition, "REQUEUED", cpus, gpus, nodes,
                             first_end - start, submit, eligible, start, first_end,
                             _energy(rng, gpus, cpus, first_end - start, nodes))
                made += 1
                # Slurm resubmits a requeued job (new submit time) and starts it after its requeue delay
                run_start = first_end + 120
                comment = _energy(rng, gpus, cpus, end - first_end, nodes)
                yield JobRow(jid, str(raw), "train", user, account, partition, state, cpus, gpus, nodes,
                             end + 120 - run_start, first_end, first_end, run_start, end + 120, comment)
                made += 1
                continue
            comment = _energy(rng, gpus, cpus, elapsed, nodes) if end is not None else ""
            yield JobRow(jid, str(raw), "train", user, account, partition, state, cpus, gpus, nodes, elapsed,
                         submit, eligible, start, end, comment)
            made += 1
            if made >= n:
                return
        job_id += task_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--month", default="2026-10")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with args.out.open("w") as f:
        for row in generate(args.jobs, args.month):
            f.write(format_row(row) + "\n")


if __name__ == "__main__":
    main()
