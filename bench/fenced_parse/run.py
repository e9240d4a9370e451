"""Benchmark: what the fenced parse (hpc_aidc.scheduler.fence) costs on a million-job month, next to the
bare parse it replaced (split the lines, split each on the delimiter), in the same run.

The text is the report's sacct call as slurmdbd prints it for 1,000,000 allocations (bench/report_scale's
generator): bare, fenced (a random delimiter, a job-id trailer), and fenced with 1% of the job names
holding a newline and the old delimiter, as a hostile user's would (then the whole listing is read row by
row; the bare parse would have dropped or split those rows). The arms alternate; the result is the paired
ratio's median. Reports of a month read the report store, not sacct (bench/report_scale: the store's month
report next to sreport); the fenced parse runs in the store's ingest (a day's window: ~31,000 rows) and in
reports of what ended since the last ingest.
Writes bench/results/fenced_parse.json."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from bench.report_scale.generate import generate  # noqa: E402
from hpc_aidc.report.rows import C_NAME, NFIELDS, format_row, split_lines  # noqa: E402
from hpc_aidc.scheduler.fence import SEP, Fence, unfence  # noqa: E402


def texts(jobs: int, hostile_every: int) -> tuple[str, str, str, Fence]:
    """The bare listing, the fenced one, and the fenced one with hostile names."""
    fence = Fence.new()
    bare, fenced, hostile = [], [], []
    for i, row in enumerate(generate(jobs)):
        fields = format_row(row).split(SEP)
        bare.append(SEP.join(fields))
        fenced.append(fence.token.join([*fields, fields[1]]))
        if hostile_every and i % hostile_every == 0:
            fields[C_NAME] = f"x\n{fields[0]}{SEP}bob{SEP}climate"
        hostile.append(fence.token.join([*fields, fields[1]]))
    return "\n".join(bare) + "\n", "\n".join(fenced) + "\n", "\n".join(hostile) + "\n", fence


def bare_parse(text: str) -> int:
    return sum(1 for _ in split_lines(text.splitlines()))


def fenced_parse(text: str, fence: Fence) -> int:
    return sum(1 for _ in split_lines(unfence(text, fence, NFIELDS + 1).lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hostile-every", type=int, default=100)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fenced_parse.json")
    args = parser.parse_args()
    bare, fenced, hostile, fence = texts(args.jobs, args.hostile_every)
    arms = {"bare": lambda: bare_parse(bare), "fenced": lambda: fenced_parse(fenced, fence),
            "fenced_hostile": lambda: fenced_parse(hostile, fence)}
    runs: dict[str, list[float]] = {arm: [] for arm in arms}
    rows: dict[str, int] = {}
    for _ in range(args.rounds):  # alternate the arms: the machine is noisy
        for arm, parse in arms.items():
            t0 = time.perf_counter()
            rows[arm] = parse()
            runs[arm].append(time.perf_counter() - t0)

    def ratio(arm: str) -> float:
        return statistics.median(a / b for a, b in zip(runs[arm], runs["bare"], strict=True))

    context = json.loads((REPO / "bench" / "results" / "report_scale.json").read_text())
    result = {
        "machine": platform.node(), "jobs": args.jobs, "hostile_rows": args.jobs // args.hostile_every,
        "rows_read": rows, "bare_s": {"median": statistics.median(runs["bare"]), "runs": runs["bare"]},
        "fenced_s": {"median": statistics.median(runs["fenced"]), "runs": runs["fenced"]},
        "fenced_hostile_s": {"median": statistics.median(runs["fenced_hostile"]), "runs": runs["fenced_hostile"]},
        "paired_ratio_median": {"fenced": ratio("fenced"), "fenced_hostile": ratio("fenced_hostile")},
        "added_s_per_million": {arm: (statistics.median(runs[arm]) - statistics.median(runs["bare"]))
                                * 1_000_000 / args.jobs for arm in ("fenced", "fenced_hostile")},
        "context_from_report_scale_json": {
            "sreport_same_data_s": context["sreport_same_data"]["sreport_account_utilization_s"]["median"],
            "store_month_report_s": context["store"]["median_s"]["store_month"],
            "sreport_month_beside_the_store_s": context["store"]["median_s"]["sreport_month"],
            "sacct_call_of_the_month_s": 36.0,
        },
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for arm in arms:
        print(f"{arm:15s} {statistics.median(runs[arm]):6.2f} s  {rows[arm]:>9,} rows read"
              + ("" if arm == "bare" else f"  paired ratio to bare {ratio(arm):.2f}"))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
