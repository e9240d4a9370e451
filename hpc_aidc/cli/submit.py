"""`hpcai submit run` and `hpcai submit train`: flags into a JobRequest (scheduler/), dry-run or submit it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from hpc_aidc.cli.common import echo_json, print_dry_run, site_from
from hpc_aidc.cli.options import resource_options
from hpc_aidc.cli.train_options import load_config, train_options
from hpc_aidc.scheduler.request import JobRequest
from hpc_aidc.site_profile import SiteProfile
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


def deliver(site: SiteProfile, request: JobRequest, resources: Resources, opts: dict[str, Any]) -> None:
    """The tail of `submit run` and `submit train`: a dry run, or the submission and its report (and the
    wait for its end with --wait)."""
    from hpc_aidc.render.sbatch import describe
    from hpc_aidc.scheduler.submit import submit as submit_request

    if opts["dry_run"]:
        print_dry_run(site, request, opts["test_only"], opts["as_json"])
        return
    done = submit_request(site, request)
    job_id = done.job_ids[0]
    folder = Path(done.resolve(request.output or ""))
    script = folder / f"{job_id}_submission.sh"
    if opts["as_json"] and not opts["wait"]:
        echo_json({"job_id": job_id, "folder": str(folder), "script": str(script), "resources": describe(resources)})
    elif not opts["as_json"]:
        click.echo(f"Submitted job {job_id}: {describe(resources)}")
        click.echo(f"  job directory: {folder}")
        click.echo(f"  follow it:     hpcai logs {job_id} --follow")
    if opts["wait"]:
        _wait_and_report(job_id, folder, opts["as_json"])


def _wait_and_report(job_id: str, folder: Path, as_json: bool) -> None:
    from hpc_aidc.scheduler.wait import wait_for_job

    # submitit writes the task's result when it ends: Slurm is asked then, not only on its steady tick
    record = wait_for_job(job_id, ended_hint=lambda: (folder / f"{job_id}_0_result.pkl").exists())
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
    site = site_from(ctx)
    request, resources = run_request(site, opts, command)
    deliver(site, request, resources, opts)


def run_request(site: SiteProfile, opts: dict[str, Any], command: tuple[str, ...], *,
                audit_tag: str = "hpcai-submit-run", dependency: str | None = None) -> tuple[JobRequest, Resources]:
    """`hpcai submit run`'s request from its options (also a pipeline's run and report stages)."""
    from hpc_aidc.ids import current_user
    from hpc_aidc.scheduler.call_job import plan_run
    from hpc_aidc.spec.run import parse_run_job

    job = parse_run_job(resources_from(site, opts), command)
    request = plan_run(site, job.resources, job.command, user=current_user(), audit_tag=audit_tag,
                       time_given=opts.get("time_limit") is not None, dependency=dependency)
    return request, job.resources


@submit.command("train")
@resource_options(default_job_name="hpcai-train")
@train_options
@click.option("--launcher", type=click.Choice(["srun", "mpirun"]), default="srun", show_default=True,
              help="How ranks start: one srun task each, or the site's mpirun inside the allocation (mpi4py).")
@click.pass_context
def train(ctx: click.Context, /, **opts: Any) -> None:
    """Multi-node DeepSpeed training (ZeRO 0-3, offload, pipeline) from one config file.

    \b
    Example:
      hpcai submit train --nodes 8 --gpus-per-node 4 -A physics --config gpt.toml --zero 2

    Every rank is an srun task; the job checkpoints every K steps and on Slurm's warning signal,
    requeues itself, and resumes from its latest complete checkpoint."""
    site = site_from(ctx)
    request, resources = train_request(site, opts)
    deliver(site, request, resources, opts)


def train_request(site: SiteProfile, opts: dict[str, Any], *, audit_tag: str = "hpcai-submit-train",
                  dependency: str | None = None, notes: bool = True) -> tuple[JobRequest, Resources]:
    """`hpcai submit train`'s request from its options (also a pipeline's train stage), its plan and warnings
    said on stderr (`notes`: a pipeline checks its stages quietly first, then says them as it submits)."""
    from hpc_aidc.formats.checkpoint_layout import space_warning
    from hpc_aidc.ids import current_user
    from hpc_aidc.scheduler.train_job import plan_train, prepare_train

    user = current_user()
    user_dir = site.job_root / user
    job = prepare_train(site, resources_from(site, opts), load_config(opts), opts["config_path"], user_dir)
    if notes:
        for note in job.notes:
            click.echo(note, err=True)
        short = space_warning(user_dir, job.config)  # a warning: space may be freed meanwhile
        if short:
            click.echo(f"hpcai: warning: {short}", err=True)
    request = plan_train(site, job, launcher=opts["launcher"], user=user, audit_tag=audit_tag,
                         time_given=opts.get("time_limit") is not None, dependency=dependency)
    return request, job.resources
