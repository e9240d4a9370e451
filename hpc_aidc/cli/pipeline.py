"""`hpcai submit pipeline FILE.toml`: every stage an ordinary hpcai submission (data pack, train, infer,
run, report) through the same code as its own command, all submitted at once in dependency order and
chained by Slurm dependencies; `hpcai status PIPELINE` shows where it stands.

A stage's options are its command's long flags (`gpus_per_node = 2` for `--gpus-per-node 2`), checked
and converted by that command's own click parameters, with the same defaults."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from hpc_aidc.cli.common import echo_json, json_option, site_from
from hpc_aidc.errors import ConfigError
from hpc_aidc.scheduler.pipeline import PipelineRecord
from hpc_aidc.scheduler.pipeline_engine import Planners
from hpc_aidc.scheduler.request import JobRequest
from hpc_aidc.site_profile import SiteProfile
from hpc_aidc.spec.pipeline import Stage, load_pipeline

# Every stage's jobs carry it: the audit log tells pipeline jobs from ones submitted by hand.
AUDIT_TAG = "hpcai-submit-pipeline"
# Flags of the submit commands that belong to the pipeline as a whole, never to one stage.
_WHOLE = {"dry_run", "test_only", "wait", "as_json"}
# Paths in a stage's options are relative to the pipeline file, as a shell user's are to their cwd.
_PATH_KEYS = {"config_path", "data_path", "input_path", "output", "model_src", "inputs", "out", "labels"}


def _commands() -> dict[str, click.Command]:
    from hpc_aidc.cli.data import pack
    from hpc_aidc.cli.infer import submit_infer
    from hpc_aidc.cli.submit import run, train

    return {"run": run, "train": train, "infer": submit_infer, "data-pack": pack, "report": run}


def _key(param: click.Parameter) -> str:
    """A parameter's name in a pipeline file: its long flag without dashes (`gpus_per_node`), or its
    argument name (`inputs`; `command` for run)."""
    longs = [o for o in param.opts if o.startswith("--")]
    return longs[0][2:].replace("-", "_") if longs else str(param.name)


def _params(kind: str) -> dict[str, click.Parameter]:
    params = {_key(p): p for p in _commands()[kind].params if p.name not in _WHOLE}
    if kind == "report":  # a report stage runs `hpcai report ARGS` with run's resources
        params.pop("command")
    return params


def allowed_keys() -> dict[str, set[str]]:
    keys = {kind: set(_params(kind)) for kind in _commands()}
    keys["report"].add("args")
    return keys


def stage_options(stage: Stage, base: Path) -> dict[str, Any]:
    """The stage's options as its command's callback receives them: every parameter's default, then the
    file's values converted and checked by the parameter's own type."""
    command = _commands()[stage.kind]
    params = _params(stage.kind)
    # the command's own defaults, processed as its callback would receive them
    ctx = command.make_context(stage.kind, [], resilient_parsing=True)
    opts: dict[str, Any] = dict(ctx.params)
    for key, value in stage.options.items():
        if key == "args":
            opts["args"] = _strings(value, stage, key)
            continue
        param = params[key]
        try:
            opts[str(param.name)] = param.type_cast_value(ctx, value)
        except click.BadParameter as exc:
            raise ConfigError(f"Expected a valid {key} in [stage.{stage.name}]. Got {value!r}: "
                              f"{exc.format_message()} Fix the pipeline file.") from None
    for name in _PATH_KEYS & set(opts):
        opts[name] = _relative_to(opts[name], base)
    missing = [_key(p) for p in command.params if p.required and p.name not in _WHOLE and opts.get(str(p.name)) in
               (None, ())]
    # run's command and report's args are optional to click (nargs=-1), never to a stage
    wanted = {"run": "command", "report": "args"}.get(stage.kind)
    if wanted and not opts.get(wanted):
        missing.append(wanted)
    if missing:
        raise ConfigError(f"Expected {', '.join(missing)} in [stage.{stage.name}] (kind {stage.kind}). Got none. "
                          "Add them to the pipeline file.")
    return opts


def _strings(value: Any, stage: Stage, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"Expected {key} in [stage.{stage.name}] to be a list of strings. Got {value!r} instead. "
                          f'Write {key} = ["usage", "--since", "now-1days"].')
    return value


def _relative_to(value: Any, base: Path) -> Any:
    if isinstance(value, str) and value and not value.startswith("{stage.") and not Path(value).is_absolute():
        return str(base / value)
    if isinstance(value, tuple):
        return tuple(_relative_to(v, base) for v in value)
    return value


def planners(site: SiteProfile, site_path: str | None, folder: Path) -> Planners:
    """How each stage of the pipeline in `folder` becomes its command's JobRequest, for the engine
    (scheduler.pipeline_engine)."""
    return Planners(stage=lambda stage, base, dependency, dry: _stage_request(site, stage, base, dependency, dry,
                                                                              site_path),
                    launcher=lambda stage, base, dependency, dry: _launcher_request(site, stage, base, dependency,
                                                                                    site_path, folder),
                    early_check=lambda stage, base: _early_check(site, stage, base))


def _stage_request(site: SiteProfile, stage: Stage, base: Path, dependency: str | None, dry: bool,
                   site_path: str | None) -> JobRequest:
    """A stage through its command's own planner. `dry`: check and render only (a pipeline says a train
    stage's plan once, as it submits)."""
    from hpc_aidc.cli.submit import run_request, train_request

    opts = stage_options(stage, base)
    if stage.kind == "train":
        return train_request(site, opts, audit_tag=AUDIT_TAG, dependency=dependency, notes=not dry)[0]
    if stage.kind in ("run", "report"):
        command = tuple(opts["command"]) if stage.kind == "run" else _report_command(opts["args"], site_path)
        return run_request(site, opts, command, audit_tag=AUDIT_TAG, dependency=dependency)[0]
    from hpc_aidc.ids import current_user

    if stage.kind == "infer":
        from hpc_aidc.scheduler.infer_submit import InferRequest, prepare

        return prepare(site, InferRequest.from_options(opts), _say, dependency).request(current_user(), time.time())
    from hpc_aidc.cli.data import pack_options
    from hpc_aidc.data.pack import check_pack_options, prepare_pack
    from hpc_aidc.scheduler.data_pack import plan_pack

    pack = pack_options(opts)
    tasks = max(1, opts["array_tasks"])  # in a pipeline a pack always runs as a job, of one task at least
    if dry:
        check_pack_options(pack)  # prepare_pack writes the plan: it runs only when the stage is submitted
    else:
        tasks = min(tasks, prepare_pack(pack).num_shards)
    return plan_pack(site, pack.out, tasks, user=current_user(), engine=opts["engine"], account=opts["account"],
                     partition=opts["partition"], time_limit=opts["time_limit"], dependency=dependency)


def _launcher_request(site: SiteProfile, stage: Stage, base: Path, dependency: str | None,
                      site_path: str | None, folder: Path) -> JobRequest:
    """A one-CPU job (the stage's account, partition and QoS, no GPUs) that runs the launcher entry point
    for the stage once what it waits for has ended."""
    from hpc_aidc.cli.submit import run_request

    opts = stage_options(stage, base)
    command = (sys.executable, "-m", "hpc_aidc.cli.pipeline_launch", *(["--site", site_path] if site_path else []),
               str(folder), stage.name)
    run_opts = {**_commands()["run"].make_context("run", [], resilient_parsing=True).params,
                "account": opts["account"], "partition": opts["partition"], "qos": opts["qos"],
                "time_limit": "00:10:00", "job_name": f"hpcai-launch-{stage.name}"}
    return run_request(site, run_opts, command, audit_tag=AUDIT_TAG, dependency=dependency)[0]


def _early_check(site: SiteProfile, stage: Stage, base: Path) -> None:
    from hpc_aidc.scheduler.infer_submit import InferRequest, check_infer_options

    check_infer_options(site, InferRequest.from_options(stage_options(stage, base)))


def _report_command(args: list[str], site_path: str | None) -> tuple[str, ...]:
    site = ["--site", site_path] if site_path else []
    return (sys.executable, "-m", "hpc_aidc.cli.main", *site, "report", *args)


def _say(message: str) -> None:
    click.echo(f"hpcai: {message}", err=True)


@click.command("pipeline")
@click.argument("file", type=click.Path())
@click.option("--dry-run", is_flag=True, help="Check every stage and print each one's sbatch script(s); submit "
                                              "nothing.")
@json_option
@click.pass_context
def submit_pipeline(ctx: click.Context, file: str, dry_run: bool, as_json: bool) -> None:
    """Submit a pipeline of stages (data-pack, train, infer, run, report) chained by Slurm dependencies.

    \b
    Example (tiny.toml):
      [stage.pack]
      kind = "data-pack"
      inputs = ["corpus.jsonl"]
      out = "corpus.zarr"
      [stage.train]
      kind = "train"
      after = ["pack"]
      config = "train.toml"
      data = "{stage.pack.out}"
      [stage.eval]
      kind = "run"
      after = ["train"]
      command = ["python", "eval.py", "{stage.train.job_dir}"]

    Every stage is checked before any is submitted; all are submitted at once (afterok by default,
    `dependency = "afterany"` for a stage that runs however its upstream ended), and Slurm cancels what
    waits on a failed stage. Submitting the same pipeline again skips stages whose outputs are complete
    and runs the rest. Follow it with `hpcai status NAME`."""
    from hpc_aidc.scheduler import pipeline_engine as engine
    from hpc_aidc.scheduler.pipeline import pipeline_dir

    site = site_from(ctx)
    site_path = (ctx.find_root().obj or {}).get("site_path")
    path = Path(file).resolve()
    pipeline = load_pipeline(path, allowed_keys())
    folder = pipeline_dir(site, pipeline.name)
    ways = planners(site, site_path, folder)
    prepared = engine.prepare(site, pipeline, path, folder, ways)
    if dry_run:
        for header, script in engine.dry_run_scripts(prepared, ways):
            click.echo(header)
            click.echo(script, nl=False)
        return
    record = engine.submit_pipeline(site, prepared, ways)
    _report(record, folder, as_json)


def _report(record: PipelineRecord, folder: Path, as_json: bool) -> None:
    from hpc_aidc.scheduler.pipeline import LAUNCHER, REUSED

    entries = [(name, record.stages[name]) for name in record.order]
    if as_json:
        echo_json({"pipeline": record.name, "folder": str(folder), "stages": [
            {"stage": n, "kind": e.kind, "jobs": e.jobs, "reused": e.state == REUSED, "launcher": e.state == LAUNCHER,
             "output": e.output} for n, e in entries]})
        return
    reused = sum(e.state == REUSED for _, e in entries)
    click.echo(f"Submitted pipeline {record.name}: {len(entries) - reused} stage(s), {reused} complete and skipped")
    for name, e in entries:
        if e.state == REUSED:
            what = "complete, skipped"
        elif e.state == LAUNCHER:
            what = f"launcher job {e.jobs[0]} submits it once its inputs exist"
        elif e.jobs:
            what = f"job(s) {', '.join(e.jobs)}"
        else:
            what = "submitted by a launcher job after an earlier stage"
        click.echo(f"  {name:16s} {e.kind:10s} {what}")
    click.echo(f"  follow it: hpcai status {record.name}")


def show_status(ctx: click.Context, name_or_dir: str, as_json: bool) -> None:
    """`hpcai status PIPELINE`: each stage's state, job ids, and why a stage did not run."""
    from hpc_aidc.render.table import format_table
    from hpc_aidc.scheduler.pipeline import find_pipeline, pipeline_status

    folder = find_pipeline(site_from(ctx), name_or_dir)
    record, rows = pipeline_status(folder)
    if as_json:
        echo_json({"pipeline": record.name, "folder": str(folder), "source": record.source,
                   "stages": [r.to_json() for r in rows]})
        return
    click.echo(f"pipeline {record.name} ({folder})")
    click.echo(format_table(["STAGE", "KIND", "STATE", "JOBS", "NOTE"],
                            [(r.name, r.kind, r.state, ",".join(r.jobs) or "-", r.note) for r in rows]))
