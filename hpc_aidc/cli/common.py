"""Helpers shared by command modules: site loading from the click context, JSON output."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from hpc_aidc.site import SiteProfile, find_site_path, load_site, load_trusted_site


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
