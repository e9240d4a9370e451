"""`hpcai submit infer` (batch inference as job arrays), `hpcai infer status OUT`, `hpcai infer retry OUT`."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from hpc_aidc.cli.common import echo_json, json_option, print_dry_run, site_from

F = TypeVar("F", bound=Callable[..., Any])


def _infer_options(f: F) -> F:
    options = [
        click.option("--model", "model_src", help="A `submit train` job or checkpoint directory, or a local "
                                                  "Hugging Face model directory (never downloaded)."),
        click.option("--entry", help="A user function package.module:function(texts, task, params) -> outputs."),
        click.option("--input", "input_path", required=True, help="A packed Zarr store, .jsonl, .txt or .parquet."),
        click.option("--output", "output", required=True, help="Output directory (resumable: submit again to "
                                                                "finish a run)."),
        click.option("--task", type=click.Choice(["generate", "score", "embed"]), default="generate",
                     show_default=True),
        click.option("--field", default="text", show_default=True, help="JSONL/Parquet field holding the text."),
        click.option("--rows-per-shard", type=int, default=1024, show_default=True,
                     help="Input shard size for JSONL/text/Parquet (Zarr stores keep their own shards)."),
        click.option("--tasks", type=int, default=None, help="Array tasks [one per shard, at most 64]."),
        click.option("--gpus-per-task", type=int, default=None,
                     help="GPUs per array task, one process each [1 on GPU partitions, 0 elsewhere]."),
        click.option("--ntasks-per-node", type=int, default=None,
                     help="Processes per array task on CPU partitions [1]."),
        click.option("--cpus-per-task", "-c", type=int, default=None, help="CPUs per process [1]."),
        click.option("--max-concurrent", type=int, default=None, help="At most K array tasks at once (%K)."),
        click.option("--batch-size", type=int, default=None, help="Rows per batch [16]."),
        click.option("--batch-tokens", type=int, default=None, help="Padded tokens per batch instead of rows."),
        click.option("--max-new-tokens", type=int, default=None, help="generate: new tokens per row [64]."),
        click.option("--temperature", type=float, default=None, help="generate: 0 = greedy [0]."),
        click.option("--top-k", type=int, default=None, help="generate: sample from the k most likely [off]."),
        click.option("--top-p", type=float, default=None, help="generate: nucleus sampling [1.0]."),
        click.option("--seed", type=int, default=None, help="generate: sampling seed (per row) [0]."),
        click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default=None,
                     help="auto: bf16 on GPUs that do it, fp32 on CPU."),
        click.option("--max-input-tokens", type=int, default=None, help="Longer rows are errors [model context]."),
        click.option("--normalize/--no-normalize", default=None,
                     help="embed: unit-length vectors [as the model says: a sentence-transformers Normalize "
                          "module; off otherwise]."),
        click.option("--max-error-rate", type=float, default=None, help="Stop a task above this share of bad "
                                                                        "rows [0.1]."),
        click.option("--output-format", type=click.Choice(["jsonl", "parquet"]), default="jsonl",
                     show_default=True),
        click.option("--account", "-A", default=None, help="Slurm account (project) to charge."),
        click.option("--partition", "-p", default=None, help="Partition [site default]."),
        click.option("--qos", "-q", default=None, help="Quality of service [site default]."),
        click.option("--time", "-t", "time_limit", default=None, help="Time limit per array task [site default]."),
        click.option("--job-name", "-J", default="hpcai-infer", show_default=True),
        click.option("--dry-run", is_flag=True, help="Print the sbatch script(s); write and submit nothing."),
        click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.command("infer")
@_infer_options
@click.pass_context
def submit_infer(ctx: click.Context, /, **opts: Any) -> None:
    """Batch offline inference (generate, score, embed) as a Slurm job array that resumes where it stopped.

    \b
    Example:
      hpcai submit infer --model /jobs/alice/42 --input prompts.jsonl --output out/ --tasks 8 -A physics
      hpcai infer status out/          # shards done / failed / running, rows/s, ETA
      hpcai infer retry out/           # resubmit only missing or failed shards

    Every output shard is written whole and then recorded as complete, keyed by the input shard's
    checksum, the model's fingerprint and the parameters; a bad row is recorded with its error and the
    run goes on; on Slurm's warning signal or after a requeue a task resumes at its last flushed batch."""
    from hpc_aidc.scheduler.infer_submit import InferRequest, prepare

    site = site_from(ctx)
    prepared = prepare(site, InferRequest.from_options(opts), _progress)
    outcome = _deliver(site, prepared, opts["dry_run"], opts["as_json"])
    if outcome is None:
        return
    if opts["as_json"]:
        echo_json(outcome)
        return
    if outcome.get("nothing_to_do"):
        click.echo(f"Nothing to submit: all {outcome['shards']} shards of {outcome['output']} are complete.")
        return
    for array in outcome["arrays"]:
        click.echo(f"Submitted array job {array['job_id']}: tasks --array={array['array']} "
                   f"(offset {array['offset']})")
    click.echo(f"  {outcome['shards']} input shards, {outcome['rows']} rows, {outcome['tasks']} tasks; "
               f"output {outcome['output']}")
    click.echo(f"  follow it: hpcai infer status {outcome['output']}")


def _deliver(site: Any, prepared: Any, dry_run: bool, as_json: bool) -> dict[str, Any] | None:
    """Print the scripts (a dry run: None), or submit what is left to submit; the run's summary."""
    from hpc_aidc.ids import current_user
    from hpc_aidc.scheduler.submit import submit

    request = prepared.request(current_user(), time.time())
    if dry_run:
        print_dry_run(site, request, as_json=as_json)
        return None
    if not prepared.windows:
        return dict(prepared.summary())
    return dict(prepared.summary(submit(site, request).job_ids))


def _progress(message: str) -> None:
    click.echo(f"hpcai: {message}", err=True)


@click.group()
def infer() -> None:
    """Follow and finish batch-inference runs (`hpcai submit infer`)."""


@infer.command()
@click.argument("output", type=click.Path(file_okay=False))
@json_option
def status(output: str, as_json: bool) -> None:
    """Shards done / failed / running / pending, rows, error rows, throughput and ETA of a run."""
    from hpc_aidc.scheduler.infer_submit import run_progress

    plan, prog = run_progress(Path(output))
    if as_json:
        echo_json({"output": str(Path(output).resolve()), "task": plan.params.task, **prog.to_json()})
        return
    for line in render_progress(plan, prog, output):
        click.echo(line)


def render_progress(plan: Any, p: Any, output: str) -> list[str]:
    from hpc_aidc.render.progress import bar

    width = 30
    lines = [
        f"{plan.params.task} with {plan.model.kind} model {plan.model.path}",
        f"{bar(p.rows_done / p.rows if p.rows else 1.0, width)} {p.rows_done}/{p.rows} rows "
        f"({p.error_rows} error rows)",
        f"shards: {p.done} done, {p.running} running, {p.pending} pending, {p.failed} failed, "
        f"{p.missing} missing (of {p.shards})",
    ]
    if p.rows_per_s:
        eta = "-" if p.eta_s is None else time.strftime("%H:%M:%S", time.gmtime(p.eta_s))
        lines.append(f"throughput: {p.rows_per_s:,.1f} rows/s, {p.tokens_per_s or 0:,.1f} tokens/s, ETA {eta}")
    for k, err in sorted(p.errors.items())[:5]:
        lines.append(f"failed shard {k}: {err[:200]}")
    if p.retryable and not p.running and not p.pending:
        lines.append(f"run `hpcai infer retry {output}` to finish the {len(p.retryable)} missing or failed shards")
    return lines


@infer.command()
@click.argument("output", type=click.Path(file_okay=False))
@click.option("--max-concurrent", type=int, default=None, help="At most K array tasks at once (%K).")
@click.option("--dry-run", is_flag=True, help="Print the sbatch script(s); submit nothing.")
@json_option
@click.pass_context
def retry(ctx: click.Context, output: str, max_concurrent: int | None, dry_run: bool, as_json: bool) -> None:
    """Resubmit only the shards that are missing or failed (never one whose task is pending or running),
    as arrays with a compact --array list of the tasks that hold them."""
    from hpc_aidc.scheduler.infer_submit import retry_run
    from hpc_aidc.spec.infer import compact_ranges

    site = site_from(ctx)
    prepared, shards = retry_run(site, Path(output), max_concurrent)
    submitted = _deliver(site, prepared, dry_run, as_json)
    if submitted is None:
        return
    outcome = {**submitted, "retry_shards": shards, "shard_list": compact_ranges(shards),
               "task_list": compact_ranges([offset + t for offset, idx in prepared.windows for t in idx])}
    if as_json:
        echo_json(outcome)
        return
    for array in outcome["arrays"]:
        click.echo(f"Resubmitted array job {array['job_id']}: --array={array['array']} (offset {array['offset']})")
    click.echo(f"  {len(outcome['retry_shards'])} shards to finish: {outcome['shard_list']} "
               f"(tasks {outcome['task_list']})")

