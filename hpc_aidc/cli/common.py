"""Helpers shared by command modules: site loading from the click context, JSON output."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from hpc_aidc.site_profile import SiteProfile, find_site_path, load_site, load_trusted_site


def site_from(ctx: click.Context) -> SiteProfile:
    root = ctx.find_root()
    path = (root.obj or {}).get("site_path")
    return load_site(path)


def root_safe_site(ctx: click.Context) -> SiteProfile:
    """The site profile for commands that may run as root (prolog, epilog, ingest, services): as root only
    a root-owned profile counts, with no HPCAI_* overrides, so nothing a user can write decides where root
    writes or what it reads."""
    if os.geteuid() == 0:
        return load_trusted_site(find_site_path((ctx.find_root().obj or {}).get("site_path")))
    return site_from(ctx)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def print_dry_run(site: SiteProfile, request: Any, ask_slurm: bool = False, as_json: bool = False) -> None:
    """`--dry-run`: the request's scripts exactly as sbatch would receive them, and nothing else on stdout
    (so they can be piped); with `ask_slurm`, slurmctld's verdict on stderr. Refused like a submission.
    With --json: the whole request (scripts, files it would lay down, policy request, audit tag, verdict)."""
    from hpc_aidc.scheduler.submit import dry_run

    scripts, verdict = dry_run(site, request, ask_slurm)
    if as_json:
        echo_json({**request.to_json(), "test_only": verdict})
        return
    for script in scripts:
        click.echo(script, nl=False)
    if verdict:
        click.echo(f"hpcai: sbatch --test-only: {verdict}", err=True)
