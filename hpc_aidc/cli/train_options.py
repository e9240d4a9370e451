"""Flags shared by `hpcai submit train` and `hpcai plan`: they override the config file's [train]."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

OVERRIDES = ("zero", "offload", "pipeline_stages", "precision", "micro_batch", "grad_accum", "max_steps", "entry",
             "target_loss")


def train_options(f: F) -> F:
    options = [
        click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
                     help="Training config (TOML): model, data, optimizer, schedule, checkpointing."),
        click.option("--zero", type=int, default=None, help="ZeRO stage 0-3."),
        click.option("--offload", default=None, help="none | optimizer | optimizer+params (ZeRO offload to CPU)."),
        click.option("--pipeline-stages", type=int, default=None, help="Pipeline-parallel stages (built-in model)."),
        click.option("--precision", default=None, help="bf16 | fp16 | fp32."),
        click.option("--micro-batch", type=int, default=None, help="Micro-batch per rank."),
        click.option("--grad-accum", type=int, default=None, help="Gradient accumulation steps."),
        click.option("--max-steps", type=int, default=None, help="Optimizer steps in total."),
        click.option("--entry", default=None, help="User model: package.module:function (returns a model)."),
        click.option("--target-loss", type=float, default=None,
                     help="Stop once the validation loss ([eval]; else the training loss) is at or below this."),
        click.option("--data", "data_path", default=None, type=click.Path(),
                     help="Train on this packed Zarr store (hpcai data pack) instead of the config's [data]."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def overrides_from(opts: dict[str, Any]) -> dict[str, Any]:
    return {key: opts[key] for key in OVERRIDES if opts.get(key) is not None}


def load_config(opts: dict[str, Any]) -> Any:
    from hpc_aidc.spec.train import load_train_config

    data_path = opts.get("data_path")
    if data_path:
        import os

        data_path = os.path.abspath(data_path)  # the job reads it from another working directory
    return load_train_config(opts["config_path"], overrides_from(opts), data_path)
