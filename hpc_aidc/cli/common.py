"""Helpers shared by command modules: site loading from the click context, JSON output."""

from __future__ import annotations

import json
from typing import Any

import click

from hpc_aidc.site import SiteProfile, load_site


def site_from(ctx: click.Context) -> SiteProfile:
    root = ctx.find_root()
    path = (root.obj or {}).get("site_path")
    return load_site(path)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
