"""A pipeline's launcher job: `python -m hpc_aidc.cli.pipeline_launch [--site FILE] FOLDER STAGE`, run in a
one-CPU job once what STAGE waits for has ended: it submits STAGE (an inference run whose model or input
an earlier stage made) and the stages that wait for it, and records them in the pipeline's record."""

from __future__ import annotations

import tomllib
from pathlib import Path

import click

from hpc_aidc.cli.main import run_command


@click.command("pipeline_launch")
@click.option("--site", "site_path", envvar="HPCAI_SITE", metavar="FILE", help="Site profile.")
@click.argument("folder", type=click.Path(file_okay=False))
@click.argument("stage")
def launch(site_path: str | None, folder: str, stage: str) -> None:
    """Submit STAGE of the pipeline in FOLDER, and what waits for it."""
    from hpc_aidc.cli.pipeline import allowed_keys, planners
    from hpc_aidc.scheduler.pipeline import PipelineRecord
    from hpc_aidc.scheduler.pipeline_engine import launch as launch_stage
    from hpc_aidc.site_profile import load_site
    from hpc_aidc.spec.pipeline import Pipeline, parse_pipeline

    def parse(record: PipelineRecord) -> Pipeline:
        return parse_pipeline(tomllib.loads(record.text), record.source, allowed_keys(), record.name)

    site = load_site(site_path)
    where = Path(folder).resolve()
    submitted = launch_stage(site, where, stage, planners(site, site_path, where), parse)
    click.echo(f"submitted {stage} and what waits for it: jobs {', '.join(submitted)}")


if __name__ == "__main__":
    run_command(launch, prog_name="python -m hpc_aidc.cli.pipeline_launch")
