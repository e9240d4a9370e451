"""`hpcai submit pipeline FILE.toml`: every stage an ordinary hpcai submission (data pack, train, infer,
run, report) through the same code as its own command, all submitted at once in dependency order and
chained by Slurm dependencies; `hpcai status PIPELINE` shows where it stands.

A stage's options are its command's long flags (`gpus_per_node = 2` for `--gpus-per-node 2`), checked
and converted by that command's own click parameters, with the same defaults."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from hpc_aidc.cli.common import echo_json, json_option, site_from
from hpc_aidc.errors import ConfigError, HpcAidcError
from hpc_aidc.site import SiteProfile
from hpc_aidc.spec.pipeline import OUTPUT_FIELDS, Pipeline, Stage, dependency_flag, load_pipeline, substitute

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
    return {**opts, "dry_run": False, "test_only": False, "wait": False, "as_json": False, "quiet": True}


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


@dataclass
class Outcome:
    jobs: list[str] = field(default_factory=list)      # every job the stage submitted
    wait_on: list[str] = field(default_factory=list)   # the ones later stages wait for
    output: str | None = None
    scripts: list[str] = field(default_factory=list)   # dry runs


def _submit_stage(site: SiteProfile, stage: Stage, opts: dict[str, Any], dependency: str | None,
                  site_path: str | None) -> Outcome:
    """One stage through its command's own path: with opts["dry_run"] it checks everything and renders the
    script(s); otherwise it submits with `dependency`."""
    from hpc_aidc.cli.submit import submit_run, submit_train

    dry = bool(opts["dry_run"])
    if stage.kind in ("run", "report", "train"):
        if stage.kind == "train":
            result = submit_train(site, opts, dependency=dependency)
        else:
            command = tuple(opts["command"]) if stage.kind == "run" else _report_command(opts["args"], site_path)
            result = submit_run(site, opts, command, dependency=dependency)
        if dry:
            return Outcome(scripts=[result])
        return Outcome([result.job_id], [result.job_id], str(result.folder))
    if stage.kind == "infer":
        from hpc_aidc.scheduler.infer_submit import InferRequest, prepare, submit

        prepared = prepare(site, InferRequest.from_options(opts), _say, dependency)
        if dry:
            return Outcome(scripts=prepared.scripts(), output=str(prepared.out))
        outcome = submit(site, prepared)
        ids = [str(a["job_id"]) for a in outcome["arrays"]]
        return Outcome(ids, ids, str(prepared.out))
    return _submit_pack(site, opts, dependency)


def _submit_pack(site: SiteProfile, opts: dict[str, Any], dependency: str | None) -> Outcome:
    from hpc_aidc.cli.data import pack_options
    from hpc_aidc.data.pack import check_pack_options, prepare_pack
    from hpc_aidc.scheduler.data_pack import pack_scripts, submit_pack_array

    pack = pack_options(opts)
    tasks = max(1, opts["array_tasks"])  # in a pipeline a pack always runs as a job, of one task at least
    where = {"account": opts["account"], "partition": opts["partition"], "time_limit": opts["time_limit"]}
    out = str(Path(pack.out).resolve())
    if opts["dry_run"]:
        check_pack_options(pack)  # prepare_pack writes the plan: it runs only when the stage is submitted
        return Outcome(scripts=pack_scripts(site, tasks, dependency=dependency, **where), output=out)
    plan = prepare_pack(pack)
    submitted = submit_pack_array(site, pack.out, min(tasks, plan.num_shards), engine=opts["engine"],
                                  dependency=dependency, **where)
    final = str(submitted["finalize_job"])
    return Outcome([str(submitted["array_job"]), final], [final], out)


def _report_command(args: list[str], site_path: str | None) -> tuple[str, ...]:
    site = ["--site", site_path] if site_path else []
    return (sys.executable, "-m", "hpc_aidc.cli.main", *site, "report", *args)


def _say(message: str) -> None:
    click.echo(f"hpcai: {message}", err=True)


def _placeholder_outputs(site: SiteProfile, pipeline: Pipeline, base: Path, known: Mapping[str, str]) -> dict[str, str]:
    """Outputs for checks and dry runs, before sbatch has numbered the jobs: a data pack's or an
    inference run's output is known from its options; a job directory is named by its job id."""
    from hpc_aidc.ids import current_user

    outputs = dict(known)
    for stage in pipeline.stages:
        if stage.name in outputs:
            continue
        if OUTPUT_FIELDS[stage.kind] == "out":
            value = stage.options.get("out" if stage.kind == "data-pack" else "output", "")
            outputs[stage.name] = str((base / str(value)).resolve())
        else:
            outputs[stage.name] = str(site.job_root / current_user() / f"<{stage.name} job id>")
    return outputs


def _resolved(stage: Stage, outputs: Mapping[str, str]) -> Stage:
    from dataclasses import replace
    from types import MappingProxyType

    return replace(stage, options=MappingProxyType({k: substitute(v, outputs) for k, v in stage.options.items()}))


@click.command("pipeline")
@click.argument("file", type=click.Path())
@click.option("--dry-run", is_flag=True, help="Check every stage and print each one's sbatch script(s); submit "
                                              "nothing.")
@click.option("--launch", metavar="STAGE", hidden=True,
              help="Inside a pipeline's launcher job (FILE: the pipeline's directory): submit STAGE, whose "
                   "inputs now exist, and the stages that wait for it.")
@json_option
@click.pass_context
def submit_pipeline(ctx: click.Context, file: str, dry_run: bool, launch: str | None, as_json: bool) -> None:
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
    from hpc_aidc.scheduler.pipeline import lock, new_entry, pipeline_dir, plan_resubmission, read_record, write_record

    site = site_from(ctx)
    site_path = (ctx.find_root().obj or {}).get("site_path")
    if launch:
        _launch(site, Path(file), launch, site_path)
        return
    path = Path(file).resolve()
    pipeline = load_pipeline(path, allowed_keys())
    base = path.parent
    folder = pipeline_dir(site, pipeline.name)
    plan = plan_resubmission(pipeline, read_record(folder))
    known = {name: str(e["output"]) for name, e in plan.reuse.items() if e.get("output")}
    outputs = _placeholder_outputs(site, pipeline, base, known)
    later = {n for n in plan.run if _needs_launcher(pipeline.stage(n), set(plan.run))}
    # Every stage checked (its command's own checks, and sbatch --test-only for single jobs) before any
    # is submitted: a mistake in the last stage submits nothing.
    options = {}
    for name in plan.run:
        stage = _resolved(pipeline.stage(name), outputs)
        options[name] = stage_options(stage, base)
        if name in later:
            from hpc_aidc.scheduler.infer_submit import InferRequest, check_request

            check_request(site, InferRequest.from_options(options[name]))  # its model and input come later
            _submit_launcher(site, stage, {**options[name], "dry_run": True, "test_only": True}, None, folder,
                             site_path)
        else:
            _submit_stage(site, stage, {**options[name], "dry_run": True, "test_only": True}, None, site_path)
    if dry_run:
        for name in plan.run:
            stage = _resolved(pipeline.stage(name), outputs)
            placeholder = dependency_flag(stage, {a: [f"<{a}>"] for a in stage.after if a in options})
            dry = {**options[name], "dry_run": True}
            if name in later:
                click.echo(f"# stage {name} ({stage.kind}): submitted by this launcher job once its inputs exist")
                click.echo(_submit_launcher(site, stage, dry, placeholder, folder, site_path), nl=False)
                continue
            for script in _submit_stage(site, stage, dry, placeholder, site_path).scripts:
                click.echo(f"# stage {name} ({stage.kind})")
                click.echo(script, nl=False)
        return
    stages = {**{n: {**e, "reused": True} for n, e in plan.reuse.items()},
              **{n: {**new_entry(pipeline.stage(n), [], [], None), "pending": True} for n in plan.run}}
    record = {"name": pipeline.name, "source": str(path), "base": str(base), "text": path.read_text(),
              "order": [s.name for s in pipeline.stages], "stages": stages}
    with lock(folder):  # a launcher job of this pipeline reads the record only once it is whole
        _advance(site, pipeline, base, stages, folder, site_path, None)
        write_record(folder, record)
    _report(pipeline, folder, stages, as_json)


def _needs_launcher(stage: Stage, unmade: set[str]) -> bool:
    """An inference run plans its shards and fingerprints its model when it is submitted: one that uses
    the output of a stage still to run is submitted by a small launcher job once that stage is done."""
    return stage.kind == "infer" and any(u in unmade for u in stage.uses)


def _submit_launcher(site: SiteProfile, stage: Stage, opts: Mapping[str, Any], dependency: str | None,
                     folder: Path, site_path: str | None) -> Any:
    """A one-CPU job (the stage's account, partition and QoS, no GPUs) that runs
    `hpcai submit pipeline FOLDER --launch STAGE` when what the stage waits for has ended."""
    from hpc_aidc.cli.submit import submit_run

    command = (sys.executable, "-m", "hpc_aidc.cli.main", *(["--site", site_path] if site_path else []),
               "submit", "pipeline", str(folder), "--launch", stage.name)
    run_opts = {**_commands()["run"].make_context("run", [], resilient_parsing=True).params,
                "account": opts["account"], "partition": opts["partition"], "qos": opts["qos"],
                "time_limit": "00:10:00", "job_name": f"hpcai-launch-{stage.name}", "dry_run": opts["dry_run"],
                "test_only": opts["test_only"], "quiet": True}
    return submit_run(site, run_opts, command, dependency=dependency)


def _launch(site: SiteProfile, folder: Path, name: str, site_path: str | None) -> None:
    """The launcher job's work: submit its stage (its upstream has ended, so no dependency) and every stage
    now ready after it, then record them."""
    import tomllib

    from hpc_aidc.scheduler.pipeline import lock, read_record, write_record
    from hpc_aidc.spec.pipeline import parse_pipeline

    folder = folder.resolve()
    with lock(folder):
        record = read_record(folder)
        if record is None or record["stages"].get(name, {}).get("pending") != "launcher":
            raise ConfigError(f"Expected stage {name!r} of the pipeline in {folder} to wait for its launcher job. Got "
                              "none waiting. Submit the pipeline with `hpcai submit pipeline FILE.toml`.")
        pipeline = parse_pipeline(tomllib.loads(record["text"]), record["source"], allowed_keys(), record["name"])
        submitted = _advance(site, pipeline, Path(record["base"]), record["stages"], folder, site_path, name)
        write_record(folder, record)
    click.echo(f"submitted {name} and what waits for it: jobs {', '.join(submitted)}")


def _advance(site: SiteProfile, pipeline: Pipeline, base: Path, entries: dict[str, dict[str, Any]], folder: Path,
             site_path: str | None, launching: str | None) -> list[str]:
    """Submit, in order, every stage still to submit whose upstream stages have jobs to wait for (or are
    complete from before), updating `entries`; returns the job ids. If sbatch refuses one, what this call
    submitted is cancelled (nothing is left half-submitted) and the error says why."""
    from hpc_aidc.scheduler.accounting import cancel_jobs

    outputs = {n: str(e["output"]) for n, e in entries.items() if e.get("output")}
    unmade = {n for n, e in entries.items() if not e.get("reused")}
    submitted: list[str] = []
    try:
        for stage in pipeline.stages:
            entry = entries[stage.name]
            due = entry.get("pending") is True or (stage.name == launching and entry.get("pending") == "launcher")
            if not due or not all(entries[a].get("reused") or entries[a]["wait_on"] for a in stage.after):
                continue
            waits = {a: entries[a]["wait_on"] for a in stage.after if not entries[a].get("reused")}
            # the launcher runs once its stage's upstream has ended: the stage itself need not wait
            dependency = None if stage.name == launching else dependency_flag(stage, waits)
            resolved = _resolved(stage, outputs)
            opts = stage_options(resolved, base)
            if stage.name != launching and _needs_launcher(stage, unmade):
                job = _submit_launcher(site, resolved, opts, dependency, folder, site_path)
                entry.update(jobs=[job.job_id], pending="launcher")
                submitted.append(job.job_id)
                continue
            outcome = _submit_stage(site, resolved, opts, dependency, site_path)
            submitted.extend(outcome.jobs)
            entry.update(jobs=[*entry["jobs"], *outcome.jobs], wait_on=outcome.wait_on, output=outcome.output,
                         pending=False)
            if outcome.output:
                outputs[stage.name] = outcome.output
    except HpcAidcError:
        if submitted:
            cancel_jobs(submitted)
        raise
    return submitted


def _report(pipeline: Pipeline, folder: Path, stages: Mapping[str, Mapping[str, Any]], as_json: bool) -> None:
    order = [s.name for s in pipeline.stages]
    rows = [{"stage": n, "kind": stages[n]["kind"], "jobs": stages[n]["jobs"], "reused": bool(stages[n]["reused"]),
             "launcher": stages[n].get("pending") == "launcher", "output": stages[n]["output"]} for n in order]
    if as_json:
        echo_json({"pipeline": pipeline.name, "folder": str(folder), "stages": rows})
        return
    reused = sum(r["reused"] for r in rows)
    click.echo(f"Submitted pipeline {pipeline.name}: {len(rows) - reused} stage(s), {reused} complete and skipped")
    for row in rows:
        if row["reused"]:
            what = "complete, skipped"
        elif row["launcher"]:
            what = f"launcher job {row['jobs'][0]} submits it once its inputs exist"
        elif row["jobs"]:
            what = f"job(s) {', '.join(row['jobs'])}"
        else:
            what = "submitted by a launcher job after an earlier stage"
        click.echo(f"  {row['stage']:16s} {row['kind']:10s} {what}")
    click.echo(f"  follow it: hpcai status {pipeline.name}")


def show_status(ctx: click.Context, name_or_dir: str, as_json: bool) -> None:
    """`hpcai status PIPELINE`: each stage's state, job ids, and why a stage did not run."""
    from hpc_aidc.render.table import format_table
    from hpc_aidc.scheduler.pipeline import find_pipeline, pipeline_status

    folder = find_pipeline(site_from(ctx), name_or_dir)
    record, rows = pipeline_status(folder)
    if as_json:
        echo_json({"pipeline": record["name"], "folder": str(folder), "source": record["source"],
                   "stages": [r.to_json() for r in rows]})
        return
    click.echo(f"pipeline {record['name']} ({folder})")
    click.echo(format_table(["STAGE", "KIND", "STATE", "JOBS", "NOTE"],
                            [(r.name, r.kind, r.state, ",".join(r.jobs) or "-", r.note) for r in rows]))
