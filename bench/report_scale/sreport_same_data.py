"""sreport on the SAME million rows: load the synthetic month that `run.py` feeds to `hpcai report usage
--from-file` into the dev cluster's slurmdbd database under a separate cluster (`bench1m`), roll it up with
slurmdbd's own rollup (`sacctmgr -i rollup`), then time `sreport cluster AccountUtilizationByUser` for that
cluster next to `hpcai report usage --from-file` on the same file, in the same run, and check that the two
agree per account on CPU-hours and GPU-hours.

Steps (each skipped when already done, so a second run only times and compares):
  setup   `sacctmgr -i add cluster bench1m`; a last-ran mark at the current hour (so slurmdbd's own hourly
          rollup never walks back over the synthetic month); one cluster "registered TRES" event (what a
          slurmctld writes when it registers; rollup needs it for the cluster lines); the 40 accounts and
          400 users of the synthetic rows as bench1m associations (sacctmgr, one call per account).
  load    one TSV written from the data file (rows parsed with hpc_aidc.report.rows), then one
          `LOAD DATA LOCAL INFILE` into bench1m_job_table: id_assoc from bench1m_assoc_table, tres_alloc with
          the ids of tres_table (1=cpu, 4=node, 5=billing, gres/gpu's own id), Slurm state codes
          (3 = COMPLETED, 1 = RUNNING, 1024 = REQUEUED, ...), arrays as id_array_job/id_array_task,
          admin_comment left NULL (neither rollup nor sreport reads it; it would triple the table and
          push it out of MariaDB's 128 MiB buffer pool during the rollup). A requeued job's later run gets
          submit + 1 s (the (id_job, time_submit) key is unique; Slurm resets it on requeue too).
  rollup  `sacctmgr -i rollup <day> <next day>` for each day of the month (hour + day tables), then the last
          day again so the month table is built. Day by day so that slurmdbd's rollup lock, which every
          rollup takes, is never held for long (other sessions' tests roll up too). A bounded rollup does not
          move slurmdbd's last-ran marks.
  time    sreport (table and -P, `-t hours --tres=cpu,gres/gpu`) and hpcai, interleaved, `--repeat` each.
  compare `sreport -t seconds -P` per account (the account's own line: sum of its users) against the hpcai
          JSON per account.

Touches only the bench1m cluster's tables plus the global account/user names it adds (proj00..proj39,
proj00_u0..proj39_u9). Never touches devcluster. Writes "sreport_same_data" into
bench/results/report_scale.json (other keys kept)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from bench.report_scale.generate import generate  # noqa: E402
from hpc_aidc.report.rows import JobRow, format_row, parse_rows  # noqa: E402

DB = "slurm_acct_db"
STATE_CODES = {"PENDING": 0, "RUNNING": 1, "COMPLETED": 3, "CANCELLED": 4, "FAILED": 5, "TIMEOUT": 6,
               "OUT_OF_MEMORY": 11, "REQUEUED": 1024}
NO_TASK = 4294967294  # NO_VAL - 1: not an array task / not a het job
COLUMNS = ("mod_time", "account", "admin_comment", "cpus_req", "job_name", "id_assoc", "id_array_job",
           "id_array_task", "id_job", "id_qos", "id_resv", "id_wckey", "id_user", "id_group", "het_job_id",
           "het_job_offset", "state_reason_prev", "nodes_alloc", "partition", "priority", "state", "timelimit",
           "time_submit", "time_eligible", "time_start", "time_end", "tres_alloc", "tres_req", "nodelist")


def sql(query: str, *, local_infile: bool = False) -> list[list[str]]:
    argv = ["mysql", "-u", "root", "-N", "-B", DB, "-e", query]
    if local_infile:
        argv.insert(1, "--local-infile=1")
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"mysql failed: {proc.stderr.strip()}\n{query[:300]}")
    return [line.split("\t") for line in proc.stdout.splitlines()]


def sh(*argv: str) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def epoch(day: str) -> int:
    return int(time.mktime(time.strptime(day, "%Y-%m-%d")))


def stamp(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def read_rows(path: Path, chunk: int = 100_000) -> Iterator[JobRow]:
    with path.open() as f:
        lines: list[str] = []
        for line in f:
            lines.append(line)
            if len(lines) >= chunk:
                yield from parse_rows(lines)
                lines = []
        yield from parse_rows(lines)


def setup(cluster: str, data: Path, month_start: int) -> None:
    known = {r[0] for r in sql("select name from cluster_table where deleted=0")}
    if cluster not in known:
        sh("sacctmgr", "-i", "add", "cluster", cluster)
    # slurmdbd writes this mark on its first hourly rollup of a new cluster (from its first event); set it
    # first, at the current hour, so that its own rollup never walks back over the synthetic month.
    hour = int(time.time()) // 3600 * 3600
    sql(f'insert into `{cluster}_last_ran_table` (hourly_rollup, daily_rollup, monthly_rollup) '
        f'select {hour}, {hour}, {hour} from dual where not exists (select 1 from `{cluster}_last_ran_table`)')
    if not sql(f"select 1 from `{cluster}_event_table` where node_name='' limit 1"):
        tres = "1=200000,2=0,3=0,4=5000,5=200000,6=0,7=0,8=0," + f"{gpu_tres_id()}=40000"
        sql(f'insert into `{cluster}_event_table` (time_start, time_end, node_name, cluster_nodes, reason, state, '
            f"tres) values ({month_start - 40 * 86400}, 0, '', 'n[1-5000]', 'Cluster Registered TRES', 0, "
            f"'{tres}')")
    users: dict[str, set[str]] = {}
    for row in read_rows(data):
        users.setdefault(row.account, set()).add(row.user)
    have = {(r[0], r[1]) for r in sql(f'select acct, user from `{cluster}_assoc_table` where deleted=0')}
    missing_accounts = sorted(a for a in users if (a, "") not in have)
    if missing_accounts:
        sh("sacctmgr", "-i", "add", "account", ",".join(missing_accounts), f"cluster={cluster}")
    for account, names in sorted(users.items()):
        todo = sorted(u for u in names if (account, u) not in have)
        if todo:
            sh("sacctmgr", "-i", "add", "user", ",".join(todo), f"account={account}", f"cluster={cluster}")


def gpu_tres_id() -> int:
    return int(sql("select id from tres_table where type='gres' and name='gpu'")[0][0])


def load(cluster: str, data: Path) -> float:
    assoc = {(r[0], r[1]): r[2] for r in sql(f'select acct, user, id_assoc from `{cluster}_assoc_table` '
                                            "where deleted=0 and user != ''")}
    gpu_id = gpu_tres_id()
    now = str(int(time.time()))
    t0 = time.perf_counter()
    with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as tsv:
        last_key: tuple[str, int] | None = None
        for row in read_rows(data):
            job_id, _, task = row.job_id.partition("_")
            submit = row.submit or 0
            if last_key == (row.job_id_raw, submit):  # the run after a requeue: its own submit time
                submit += 1
            last_key = (row.job_id_raw, row.submit or 0) if row.state == "REQUEUED" else None
            tres = ""
            if row.start is not None:
                tres = f"1={row.cpus},4={row.nodes},5={row.cpus}" + (f",{gpu_id}={row.gpus}" if row.gpus else "")
            nodelist = "None assigned" if row.start is None else (f"n[1-{row.nodes}]" if row.nodes > 1 else "n1")
            fields = (now, row.account, "\\N", str(row.cpus), row.name,
                      assoc[(row.account, row.user)], job_id if task else "0", task or str(NO_TASK),
                      row.job_id_raw, "1", "0", "0", "0", "0", "0", str(NO_TASK), "0", str(row.nodes), row.partition,
                      "1", str(STATE_CODES[row.state]), "60", str(submit), str(row.eligible or 0),
                      str(row.start or 0), str(row.end or 0), tres, tres, nodelist)
            tsv.write("\t".join(fields) + "\n")
    written = time.perf_counter() - t0
    print(f"wrote {tsv.name} in {written:.1f} s; loading")
    t1 = time.perf_counter()
    sql(f"load data local infile '{tsv.name}' into table `{cluster}_job_table` fields terminated by '\\t' "
        f"({', '.join(f'`{c}`' for c in COLUMNS)})", local_infile=True)
    os.unlink(tsv.name)
    return time.perf_counter() - t1


def rolled(cluster: str, table: str, start: int) -> bool:
    return bool(sql(f"select 1 from `{cluster}_assoc_usage_{table}_table` where time_start={start} limit 1"))


def rollup(cluster: str, month_start: int, month_end: int, force: bool) -> float:
    """Day by day; unless forced (after a load), a day whose day rollup exists is skipped, so an
    interrupted rollup resumes."""
    t0 = time.perf_counter()
    day = month_start
    while day < month_end:
        nxt = day + 86400
        if not force and rolled(cluster, "day", day):
            day = nxt
            continue
        s = time.perf_counter()
        sh("sacctmgr", "-i", "rollup", stamp(day), stamp(nxt))
        print(f"  rollup {stamp(day)[:10]}: {time.perf_counter() - s:.1f} s", flush=True)
        day = nxt
    # the month table is built only when a rollup's end reaches the next month: the last day again
    sh("sacctmgr", "-i", "rollup", stamp(month_end - 86400), stamp(month_end))
    return time.perf_counter() - t0


def timed(argv: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return wall, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cluster", default="bench1m")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, default=Path("/tmp/hpcai-bench/report_scale_1m.txt"))
    parser.add_argument("--since", default="2026-10-01")
    parser.add_argument("--until", default="2026-11-01")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reload", action="store_true", help="load and roll up even if the cluster has jobs")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "report_scale.json")
    args = parser.parse_args()
    cluster = args.cluster
    since, until = epoch(args.since), epoch(args.until)

    if not args.data.exists():
        args.data.parent.mkdir(parents=True, exist_ok=True)
        with args.data.open("w") as f:
            for row in generate(args.jobs):
                f.write(format_row(row) + "\n")
    rows = sum(1 for _ in args.data.open())
    setup(cluster, args.data, since)
    in_db = int(sql(f'select count(*) from `{cluster}_job_table`')[0][0])
    load_s = rollup_s = None
    if in_db == 0 or args.reload:
        if in_db:
            sql(f'delete from `{cluster}_job_table`')
        load_s = load(cluster, args.data)
        in_db = int(sql(f'select count(*) from `{cluster}_job_table`')[0][0])
        print(f"loaded {in_db:,} rows in {load_s:.1f} s")
    if load_s is not None or not rolled(cluster, "month", since):
        print(f"rolling up {args.since}..{args.until} day by day")
        rollup_s = rollup(cluster, since, until, force=load_s is not None)
        print(f"rolled up in {rollup_s:.1f} s")
    if in_db != rows:
        sys.exit(f"{cluster}_job_table has {in_db:,} rows, the data file {rows:,}: run with --reload")

    period = [f"start={args.since}T00:00:00", f"end={args.until}T00:00:00"]
    report = ["cluster", "AccountUtilizationByUser", f"cluster={cluster}", *period]
    sreport_table = ["sreport", "-t", "hours", "--tres=cpu,gres/gpu", *report]
    sreport_p = ["sreport", "-P", "-t", "hours", "--tres=cpu,gres/gpu", *report]
    hpcai = [sys.executable, "-m", "hpc_aidc.cli.main", "report", "usage", "--from-file", str(args.data),
             "--since", args.since, "--until", args.until, "--format", "json"]
    runs: dict[str, list[float]] = {"sreport": [], "sreport_p": [], "hpcai": []}
    hpcai_out = ""
    for _ in range(args.repeat):  # interleaved, so all three see the same machine load
        runs["sreport"].append(timed(sreport_table)[0])
        runs["sreport_p"].append(timed(sreport_p)[0])
        seconds, hpcai_out = timed(hpcai)
        runs["hpcai"].append(seconds)

    # agreement: sreport in seconds (no rounding), the account's own line (its users' sum)
    _s, out = timed(["sreport", "-n", "-P", "-t", "seconds", "--tres=cpu,gres/gpu", *report,
                       "format=account,login,tresname,used"])
    expected: dict[str, dict[str, float]] = {}
    for line in out.splitlines():
        account, login, tres, used = line.split("|")
        if not login and account != "root":
            expected.setdefault(account, {})[tres] = float(used) / 3600.0
    got = {line["account"]: line for line in json.loads(hpcai_out)["lines"]}
    worst = {"cpu": 0.0, "gres/gpu": 0.0}
    for account in sorted(set(expected) | set(got)):
        for tres, key in (("cpu", "cpu_hours"), ("gres/gpu", "gpu_hours")):
            ours = float(got.get(account, {}).get(key, 0.0))
            theirs = expected.get(account, {}).get(tres, 0.0)
            worst[tres] = max(worst[tres], abs(ours - theirs))
    totals = {"sreport_cpu_hours": sum(v.get("cpu", 0.0) for v in expected.values()),
              "sreport_gpu_hours": sum(v.get("gres/gpu", 0.0) for v in expected.values()),
              "hpcai_cpu_hours": sum(float(v["cpu_hours"]) for v in got.values()),
              "hpcai_gpu_hours": sum(float(v["gpu_hours"]) for v in got.values())}
    agree = set(expected) == set(got) and worst["cpu"] <= 1 / 3600 * 2 and worst["gres/gpu"] <= 1 / 3600 * 2

    def med(key: str) -> float:
        return statistics.median(runs[key])

    result = {
        "same_data": True,
        "rows": rows,
        "cluster": cluster,
        "period": f"{args.since}..{args.until}",
        "load_s": load_s,
        "rollup_s": rollup_s,
        "sreport_account_utilization_s": {"median": med("sreport"), "runs": runs["sreport"],
                                          "argv": " ".join(sreport_table)},
        "sreport_account_utilization_parsable_s": {"median": med("sreport_p"), "runs": runs["sreport_p"]},
        "hpcai_report_usage_s": {"median": med("hpcai"), "runs": runs["hpcai"], "argv": " ".join(hpcai[1:])},
        "accounts": {"sreport": len(expected), "hpcai": len(got)},
        "max_abs_diff_hours": worst,
        "totals": totals,
        "agree_within_rounding": agree,
        "load_average": os.getloadavg()[0],
    }
    print(f"{'what':<60} {'median s':>9}  runs")
    for key, label in (("sreport", "sreport -t hours AccountUtilizationByUser (rolled-up month)"),
                       ("sreport_p", "  same, -P"), ("hpcai", "hpcai report usage --from-file (raw rows)")):
        print(f"{label:<60} {med(key):>9.2f}  {' '.join(f'{s:.2f}' for s in runs[key])}")
    print(f"accounts {len(expected)} vs {len(got)}; max |diff| cpu {worst['cpu'] * 3600:.1f} s, "
          f"gpu {worst['gres/gpu'] * 3600:.1f} s; totals {totals}; agree: {agree}")
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    doc["sreport_same_data"] = result
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    if not agree:
        sys.exit(1)


if __name__ == "__main__":
    main()
