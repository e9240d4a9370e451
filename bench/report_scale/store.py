"""Benchmark: reports from the accounting store at centre scale, end to end through the CLI, in one run:

  store month   `hpcai report usage` for October over 1,000,000 allocations, from the store + live tail
  file month    the same report from the same rows as sacct lines (`--from-file`: today's sacct path
                without the sacct call itself, which costs ~36 s on a million-job month in slurmdbd)
  sreport       `sreport cluster AccountUtilizationByUser` for the month: on the same rows (cluster bench1m,
                loaded and rolled up by sreport_same_data.py) when they are there, else on the dev cluster
  store year    `hpcai report usage` for 2026 over 12,000,000 allocations (the month shifted to each month)
  store cut     the month report from Oct 3 12:00 to Oct 28 06:00: daily rollups plus the rows of the edges
  day ingest    `hpcai report ingest --from-file` of one day (~32,000 allocations) into the month's store

The arms alternate in each round (the machine is shared and noisy); medians and per-round ratios go to
bench/results/report_scale.json under "store" (other keys kept). The stores' watermark is set to five
minutes ago before the rounds, as after the ingest timer's last run, so the live tail is what a real
report reads.
Run as root on the dev cluster host: `.venv/bin/python bench/report_scale/store.py`."""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
from hpc_aidc.report.rows import format_row, parse_rows  # noqa: E402

BENCH = Path("/var/lib/hpcai-bench")  # root-owned: ingest as root reads only a root-owned profile
DATA = Path("/tmp/hpcai-bench/report_scale_1m_v2.txt")
HPCAI = [sys.executable, "-I", "-m", "hpc_aidc.cli.main"]
DAY = "2026-10-15"


def _run(argv: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/")
    return time.perf_counter() - t0, proc


def _must(argv: list[str]) -> tuple[float, str]:
    seconds, proc = _run(argv)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return seconds, proc.stdout


def _profile(name: str, store: Path) -> Path:
    text = Path("/etc/hpcai/site.toml").read_text()
    lines = [ln for ln in text.splitlines() if not ln.startswith("report_store")]
    at = next(i for i, ln in enumerate(lines) if ln.startswith("energy_store"))
    lines.insert(at + 1, f'report_store = "{store}"')
    path = BENCH / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return path


def _set_watermark(store: Path, epoch: int) -> None:
    state = json.loads((store / "state.json").read_text())
    state["watermark"] = epoch
    (store / "state.json").write_text(json.dumps(state))


def _year_store(month_store: Path, year_store: Path) -> None:
    """Twelve months of 2026: the October store's rows shifted to each month (job ids made unique)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from hpc_aidc.report.store.layout import StoreState
    from hpc_aidc.report.store.rollup import local_zone
    from hpc_aidc.report.store.table import arrow_schema, month_of
    from hpc_aidc.report.store.writer import StoreWriter

    table = pa.concat_tables(pq.read_table(p, schema=arrow_schema()).append_column(
        "account", pa.array([p.parent.parent.name.split("=", 1)[1]] * pq.read_metadata(p).num_rows))
        for p in sorted((month_store / "jobs").rglob("part-*.parquet")))
    base = int(time.mktime((2026, 10, 1, 0, 0, 0, 0, 0, -1)))
    writer = StoreWriter(year_store)
    with writer.locked():
        for month in range(1, 13):
            shift = int(time.mktime((2026, month, 1, 0, 0, 0, 0, 0, -1))) - base
            t = table
            for col in ("submit", "eligible", "start", "end"):
                t = t.set_column(t.schema.get_field_index(col), col, pc.add(t.column(col), shift))
            for col in ("job_id", "job_id_raw"):
                t = t.set_column(t.schema.get_field_index(col), col,
                                 pc.binary_join_element_wise(pa.scalar(f"{month:02d}"), t.column(col), ""))
            months = [month_of(e) for e in t.column("end").to_pylist()]
            keys = sorted(set(zip(t.column("account").to_pylist(), months, strict=True)))
            for account, m in keys:
                mask = pc.and_(pc.equal(t.column("account"), account), pc.equal(pa.array(months), m))
                writer.upsert(account, m, t.filter(mask).drop_columns(["account"]))
        writer.write_state(StoreState(int(time.time()) - 300, 40 * 86400, days_zone=local_zone()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "report_scale.json")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the stores")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root on the dev cluster host (ingest writes a root-owned store)")
    BENCH.mkdir(mode=0o755, parents=True, exist_ok=True)
    if not DATA.exists():
        DATA.parent.mkdir(parents=True, exist_ok=True)
        with DATA.open("w") as f:
            for row in generate(1_000_000):
                f.write(format_row(row) + "\n")
    month, year, daydir = BENCH / "store-month", BENCH / "store-year", BENCH / "store-day"
    month_site, year_site, day_site = _profile("month", month), _profile("year", year), _profile("day", daydir)
    built: dict[str, float] = {}
    if args.rebuild or not (month / "state.json").exists():
        shutil.rmtree(month, ignore_errors=True)
        built["month_ingest_from_file_s"], _ = _must([*HPCAI, "--site", str(month_site), "report", "ingest",
                                                      "--from-file", str(DATA), "--json"])
        _set_watermark(month, int(time.time()) - 300)
    if args.rebuild or not (year / "state.json").exists():
        shutil.rmtree(year, ignore_errors=True)
        t0 = time.perf_counter()
        _year_store(month, year)
        built["year_build_s"] = time.perf_counter() - t0
    # one day into a store holding the rest of the month
    lines = DATA.read_text().splitlines()
    day0 = int(time.mktime(time.strptime(DAY, "%Y-%m-%d")))
    ends = [r.end for r in parse_rows(lines)]
    day_lines = [ln for ln, e in zip(lines, ends, strict=True) if e is not None and day0 <= e < day0 + 86400]
    rest = [ln for ln, e in zip(lines, ends, strict=True) if not (e is not None and day0 <= e < day0 + 86400)]
    (BENCH / "day.txt").write_text("\n".join(day_lines) + "\n")
    rest_store = BENCH / "store-rest"
    if args.rebuild or not (rest_store / "state.json").exists():
        shutil.rmtree(rest_store, ignore_errors=True)
        (BENCH / "rest.txt").write_text("\n".join(rest) + "\n")
        _must([*HPCAI, "--site", str(_profile("rest", rest_store)), "report", "ingest", "--from-file",
               str(BENCH / "rest.txt")])

    # Stores whose rollups are missing or older than this version's (edge rows) get them from an ingest with
    # nothing new, as a site's next ingest would (it builds only what is stale).
    empty = BENCH / "empty.txt"
    empty.write_text("")
    for name, store in (("month", month), ("year", year), ("rest", rest_store)):
        t0 = time.perf_counter()
        _must([*HPCAI, "--site", str(_profile(name, store)), "report", "ingest", "--from-file", str(empty)])
        built[f"{name}_rollups_s"] = time.perf_counter() - t0

    # As after the ingest timer's last run (every 5 minutes): the live tail is the last minutes only.
    for store in (month, year):
        _set_watermark(store, int(time.time()) - 300)
    from hpc_aidc.report.source import window_lines
    from hpc_aidc.report.store.table import multi_run_ids

    tail = window_lines(int(time.time()) - 300, int(time.time()))
    # a job that ran more than once in the tail costs a second sacct call (all its runs)
    tail_info = {"rows": len(tail), "jobs_that_ran_more_than_once": len(multi_run_ids(tail))}
    usage = ["report", "usage", "--format", "json"]
    arms = {
        "store_month": [*HPCAI, "--site", str(month_site), *usage, "--since", "2026-10-01", "--until", "2026-11-01"],
        "file_month": [*HPCAI, "--site", str(month_site), *usage, "--since", "2026-10-01", "--until", "2026-11-01",
                       "--from-file", str(DATA)],
        "store_year": [*HPCAI, "--site", str(year_site), *usage, "--since", "2026-01-01", "--until", "2027-01-01"],
        # a period cut mid-day at both ends: rollups for the whole days, rows for the edges
        "store_month_cut": [*HPCAI, "--site", str(month_site), *usage, "--since", "2026-10-03T12:00",
                            "--until", "2026-10-28T06:00"],
    }
    bench1m = "bench1m" in subprocess.run(["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"],
                                          capture_output=True, text=True, check=False).stdout
    month_rolled = bench1m and subprocess.run(
        ["mysql", "-u", "root", "-N", "-B", "slurm_acct_db", "-e",
         "select count(*) from bench1m_assoc_usage_month_table"], capture_output=True, text=True,
        check=False).stdout.strip() not in ("", "0")
    start, end = ("2026-10-01T00:00:00", "2026-11-01T00:00:00") if month_rolled else (
        time.strftime("%Y-%m-%dT%H:00:00", time.localtime(time.time() - 31 * 86400)),
        time.strftime("%Y-%m-%dT%H:00:00", time.localtime()))
    arms["sreport_month"] = ["sreport", "-n", "-P", "-t", "hours", "--tres=cpu,gres/gpu", "cluster",
                             "AccountUtilizationByUser", *(["cluster=bench1m"] if month_rolled else []),
                             f"start={start}", f"end={end}"]
    times: dict[str, list[float]] = {name: [] for name in [*arms, "day_ingest"]}
    outputs: dict[str, str] = {}
    for r in range(args.rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for name in order:
            seconds, out = _must(arms[name])
            times[name].append(seconds)
            outputs[name] = out
        # day ingest: into a copy of the month without that day, the day (~32k rows) through the CLI
        shutil.rmtree(daydir, ignore_errors=True)
        shutil.copytree(rest_store, daydir)
        seconds, _ = _must([*HPCAI, "--site", str(day_site), "report", "ingest", "--from-file",
                            str(BENCH / "day.txt"), "--json"])
        times["day_ingest"].append(seconds)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)

    # The file has jobs still running or pending at the month's end; the store holds finished jobs and
    # takes the others from the live tail (here the dev cluster's), so the two differ by exactly those
    # jobs. Equality on the same rows is what tests/report/test_store*.py check.
    store_total = json.loads(outputs["store_month"])["total"]
    file_total = json.loads(outputs["file_month"])["total"]
    unfinished = ("RUNNING", "PENDING")
    same = store_total["states"] == {k: v for k, v in file_total["states"].items() if k not in unfinished}
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {
        "store_month_over_sreport": [a / b for a, b in zip(times["store_month"], times["sreport_month"], strict=True)],
        "file_month_over_store_month": [a / b for a, b in zip(times["file_month"], times["store_month"], strict=True)],
    }
    result = {
        "rows_month": len(lines), "rows_year": 12 * len(lines), "rows_day": len(day_lines),
        "rounds": args.rounds, "median_s": med, "runs_s": times,
        "paired_ratio_median": {k: statistics.median(v) for k, v in ratios.items()},
        "sreport_data": "bench1m: the same rows, rolled up by slurmdbd" if month_rolled
        else "dev cluster accounting (bench1m not loaded: run sreport_same_data.py)",
        "store_states_equal_file_states_of_finished_jobs": same,
        "goals": {"month_at_most_sreport": med["store_month"] <= med["sreport_month"],
                  "year_at_most_2s": med["store_year"] <= 2.0, "day_ingest_at_most_5s": med["day_ingest"] <= 5.0},
        "built": built,
        "live_tail_at_start": tail_info,
        "load_average": os.getloadavg(),
        "sacct_path_note": "the sacct call of the direct path for this month took 36 s and 1.4 GB (issue 16)",
    }
    print(format_table(["arm", "median s", "runs"],
                       [[k, f"{v:.3f}", " ".join(f"{s:.2f}" for s in times[k])] for k, v in med.items()],
                       right=(1,)))
    print(f"store/sreport per round (median): {result['paired_ratio_median']['store_month_over_sreport']:.2f}; "
          f"file/store: {result['paired_ratio_median']['file_month_over_store_month']:.1f}; "
          f"finished jobs by state equal: {same}")
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    doc["store"] = result
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
