"""`hpcai submit ...`: turn flags into a spec, render it, and submit it through submitit."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from hpc_aidc.cli.common import echo_json, site_from
from hpc_aidc.cli.options import resource_options
from hpc_aidc.site import SiteProfile
from hpc_aidc.spec.resources import Resources, parse_resources


@click.group()
def submit() -> None:
    """Submit work to Slurm (through submitit). Each command validates before it submits."""


def resources_from(site: SiteProfile, opts: dict[str, Any]) -> Resources:
    return parse_resources(
        site, nodes=opts["nodes"], ntasks_per_node=opts["ntasks_per_node"], gpus_per_node=opts["gpus_per_node"],
        gpu_type=opts["gpu_type"], cpus_per_task=opts["cpus_per_task"], partition=opts["partition"],
        account=opts["account"], qos=opts["qos"], time=opts["time_limit"], job_name=opts["job_name"],
    )


def submit_flow(site: SiteProfile, resources: Resources, fn: Callable[..., Any], args: tuple[Any, ...],
                opts: dict[str, Any], **render_kwargs: Any) -> None:
    """Shared tail of every submit command: dry-run or submit, then report (and optionally wait)."""
    from hpc_aidc.render.sbatch import describe, job_folder, submitit_parameters
    from hpc_aidc.scheduler.associations import check_association
    from hpc_aidc.scheduler.slurm_cli import slurm_available
    from hpc_aidc.scheduler.submit import current_user, dry_run_script, submit_function, test_only

    user = current_user()
    folder = job_folder(site, user)
    params = submitit_parameters(resources, site, **render_kwargs)
    if opts["dry_run"]:
        script = dry_run_script(params, folder)
        # stdout carries the script and nothing else, so it can be piped to a file or to sbatch.
        click.echo(script, nl=False)
        if opts["test_only"] and slurm_available():
            check_association(user, resources.account, resources.qos)
            click.echo(f"hpcai: sbatch --test-only: {test_only(script)}", err=True)
        return
    check_association(user, resources.account, resources.qos)
    job = submit_function(fn, args, params, folder)
    if opts["as_json"] and not opts["wait"]:
        echo_json({"job_id": job.job_id, "folder": str(job.folder), "script": str(job.script),
                   "resources": describe(resources)})
    elif not opts["as_json"]:
        click.echo(f"Submitted job {job.job_id}: {describe(resources)}")
        click.echo(f"  job directory: {job.folder}")
        click.echo(f"  follow it:     hpcai logs {job.job_id} --follow")
    if opts["wait"]:
        _wait_and_report(job.job_id, job.folder, opts["as_json"])


def _wait_and_report(job_id: str, folder: Any, as_json: bool) -> None:
    from hpc_aidc.scheduler.wait import wait_for_job

    record = wait_for_job(job_id)
    if as_json:
        echo_json({**record.to_json(), "folder": str(folder)})
    else:
        click.echo(f"Job {job_id} {record.state} (exit {record.exit_code}) after {record.elapsed_s} s "
                   f"on {record.nodelist}")
    if record.state != "COMPLETED":
        sys.exit(1)


@submit.command("run", context_settings={"allow_interspersed_args": False})
@resource_options(default_job_name="hpcai-run")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(ctx: click.Context, /, command: tuple[str, ...], **opts: Any) -> None:
    """Run COMMAND in every task of a multi-node allocation (srun-launched).

    \b
    Example:
      hpcai submit run --nodes 2 --gpus-per-node 2 -A physics -- python train.py --lr 3e-4

    Arguments after `--` reach the command exactly as written: nothing is interpreted by a shell."""
    from hpc_aidc.node.run_command import run_command
    from hpc_aidc.spec.run import parse_run_job

    site = site_from(ctx)
    job = parse_run_job(resources_from(site, opts), command)
    submit_flow(site, job.resources, run_command, (list(job.command),), opts)
