"""`hpcai submit sweep` (a hyperparameter sweep as one job array) and `hpcai sweep show ID`."""

from __future__ import annotations

from typing import Any

import click

from hpc_aidc.cli.common import echo_json, site_from
from hpc_aidc.cli.options import resource_options
from hpc_aidc.cli.train_options import overrides_from, train_options
from hpc_aidc.errors import SpecError, expected


@click.command("sweep")
@resource_options(default_job_name="hpcai-sweep")
@train_options
@click.option("--grid", "grid", multiple=True, metavar="KEY=VALUES",
              help="A config key and the values to try: 'optimizer.lr=[1e-3,3e-3]'; with --random also "
                   "'optimizer.lr=loguniform(1e-4,1e-2)' (uniform, loguniform, randint). Repeat per key.")
@click.option("--random", "random_trials", type=int, default=None,
              help="Draw N trials (distinct grid points, or from the distributions) instead of the whole grid.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --random's draw.")
@click.option("--max-concurrent", type=int, default=None, help="At most K trials run at once (--array=...%K).")
@click.pass_context
def submit_sweep(ctx: click.Context, /, **opts: Any) -> None:
    """A hyperparameter sweep of `hpcai submit train`: one Slurm job array, one task per trial.

    \b
    Example:
      hpcai submit sweep --config base.toml -A physics --nodes 2 \\
          --grid 'optimizer.lr=[1e-3,3e-3]' --grid 'train.micro_batch=[4,8]' --max-concurrent 2
      hpcai sweep show 1234            # one row per trial; the best one marked

    Every trial's config (the base config with its overrides and the flags) is validated before anything
    is submitted. Each trial trains in its own job directory (<job root>/<user>/<array job>_<trial>) with its
    own checkpoints, and requeues and resumes like `hpcai submit train`."""
    import os
    import time

    from hpc_aidc.cli.common import print_dry_run
    from hpc_aidc.cli.submit import resources_from
    from hpc_aidc.ids import current_user
    from hpc_aidc.scheduler.admission import job_parameters, policy_for
    from hpc_aidc.scheduler.submit import submit
    from hpc_aidc.scheduler.sweep import (
        AUDIT_TAG,
        SweepPlan,
        Trial,
        check_array_size,
        new_sweep_folder,
        submitted_summary,
        trial_folder_setup,
    )
    from hpc_aidc.scheduler.train_job import prepare_train
    from hpc_aidc.spec.sweep import apply_overrides, describe, parse_sweep, trials
    from hpc_aidc.spec.train import parse_train_config, read_config_document

    if opts["wait"]:
        raise SpecError(expected("no --wait with a sweep", "--wait", "Follow it with `hpcai sweep show ID`."))
    spec = parse_sweep(opts["grid"], opts["random_trials"], opts["seed"], opts["max_concurrent"])
    flags = overrides_from(opts)
    clash = sorted(a.key for a in spec.axes if a.key.startswith("train.") and a.key[len("train."):] in flags)
    if clash:
        raise SpecError(expected("each train key from a flag or a --grid, not both", ", ".join(clash),
                                 "Drop the flag or the --grid."))
    site = site_from(ctx)
    user = current_user()
    user_dir = site.job_root / user
    resources = resources_from(site, opts)
    data_path = os.path.abspath(opts["data_path"]) if opts["data_path"] else None
    document = read_config_document(opts["config_path"])
    chosen: list[Trial] = []
    prepared = []
    for index, overrides in enumerate(trials(spec)):
        source = f"{opts['config_path']} (trial {index}: {describe(overrides)})"
        config = parse_train_config(apply_overrides(document, overrides, source), source=source, overrides=flags,
                                    data_path=data_path)
        job = prepare_train(site, resources, config, opts["config_path"], user_dir)
        prepared.append(job)
        env = {k: v.replace("{user}", user) for k, v in job.env.items()}
        chosen.append(Trial(index, overrides, job.config, env))
    check_array_size(len(chosen))
    # One array, one request for all trials: the largest memory plan and warning grace among them.
    largest = max(prepared, key=lambda j: _mem_mb(j.resources.mem))
    for note in dict.fromkeys(note for j in prepared for note in j.notes):
        click.echo(note, err=True)
    parameters = job_parameters(site, largest.resources, audit_tag=AUDIT_TAG,
                                extra_env={"PYTHONUNBUFFERED": "1"}, extra_setup=[trial_folder_setup(user_dir)],
                                srun_args=largest.srun_args, additional={"requeue": True},
                                signal_delay_s=max(j.signal_delay_s for j in prepared))
    plan = SweepPlan(new_sweep_folder(user_dir), user_dir, os.path.abspath(opts["config_path"]), spec,
                     tuple(chosen), largest.resources, parameters,
                     policy_for(largest.resources, user, time_given=opts["time_limit"] is not None))
    request = plan.request(time.time())
    if opts["dry_run"]:
        print_dry_run(site, request, opts["test_only"], opts["as_json"])
        return
    result = submitted_summary(plan, submit(site, request).job_ids[0])
    if opts["as_json"]:
        echo_json(result)
        return
    click.echo(f"Submitted sweep {result['sweep_id']}: {result['trials']} trials as array {result['array']}")
    click.echo(f"  sweep directory: {result['folder']}")
    click.echo(f"  follow it:       hpcai sweep show {result['sweep_id']}")


def _mem_mb(mem: str | None) -> float:
    """--mem as MiB for comparison; "0" (all of the node) is the most."""
    if mem is None:
        return 0.0
    return float("inf") if mem == "0" else float(mem.rstrip("M"))


@click.group()
def sweep() -> None:
    """Follow hyperparameter sweeps (`hpcai submit sweep`)."""


@sweep.command()
@click.argument("sweep_id")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (one row per trial).")
@click.pass_context
def show(ctx: click.Context, sweep_id: str, as_json: bool, as_csv: bool) -> None:
    """One row per trial: overrides, state, final and best validation loss, tokens/s, GPU-hours, kWh and
    loss drop per kWh; the best completed trial is marked with *."""
    from hpc_aidc.ids import current_user
    from hpc_aidc.render.sweep import sweep_csv, sweep_table, trial_rows
    from hpc_aidc.scheduler.sweep import sweep_results

    if as_json and as_csv:
        raise SpecError(expected("one of --json or --csv", "both", "Pick one."))
    site = site_from(ctx)
    record, results = sweep_results(site.job_root / current_user(), site.energy_store, sweep_id)
    rows = trial_rows(results)
    if as_json:
        echo_json({"sweep_id": record["array_job_id"], "folder": record["folder"], "config": record["config"],
                   "grid": record["grid"], "random": record["random"], "seed": record["seed"], "trials": rows})
    elif as_csv:
        click.echo(sweep_csv(rows), nl=False)
    else:
        click.echo(f"Sweep {record['array_job_id']}  {record['config']}  {' '.join(record['grid'])}")
        click.echo(sweep_table(rows))
