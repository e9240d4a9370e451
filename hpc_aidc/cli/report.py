"""`hpcai report`: per-project usage and energy reports, and the static report site. Thin: parsing
options, access, and output; the work lives in hpc_aidc.report (imported inside the commands)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hpc_aidc.cli.common import json_option, site_from

if TYPE_CHECKING:
    from hpc_aidc.report.aggregate import Filters, Report
    from hpc_aidc.report.period import Period
    from hpc_aidc.report.store.inputs import StoreInputs
    from hpc_aidc.site_profile import SiteProfile

live_option = click.option("--live", is_flag=True,
                           help="Read the whole period from sacct, not from the site's accounting store.")


def _allowed(requested: Filters, site: SiteProfile, period: Period, live: bool) -> tuple[Filters, StoreInputs | None]:
    """The filters the current user may report with, and the accounting store's inputs when the store
    may serve this report. Who they are comes from their uid, who is an admin from Slurm and the admin's
    own /etc/hpcai/site.toml: never from --site or HPCAI_* (a user's own profile may list anyone in
    `admins`). Under PrivateData=jobs a member who does not coordinate the account reads sacct, which
    gives them their own jobs only, as it would without a store."""
    from hpc_aidc.ids import current_user
    from hpc_aidc.report import access

    viewer = access.viewer(current_user(), access.trusted_admins())
    filters = access.decide(viewer, requested)
    note = access.private_jobs_note(viewer, filters, access.private_data()) if not viewer.admin else None
    if note:
        click.echo(note, err=True)
    if live or site.report_store is None or note:
        return filters, None
    from hpc_aidc.report.store.inputs import store_inputs

    inputs = store_inputs(site.report_store, period, filters, all_accounts=viewer.admin)
    if inputs is not None and inputs.note:
        click.echo(inputs.note, err=True)
    return filters, inputs


def _from_store(inputs: StoreInputs, period: Period, dims: tuple[str, ...], site: SiteProfile,
                filters: Filters) -> Report:
    from hpc_aidc.report.store.query import store_report

    return store_report(inputs.files, None, inputs.watermark, period, dims, site.prices, filters,
                        rollups=inputs.rollups, later=inputs.later)


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
@live_option
@click.pass_context
def usage(ctx: click.Context, accounts: tuple[str, ...], users: tuple[str, ...], partitions: tuple[str, ...],
          since: str | None, until: str | None, by: tuple[str, ...], fmt: str, as_json: bool,
          output: Path | None, from_file: Path | None, live: bool) -> None:
    """GPU-, CPU- and node-hours, jobs, queue wait, energy, cost and CO2 per project.

    Reads the site's accounting store (`report_store`, filled by `hpcai report ingest`) plus a small sacct
    call for what is not stored yet; without a store, or with --live, one sacct call for the whole
    period. Jobs crossing the period's edges are pro-rated; running jobs count their time so far; jobs
    without an energy summary count as unknown energy, not 0."""
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
        result = report_from_groups(source.accumulate_file(from_file, period, dims, requested), period, dims,
                                    site.prices)
    else:
        filters, inputs = _allowed(requested, site, period, live)
        if inputs is not None:
            result = _from_store(inputs, period, dims, site, filters)
        else:
            result = report_from_groups(accumulate(source.sacct_lines(period, filters), period, dims, filters),
                                        period, dims, site.prices)
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
@live_option
@click.pass_context
def site_cmd(ctx: click.Context, out: Path, since: str | None, until: str | None, accounts: tuple[str, ...],
             from_file: Path | None, live: bool) -> None:
    """Build the static report site: an overview of every project and one page per project."""
    from hpc_aidc.report import source
    from hpc_aidc.report.aggregate import Filters
    from hpc_aidc.report.period import Period, parse_when
    from hpc_aidc.report.website import build_site, site_data

    site = site_from(ctx)
    now = int(time.time())
    end = parse_when(until, now) if until else now
    start = parse_when(since, now) if since else end - 84 * 86400
    period = Period(start, end, now)
    requested = Filters(frozenset(accounts))
    if from_file is not None:
        data = site_data(source.read_lines(from_file), period, requested, site.prices)
    else:
        filters, inputs = _allowed(requested, site, period, live)
        if inputs is not None:
            from hpc_aidc.report.store.query import site_data_from_store

            data = site_data_from_store(inputs.files, None, inputs.watermark, period, filters, site.prices,
                                        rollups=inputs.rollups, later=inputs.later)
        else:
            data = site_data(source.sacct_lines(period, filters), period, filters, site.prices)
    index = build_site(data, period, site.prices, out, cluster=site.name)
    click.echo(f"wrote {index}")


@report.command()
@click.option("--since", metavar="WHEN", help="Where an empty store starts: a date or now-COUNTUNIT "
                                             "(default: the 1st of this month). Later runs start at the watermark.")
@click.option("--window", default="1day", show_default=True, metavar="DURATION",
              help="Read Slurm in windows this long (each moves the watermark: an interrupted ingest resumes).")
@click.option("--overlap", default="1hour", show_default=True, metavar="DURATION",
              help="Read again this far before the watermark (records slurmdbd got late).")
@click.option("--settle", default="2minutes", show_default=True, metavar="DURATION",
              help="Stop this long before now (the energy summary lands seconds after a job ends).")
@click.option("--from-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Load sacct-format lines from FILE (`hpcai report fields`), e.g. history before the store.")
@json_option
@click.pass_context
def ingest(ctx: click.Context, since: str | None, window: str, overlap: str, settle: str, from_file: Path | None,
           as_json: bool) -> None:
    """Bring the accounting store up to date (admins; from cron or the admin kit's systemd timer).

    Reads only what ended since the last run, idempotently: a re-run, an overlap or an interrupted run
    never counts a job twice. Energy summaries that arrive late (the energy spool) update their jobs."""
    from hpc_aidc.cli.common import echo_json, root_safe_site
    from hpc_aidc.errors import ConfigError
    from hpc_aidc.monitor import spool
    from hpc_aidc.report import source
    from hpc_aidc.report.ingest import ingest as run_ingest
    from hpc_aidc.report.ingest import ingest_file
    from hpc_aidc.report.period import month_start, parse_duration, parse_when
    from hpc_aidc.report.store.layout import StoreState, read_state
    from hpc_aidc.report.store.writer import StoreWriter

    site = root_safe_site(ctx)
    if site.report_store is None:
        raise ConfigError(f"Expected [cluster].report_store in the site profile {site.source}. Got none. "
                          "Add e.g. report_store = \"/shared/hpcai/report-store\" (docs/report-store.md).")
    now = int(time.time())
    window_s, overlap_s, settle_s = (parse_duration(v, name) for v, name in
                                     ((window, "--window"), (overlap, "--overlap"), (settle, "--settle")))
    start = parse_when(since, now) if since else month_start(now)

    def spooled() -> set[str]:
        try:
            return set(spool.pending(site.energy_store))
        except OSError:
            return set()  # not readable by this user: late summaries are caught by --overlap only

    def progress(a: int, b: int, read: int, written: int) -> None:
        if not as_json:
            click.echo(f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(a))} .. "
                       f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(b))}: {read} rows read, {written} stored",
                       err=True)

    writer = StoreWriter(site.report_store, site.report_store_readers)
    with writer.locked():
        state = read_state(site.report_store) or StoreState()
        if from_file is not None:
            result = ingest_file(writer, state, source.read_lines(from_file))
        else:
            result = run_ingest(writer, state, now=now, start=start, fetch=source.window_lines,
                                fetch_jobs=source.job_lines, spooled=spooled, window_s=window_s,
                                settle_s=settle_s, overlap_s=overlap_s, progress=progress)
    out = {"store": str(site.report_store), "windows": result.windows, "rows_read": result.rows_read,
           "rows_written": result.rows_written, "watermark": result.watermark,
           "awaiting_energy": result.awaiting}
    if as_json:
        echo_json(out)
    else:
        mark = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(result.watermark)) if result.watermark else "none"
        click.echo(f"report store {site.report_store}: {result.rows_written} rows new or changed of "
                   f"{result.rows_read} read; up to date until {mark}")
