"""`hpcai site show | check`."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import click

from hpc_aidc.cli.common import echo_json, json_option, site_from
from hpc_aidc.site_profile import SiteProfile


@click.group()
def site() -> None:
    """The site profile: how hpc-aidc sees this cluster."""


def _as_json(profile: SiteProfile) -> dict[str, Any]:
    return dataclasses.asdict(profile)


@site.command()
@json_option
@click.pass_context
def show(ctx: click.Context, as_json: bool) -> None:
    """Print the site profile in effect (after HPCAI_* overrides)."""
    from hpc_aidc.render.table import format_table
    from hpc_aidc.slurmtime import format_time_limit

    profile = site_from(ctx)
    if as_json:
        echo_json(_as_json(profile))
        return
    click.echo(f"site profile: {profile.source}")
    for key in ("name", "job_root", "energy_store", "scratch", "default_partition", "default_account",
                "default_qos"):
        click.echo(f"  {key:18s}{getattr(profile, key) or '-'}")
    click.echo(f"  {'default_time':18s}{format_time_limit(profile.default_time_min)}")
    click.echo(f"  {'energy_sampler':18s}{'started by the prolog' if profile.energy_prolog else 'started by each job'}")
    p = profile.prices
    click.echo(f"  {'prices':18s}{p.gpu_hour} {p.currency}/GPU-h, {p.kwh} {p.currency}/kWh, PUE {p.pue}, "
               f"{p.carbon_g_per_kwh} gCO2/kWh")
    rows = [(x.name, x.nodes, x.gpus_per_node, x.gpu_type or "-", x.cpus_per_node,
             format_time_limit(x.max_time_min) if x.max_time_min else "-") for x in profile.partitions.values()]
    click.echo("")
    click.echo(format_table(["PARTITION", "NODES", "GPUS/NODE", "GPU TYPE", "CPUS/NODE", "MAX TIME"], rows,
                            right=(1, 2, 4)))


@site.command()
@json_option
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Validate the profile against the live cluster (partitions, GRES types, accounts, QoS)."""
    from hpc_aidc.scheduler.site_check import live_facts, site_problems

    profile = site_from(ctx)
    problems = site_problems(profile, live_facts())
    if as_json:
        echo_json({"source": profile.source, "ok": not problems, "problems": problems})
    elif problems:
        click.echo(f"{profile.source}: {len(problems)} problem(s)")
        for line in problems:
            click.echo(f"  - {line}")
    else:
        click.echo(f"{profile.source}: OK ({len(profile.partitions)} partitions match Slurm)")
    if problems:
        sys.exit(1)
