"""`hpcai env diff JOB1 JOB2`: what changed between two jobs' environments (packages, driver/CUDA/NCCL,
Python, git commit, nodes and GPUs, config keys), from the environment.json each job wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from hpc_aidc.cli.common import echo_json, json_option, site_from
from hpc_aidc.errors import AccessError, SpecError


@click.group()
def env() -> None:
    """Job environments (environment.json): compare two jobs."""


def job_environment(ctx: click.Context, job_id: str) -> tuple[str, dict[str, Any]]:
    """(the job's id as Slurm knows it, its environment record) from the job directory."""
    from hpc_aidc.formats.environment_record import ENV_FILE, INFER_ENV_DIR, read_environment
    from hpc_aidc.scheduler.accounting import job_record
    from hpc_aidc.scheduler.infer_submit import infer_output_of

    record = job_record(job_id)
    user_dir: Path = site_from(ctx).job_root / record.user
    folder, name = user_dir / record.job_id, ENV_FILE
    out = infer_output_of(user_dir, record.job_id)
    if out is not None:  # a batch-inference array task
        folder, name = out / INFER_ENV_DIR, f"{record.job_id}.json"
    try:
        env_record = read_environment(folder, name)
    except PermissionError:
        raise AccessError(f"Expected read access to {folder / name}. Got permission denied. Job "
                          f"environments are readable by the job's user; ask {record.user} for it.") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"Expected {folder / name} to be a JSON record. Got {type(exc).__name__}: {exc}. "
                        "It was not written by hpcai, or was damaged.") from None
    if env_record is None:
        raise SpecError(f"Expected {folder / name} (job {record.job_id}, {record.state}). Got no such file. "
                        "It is written when the job's first task starts, by jobs submitted with hpcai.")
    return record.job_id, env_record


@env.command("diff")
@click.argument("job_a")
@click.argument("job_b")
@json_option
@click.pass_context
def diff(ctx: click.Context, job_a: str, job_b: str, as_json: bool) -> None:
    """Show what differs between the environments of JOB_A and JOB_B (variables are not compared).

    \b
    Example:
      hpcai env diff 1234 1301
      packages.torch   2.12.0 -> 2.13.0"""
    from hpc_aidc.render.environment import diff_lines, diff_records

    id_a, a = job_environment(ctx, job_a)
    id_b, b = job_environment(ctx, job_b)
    changes = diff_records(a, b)
    if as_json:
        echo_json({"a": id_a, "b": id_b, "changes": changes})
        return
    for line in diff_lines(changes, id_a, id_b):
        click.echo(line)
