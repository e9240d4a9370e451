"""`hpcai energy`: the node sampler and the epilog steps (sample, finish, combine), work reports
(work) and the per-job view (show). The logic lives in hpc_aidc.monitor; this module parses flags."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import click

from hpc_aidc.cli.common import echo_json, json_option, root_safe_site, site_from
from hpc_aidc.errors import ConfigError, EnergyError, expected
from hpc_aidc.site_profile import SiteProfile


def _job_id(value: str | None) -> str:
    from hpc_aidc.ids import parse_job_id

    job = value or os.environ.get("SLURM_JOB_ID")
    if not job:
        raise ConfigError(expected("a job id (--job-id or $SLURM_JOB_ID)", None,
                                   "Run it inside a Slurm job or pass --job-id."))
    return parse_job_id(job, "Pass --job-id or run inside a job.")


def _node(value: str | None) -> str:
    from hpc_aidc.monitor.energy_store.layout import check_node

    return check_node(value or os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0])


def _run(value: int | None) -> int:
    from hpc_aidc.monitor.restarts import run_of

    return run_of(os.environ) if value is None else value


def _site_with_nvml_env(ctx: click.Context) -> SiteProfile:
    """The site profile, with its NVML variables put into our environment so the C library sees them
    (prolog and epilog run with a minimal environment)."""
    from hpc_aidc.monitor.nvml import nvml_env

    site = root_safe_site(ctx)
    os.environ.update(nvml_env(site.env, os.environ))
    return site


def _nothing() -> None:
    return None


run_option = click.option("--run", type=click.IntRange(min=0),
                          help="The job's run (Slurm's restart count; default: $SLURM_JOB_RESTART_COUNT, "
                               "$SLURM_RESTART_COUNT, else 0).")


@click.group()
def energy() -> None:
    """Measure and show GPU/CPU energy of jobs (NVML counters, RAPL)."""


@energy.command()
@click.option("--job-id", help="Slurm job id (default: $SLURM_JOB_ID).")
@click.option("--node", help="Node name (default: $SLURMD_NODENAME, then the host name).")
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between samples.")
@click.option("--gpus", "gpu_list", metavar="LIST|all",
              help="GPUs to measure (indices, UUIDs, PCI ids); default: the job's, from "
                   "SLURM_JOB_GPUS / SLURM_STEP_GPUS / CUDA_VISIBLE_DEVICES.")
@click.option("--user", help="The job's user, owner of the records (default: $SLURM_JOB_USER).")
@click.option("--account", help="The job's project (default: $SLURM_JOB_ACCOUNT).")
@click.option("--source", type=click.Choice(["job", "prolog"]), default="job", show_default=True)
@click.option("--max-duration", type=float, help="Stop after this many seconds (benchmarks, tests).")
@run_option
@click.option("--detach", is_flag=True,
              help="Return once the sampler runs in its own session and owns the node (the prolog).")
@click.option("--log", "log_path", metavar="FILE", help="With --detach: append the sampler's messages here.")
@click.pass_context
def sample(ctx: click.Context, job_id: str | None, node: str | None, interval: float,
           gpu_list: str | None, user: str | None, account: str | None, source: str,
           max_duration: float | None, run: int | None, detach: bool, log_path: str | None) -> None:
    """Sample this node's GPUs for a job until SIGTERM. A second sampler for the same job and node
    exits 0 at once ("already owned"), so prolog and batch script may both start one."""
    import threading

    from hpc_aidc.monitor.gpus import job_gpus, parse_gpu_list
    from hpc_aidc.monitor.sampler import SamplerConfig, run_sampler, stop_on_signals

    site = _site_with_nvml_env(ctx)
    env = os.environ
    if gpu_list == "all":
        gpus = None
    elif gpu_list is not None:
        gpus = parse_gpu_list(gpu_list)
    else:
        found = job_gpus(env)
        # Inside a job with no GPU variable the job has no GPUs here (a CPU job on a GPU node must not
        # be charged for them); outside Slurm, measure every GPU.
        gpus = found[0] if found is not None else (() if env.get("SLURM_JOB_ID") else None)
    cfg = SamplerConfig(
        store=site.energy_store, job_id=_job_id(job_id), node=_node(node), interval_s=interval, gpus=gpus,
        user=user or env.get("SLURM_JOB_USER") or None, account=account or env.get("SLURM_JOB_ACCOUNT"),
        source=source, max_duration_s=max_duration, run=_run(run),
    )
    ready: Callable[[], None] = _nothing
    if detach:
        from hpc_aidc.monitor.detach import detach as fork_away

        ready = fork_away(log_path).ready
    stop = threading.Event()
    stop_on_signals(stop)
    outcome = run_sampler(cfg, stop, log=lambda message: click.echo(f"hpcai energy: {message}", err=True),
                          ready=ready)
    if outcome == "already-owned":
        click.echo(f"hpcai energy: job {cfg.job_id} on {cfg.node} is already sampled; nothing to do",
                   err=True)


@energy.command()
@click.option("--job-id", help="Slurm job id (default: $SLURM_JOB_ID).")
@click.option("--node", help="Node name (default: $SLURMD_NODENAME).")
@run_option
@click.pass_context
def finish(ctx: click.Context, job_id: str | None, node: str | None, run: int | None) -> None:
    """Node epilog step: for each run of the job not finished on this node, stop its sampler, read the
    counters if it could not, write the summary and the node's accounting line."""
    from hpc_aidc.monitor import acct
    from hpc_aidc.monitor.finish import finish_epilog

    site = _site_with_nvml_env(ctx)
    notes: list[str] = []
    summaries = finish_epilog(site.energy_store, _job_id(job_id), _node(node), _run(run), log=notes)
    for note in notes:
        click.echo(f"hpcai energy: {note}", err=True)
    for summary in summaries:
        click.echo(acct.encode(summary.totals))
    if not summaries:
        click.echo("no energy records")


@energy.command("store-run")
@click.option("--job-id", help="Slurm job id (default: $SLURM_JOB_ID).")
@click.option("--nodes", required=True, help="The job's nodes, comma-separated (expanded hostlist).")
@run_option
@click.option("--wait", type=float, default=20.0, show_default=True,
              help="Seconds to wait for late node epilogs.")
@click.pass_context
def store_run(ctx: click.Context, job_id: str | None, nodes: str, run: int | None, wait: float) -> None:
    """Controller epilog step: combine the run's nodes and store the job's energy (all runs) in its
    AdminComment; spooled for `energy backfill` when slurmdbd does not answer. Exit 0 either way."""
    from hpc_aidc.scheduler.energy_accounting import end_of_run

    site = root_safe_site(ctx)
    names = [_node(n) for n in nodes.replace(" ", ",").split(",") if n]
    stored = end_of_run(site.energy_store, _job_id(job_id), _run(run), names, wait_s=wait)
    if stored.line is None:
        click.echo(f"spooled job {stored.job_id}: {stored.error}")
    else:
        click.echo(f"stored: {stored.line}")


@energy.command()
@click.option("--budget", type=float, default=30.0, show_default=True,
              help="Seconds to spend at most (EpilogSlurmctld passes a few).")
@json_option
@click.pass_context
def backfill(ctx: click.Context, budget: float, as_json: bool) -> None:
    """Store spooled energy summaries in Slurm accounting (after a slurmdbd outage). Safe to run from
    cron as root or the SlurmUser: a job is stored once, with every run's energy."""
    from hpc_aidc.monitor import spool
    from hpc_aidc.scheduler.energy_accounting import backfill as store_spooled

    site = root_safe_site(ctx)
    done = store_spooled(site.energy_store, budget)
    left = spool.pending(site.energy_store)
    if as_json:
        echo_json({"stored": [d.job_id for d in done if d.line], "failed": {d.job_id: d.error for d in done
                                                                          if d.line is None},
                   "pending": left})
        return
    for d in done:
        click.echo(f"{d.job_id}: " + (f"stored {d.line}" if d.line else f"not stored: {d.error}"))
    click.echo(f"{len([d for d in done if d.line])} stored, {len(left)} still spooled")


@energy.command()
@click.option("--tokens", type=float, help="Tokens this process processed.")
@click.option("--samples", type=float, help="Samples this process processed.")
@click.pass_context
def work(ctx: click.Context, tokens: float | None, samples: float | None) -> None:
    """Report work done by this process of a job, for J/token and J/sample (amounts add up)."""
    from hpc_aidc.monitor.work import report_work

    if tokens is None and samples is None:
        raise ConfigError(expected("--tokens or --samples", None, "Say how much work was done."))
    for amount in (tokens, samples):
        if amount is not None and amount < 0:
            raise ConfigError(expected("amounts >= 0", amount, "Report what the process did."))
    site = site_from(ctx)
    job, run = _job_id(None), _run(None)
    if not report_work(site.energy_store, job, run, _node(None), tokens=tokens, samples=samples):
        raise EnergyError(f"Expected the work directory of job {job} run {run} in {site.energy_store}. Got none "
                          "writable. Is the job's sampler running (it creates the directory)?")


@energy.command()
@click.argument("job_id")
@json_option
@click.pass_context
def show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """A job's energy: the job's total, then each run (a requeued job runs again) with its per-GPU
    table, and power over time. Every run's figures add up to the total."""
    from hpc_aidc.ids import parse_job_id
    from hpc_aidc.monitor import acct, records
    from hpc_aidc.monitor.summary import combine_runs
    from hpc_aidc.scheduler.energy_accounting import job_with_comment, records_job_id

    parse_job_id(job_id)
    site = site_from(ctx)
    row = job_with_comment(job_id)
    comment = row.get("admincomment", "")
    runs = records.job_runs(site.energy_store, records_job_id(job_id, row.get("jobidraw")))
    if acct.contains_summary(comment):
        totals, origin = acct.decode(comment), "slurm accounting (AdminComment)"
    elif runs:
        totals, origin = combine_runs([r.totals for r in runs]), "energy records (not in accounting yet)"
    else:
        raise EnergyError(f"Expected energy records for job {job_id}. Got none in accounting or in "
                          f"{site.energy_store}. Was the sampler running (prolog or batch script)?")
    if as_json:
        echo_json(_as_json(row, totals, origin, runs))
        return
    for line in _render(row, totals, origin, runs):
        click.echo(line)


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "unavailable" if value is None else f"{value:,.{digits}f}{unit}"


def _totals_json(t: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {**asdict(t), "gpu_kwh": t.gpu_kwh, "j_per_token": t.j_per_token, "j_per_sample": t.j_per_sample}


def _as_json(row: Mapping[str, str], totals: Any, origin: str, runs: list[Any]) -> dict[str, Any]:
    from hpc_aidc.monitor import records

    return {
        "job": dict(row), "origin": origin, "totals": _totals_json(totals),
        "runs": [{"run": r.run, "totals": _totals_json(r.totals),
                  "nodes": [records.summary_to_json(s) for s in r.summaries],
                  "power_series": {node: [[round(t, 3), round(w, 3)] for t, w in points]
                                   for node, points in r.power}} for r in runs],
    }


def _totals_lines(t: Any) -> list[str]:
    out = [
        f"GPU energy   {_fmt(t.gpu_j, ' J')}  ({_fmt(t.gpu_kwh, ' kWh', 6)})  source: {t.source}"
        + ("  (approximate)" if t.approximate else ""),
        f"CPU energy   {_fmt(t.cpu_j, ' J')}  (RAPL, node-wide)",
        f"Nodes {','.join(t.nodes) or '-'}  GPUs {t.gpus}  duration {t.duration_s:.1f} s"
        + (f"  missing: {','.join(t.missing)}" if t.missing else ""),
        f"GPU power    mean {_fmt(t.power_mean_w, ' W')}  max {_fmt(t.power_max_w, ' W')}  "
        f"util {_fmt(t.util_mean, ' %')}  idle GPU time {_fmt(t.idle_gpu_s, ' s')}",
    ]
    if t.tokens or t.samples:
        out.append(f"Work         tokens {_fmt(t.tokens, '', 0)}  J/token {_fmt(t.j_per_token, '', 4)}  "
                   f"samples {_fmt(t.samples, '', 0)}  J/sample {_fmt(t.j_per_sample, '', 4)}")
    return out


def _render(row: Mapping[str, str], t: Any, origin: str, runs: list[Any]) -> list[str]:
    from hpc_aidc.monitor.plot import power_chart

    sim = "  [SIMULATED: fake NVML, not real hardware]" if t.simulated else ""
    out = [f"Job {row.get('jobid')}  user {row.get('user')}  project {row.get('account')}  "
           f"{row.get('state')}  elapsed {row.get('elapsed')}{sim}",
           *_totals_lines(t),
           f"(job total over {t.runs} run{'s' if t.runs != 1 else ''}, from {origin})"]
    for r in runs:
        out += ["", f"Run {r.run}" + ("  (first run)" if r.run == 0 else f"  (after {r.run} requeue"
                                                                       f"{'s' if r.run > 1 else ''})")]
        if len(runs) > 1:
            out += ["  " + line for line in _totals_lines(r.totals)]
        out.append(f"{'NODE':<8}{'IDX':>4}  {'UUID':<42}{'ENERGY J':>12}  {'SOURCE':<11}"
                   f"{'MEAN W':>8}{'MAX W':>8}{'UTIL%':>7}{'IDLE s':>8}")
        for s in r.summaries:
            for g in s.gpus:
                idx = "-" if g.index is None else str(g.index)
                out.append(f"{s.totals.nodes[0]:<8}{idx:>4}  {g.uuid[:41]:<42}{_fmt(g.energy_j):>12}  "
                           f"{g.source + ('~' if g.approximate else ''):<11}{_fmt(g.power_mean_w):>8}"
                           f"{_fmt(g.power_max_w):>8}{_fmt(g.util_mean):>7}{g.idle_s:>8.1f}")
    points = [list(p) for r in runs for _, p in r.power]
    if points:
        out.append("")
        out.append("Power over time (all GPUs of all nodes, every run):")
        out.extend(power_chart(points))
    return out
