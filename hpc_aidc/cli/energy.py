"""`hpcai energy`: the node sampler and the epilog steps (sample, finish, combine), work reports
(work) and the per-job view (show). The logic lives in hpc_aidc.monitor; this module parses flags."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Mapping
from typing import Any

import click

from hpc_aidc.cli.common import echo_json, json_option, site_from
from hpc_aidc.errors import ConfigError, EnergyError, JobNotFoundError, SlurmError, expected
from hpc_aidc.site import SiteProfile


def _job_id(value: str | None) -> str:
    job = value or os.environ.get("SLURM_JOB_ID")
    if not job:
        raise ConfigError(expected("a job id (--job-id or $SLURM_JOB_ID)", None,
                                   "Run it inside a Slurm job or pass --job-id."))
    return job


def _node(value: str | None) -> str:
    return value or os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def _site_with_nvml_env(ctx: click.Context) -> SiteProfile:
    """The site profile, with its NVML variables put into our environment so the C library sees them
    (prolog and epilog run with a minimal environment)."""
    from hpc_aidc.monitor.nvml import nvml_env

    site = site_from(ctx)
    os.environ.update(nvml_env(site.env, os.environ))
    return site


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
@click.pass_context
def sample(ctx: click.Context, job_id: str | None, node: str | None, interval: float,
           gpu_list: str | None, user: str | None, account: str | None, source: str,
           max_duration: float | None) -> None:
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
        source=source, max_duration_s=max_duration,
    )
    stop = threading.Event()
    stop_on_signals(stop)
    outcome = run_sampler(cfg, stop)
    if outcome == "already-owned":
        click.echo(f"hpcai energy: job {cfg.job_id} on {cfg.node} is already sampled; nothing to do",
                   err=True)


@energy.command()
@click.option("--job-id", help="Slurm job id (default: $SLURM_JOB_ID).")
@click.option("--node", help="Node name (default: $SLURMD_NODENAME).")
@click.pass_context
def finish(ctx: click.Context, job_id: str | None, node: str | None) -> None:
    """Node epilog step: stop the sampler, read the counters if it could not, write the summary."""
    from hpc_aidc.monitor import acct
    from hpc_aidc.monitor.finish import finish_node

    site = _site_with_nvml_env(ctx)
    summary = finish_node(site.energy_store, _job_id(job_id), _node(node))
    click.echo("no energy records" if summary is None else acct.encode(summary.totals))


@energy.command()
@click.option("--job-id", help="Slurm job id (default: $SLURM_JOB_ID).")
@click.option("--nodes", required=True, help="The job's nodes, comma-separated (expanded hostlist).")
@click.option("--wait", type=float, default=30.0, show_default=True,
              help="Seconds to wait for late node epilogs.")
@click.pass_context
def combine(ctx: click.Context, job_id: str | None, nodes: str, wait: float) -> None:
    """Controller epilog step: print the job's combined summary line for AdminComment."""
    from hpc_aidc.monitor import acct
    from hpc_aidc.monitor.finish import combine_job

    site = site_from(ctx)
    names = [n for n in nodes.replace(" ", ",").split(",") if n]
    click.echo(acct.encode(combine_job(site.energy_store, _job_id(job_id), names, wait_s=wait)))


@energy.command()
@click.option("--tokens", type=float, help="Tokens this process processed.")
@click.option("--samples", type=float, help="Samples this process processed.")
@click.pass_context
def work(ctx: click.Context, tokens: float | None, samples: float | None) -> None:
    """Report work done by this process of a job, for J/token and J/sample (amounts add up)."""
    from hpc_aidc.monitor.store import job_dir
    from hpc_aidc.monitor.work import work_line, work_path

    if tokens is None and samples is None:
        raise ConfigError(expected("--tokens or --samples", None, "Say how much work was done."))
    lines = "".join(work_line(k, v) for k, v in (("tokens", tokens), ("samples", samples)) if v is not None)
    site = site_from(ctx)
    path = work_path(job_dir(site.energy_store, _job_id(None)), _node(None), os.getpid())
    try:
        with open(path, "a") as fh:
            fh.write(lines)
    except OSError as exc:
        raise EnergyError(f"Expected to write {path}. Got {exc.strerror}. Is the job's sampler running "
                          "(it creates the directory)?") from None


def _sacct_comment(job_id: str) -> dict[str, str]:
    """One sacct call: the job's allocation line with its AdminComment."""
    fields = ["jobid", "user", "account", "state", "elapsed", "nnodes", "admincomment"]
    try:
        out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", ",".join(fields)],
                             capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise SlurmError("Expected sacct on PATH. Got none. Run this on a cluster login node.") from None
    if out.returncode != 0:
        raise SlurmError(f"Expected sacct to answer for job {job_id}. Got: {out.stderr.strip()[:200]}. "
                         "Is slurmdbd up?")
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    if not lines:
        raise JobNotFoundError(f"Expected job {job_id} in Slurm accounting. Got no such job. "
                               "Check the id with `hpcai jobs`.")
    return dict(zip(fields, lines[0].split("|", len(fields) - 1), strict=False))


@energy.command()
@click.argument("job_id")
@json_option
@click.pass_context
def show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """A job's energy: summary, per-GPU table and power over time."""
    from hpc_aidc.monitor import acct, records, store
    from hpc_aidc.monitor.summary import combine as combine_totals

    if not job_id.replace("_", "").isdigit():
        raise ConfigError(expected("a numeric Slurm job id", job_id, "See `hpcai jobs`."))
    site = site_from(ctx)
    row = _sacct_comment(job_id)
    comment = row.get("admincomment", "")
    nodes = store.nodes_with_records(site.energy_store, row.get("jobid", job_id))
    summaries = [s for s in (records.node_summary(site.energy_store, row["jobid"], n) for n in nodes) if s]
    if acct.contains_summary(comment):
        totals, origin = acct.decode(comment), "slurm accounting (AdminComment)"
    elif summaries:
        totals, origin = combine_totals([s.totals for s in summaries]), "energy records (job not finished)"
    else:
        raise EnergyError(f"Expected energy records for job {job_id}. Got none in accounting or in "
                          f"{site.energy_store}. Was the sampler running (prolog or batch script)?")
    series = _power_points(site, row["jobid"], nodes)
    if as_json:
        echo_json(_as_json(row, totals, origin, summaries, series))
        return
    for line in _render(row, totals, origin, summaries, series):
        click.echo(line)


def _power_points(site: SiteProfile, job_id: str, nodes: list[str]) -> list[list[tuple[float, float]]]:
    """Per node: (time, total watts of the node's GPUs) for every row."""
    from hpc_aidc.monitor import records

    out: list[list[tuple[float, float]]] = []
    for node in nodes:
        meta = records.load_meta(site.energy_store, job_id, node)
        if meta is None or not meta.gpus:
            continue
        s = records.load_series(site.energy_store, job_id, node, len(meta.gpus))
        out.append([(t, sum(g.power_w[i] for g in s.gpus)) for i, t in enumerate(s.times)])
    return out


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "unavailable" if value is None else f"{value:,.{digits}f}{unit}"


def _as_json(row: Mapping[str, str], totals: Any, origin: str, summaries: list[Any],
             points: list[list[tuple[float, float]]]) -> dict[str, Any]:
    from dataclasses import asdict

    from hpc_aidc.monitor import records

    return {
        "job": dict(row), "origin": origin,
        "totals": {**asdict(totals), "gpu_kwh": totals.gpu_kwh, "j_per_token": totals.j_per_token,
                   "j_per_sample": totals.j_per_sample},
        "nodes": [records.summary_to_json(s) for s in summaries],
        "power_series": {s.totals.nodes[0]: [[round(t, 3), round(w, 3)] for t, w in p]
                         for s, p in zip(summaries, points, strict=False)},
    }


def _render(row: Mapping[str, str], t: Any, origin: str, summaries: list[Any],
            points: list[list[tuple[float, float]]]) -> list[str]:
    from hpc_aidc.monitor.plot import power_chart

    sim = "  [SIMULATED: fake NVML, not real hardware]" if t.simulated else ""
    out = [
        f"Job {row.get('jobid')}  user {row.get('user')}  project {row.get('account')}  "
        f"{row.get('state')}  elapsed {row.get('elapsed')}{sim}",
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
    out.append(f"(summary from {origin})")
    if summaries:
        out.append("")
        out.append(f"{'NODE':<8}{'IDX':>4}  {'UUID':<42}{'ENERGY J':>12}  {'SOURCE':<11}"
                   f"{'MEAN W':>8}{'MAX W':>8}{'UTIL%':>7}{'IDLE s':>8}")
        for s in summaries:
            for g in s.gpus:
                idx = "-" if g.index is None else str(g.index)
                out.append(f"{s.totals.nodes[0]:<8}{idx:>4}  {g.uuid[:41]:<42}{_fmt(g.energy_j):>12}  "
                           f"{g.source + ('~' if g.approximate else ''):<11}{_fmt(g.power_mean_w):>8}"
                           f"{_fmt(g.power_max_w):>8}{_fmt(g.util_mean):>7}{g.idle_s:>8.1f}")
    if points:
        out.append("")
        out.append("Power over time (all GPUs of all nodes):")
        out.extend(power_chart(points))
    return out

