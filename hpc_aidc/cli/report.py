"""`hpcai report`: per-project usage and energy reports, and the static report site. Thin: parsing
options, access, and output; the work lives in hpc_aidc.report (imported inside the commands)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hpc_aidc.cli.common import json_option, site_from

if TYPE_CHECKING:
    from hpc_aidc.report.aggregate import Filters


def _allowed(requested: Filters) -> Filters:
    """The filters the current user may report with. Who they are comes from their uid, who is an admin
    from Slurm and the admin's own /etc/hpcai/site.toml: never from --site or HPCAI_* (a user's own
    profile may list anyone in `admins`)."""
    from hpc_aidc.ids import current_user
    from hpc_aidc.report import access

    viewer = access.viewer(current_user(), access.trusted_admins())
    filters = access.decide(viewer, requested)
    note = access.private_jobs_note(viewer, filters, access.private_data()) if not viewer.admin else None
    if note:
        click.echo(note, err=True)
    return filters


@click.group()
def report() -> None:
    """Usage and energy per project (Slurm account), from accounting; the static report site."""


@report.command()
@click.option("--account", "-A", "accounts", multiple=True, metavar="ACCOUNT",
              help="Only these accounts (repeatable). Default: every account you may see.")
@click.option("--user", "-u", "users", multiple=True, metavar="USER", help="Only these users (repeatable).")
@click.option("--partition", "-p", "partitions", multiple=True, metavar="PARTITION",
              help="Only these partitions (repeatable).")
@click.option("--since", metavar="WHEN", help="Start: YYYY-MM-DD[THH:MM[:SS]] or now-COUNTUNIT, e.g. now-30days "
                                             "(default: the 1st of this month).")
@click.option("--until", metavar="WHEN", help="End: YYYY-MM-DD[THH:MM[:SS]], now or now-COUNTUNIT (default: now).")
@click.option("--by", "by", multiple=True, metavar="DIM",
              help="Group by account, user, partition, day, week or month (repeatable; default: account).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True, help="Output format (parquet needs pyarrow and --output).")
@json_option
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE.")
@click.option("--from-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Read sacct-format lines from FILE instead of Slurm (see `hpcai report fields`).")
@click.pass_context
def usage(ctx: click.Context, accounts: tuple[str, ...], users: tuple[str, ...], partitions: tuple[str, ...],
          since: str | None, until: str | None, by: tuple[str, ...], fmt: str, as_json: bool,
          output: Path | None, from_file: Path | None) -> None:
    """GPU-, CPU- and node-hours, jobs, queue wait, energy, cost and CO2 per project.

    One sacct call for the whole period. Jobs crossing the period's edges are pro-rated; running jobs
    count their time so far; jobs without an energy summary count as unknown energy, not 0."""
    from hpc_aidc.errors import ConfigError
    from hpc_aidc.report import source
    from hpc_aidc.report.aggregate import Filters, accumulate, check_dimensions, report_from_groups
    from hpc_aidc.report.period import make_period
    from hpc_aidc.report.render import render, write_parquet

    site = site_from(ctx)
    fmt = "json" if as_json else fmt
    if fmt == "parquet" and output is None:
        raise ConfigError("Expected --output FILE with --format parquet. Got none. Add e.g. --output usage.parquet.")
    dims = check_dimensions(by or ("account",))
    period = make_period(since, until, int(time.time()))
    requested = Filters(frozenset(accounts), frozenset(users), frozenset(partitions))
    if from_file is not None:
        groups = source.accumulate_file(from_file, period, dims, requested)
    else:
        filters = _allowed(requested)
        groups = accumulate(source.sacct_lines(period, filters), period, dims, filters)
    result = report_from_groups(groups, period, dims, site.prices)
    if fmt == "parquet":
        assert output is not None
        write_parquet(result, output)
        click.echo(f"wrote {output}")
        return
    text = render(result, fmt)
    if output is None:
        click.echo(text)
    else:
        try:
            output.write_text(text + ("" if text.endswith("\n") else "\n"))
        except OSError as exc:
            raise ConfigError(f"Expected a writable --output file {output}. Got {exc.strerror}.") from None
        click.echo(f"wrote {output}")


@report.command()
def fields() -> None:
    """The sacct command whose output --from-file expects."""
    from hpc_aidc.report.rows import REPORT_FIELDS

    click.echo("sacct --noheader --parsable2 --delimiter=$'\\x1f' --allocations --duplicates --allusers "
               f"--format={','.join(REPORT_FIELDS)} --starttime=... --endtime=...")


@report.command(name="site")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the site into (created).")
@click.option("--since", metavar="WHEN", help="Start: a date or now-COUNTUNIT (default: 12 weeks before --until).")
@click.option("--until", metavar="WHEN", help="End: a date, now or now-COUNTUNIT (default: now).")
@click.option("--account", "-A", "accounts", multiple=True, metavar="ACCOUNT", help="Only these accounts.")
@click.option("--from-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Read sacct-format lines from FILE instead of Slurm.")
@click.pass_context
def site_cmd(ctx: click.Context, out: Path, since: str | None, until: str | None, accounts: tuple[str, ...],
             from_file: Path | None) -> None:
    """Build the static report site: an overview of every project and one page per project."""
    from hpc_aidc.report import source
    from hpc_aidc.report.aggregate import Filters
    from hpc_aidc.report.period import Period, parse_when
    from hpc_aidc.report.site import build_site

    site = site_from(ctx)
    now = int(time.time())
    end = parse_when(until, now) if until else now
    start = parse_when(since, now) if since else end - 84 * 86400
    period = Period(start, end, now)
    requested = Filters(frozenset(accounts))
    if from_file is not None:
        lines = source.read_lines(from_file)
        filters = requested
    else:
        filters = _allowed(requested)
        lines = source.sacct_lines(period, filters)
    index = build_site(lines, period, filters, site.prices, out, cluster=site.name)
    click.echo(f"wrote {index}")
