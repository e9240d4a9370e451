"""`hpcai plan`: per-GPU memory of a training config for ZeRO 0-3 with and without offload."""

from __future__ import annotations

from typing import Any

import click

from hpc_aidc.cli.common import echo_json, json_option, site_from
from hpc_aidc.cli.train_options import load_config, train_options


@click.command()
@train_options
@click.option("--nodes", "-N", type=int, default=1, show_default=True, help="Nodes to plan for.")
@click.option("--gpus-per-node", "-G", type=int, default=None, help="GPUs per node [partition's count].")
@click.option("--partition", "-p", default=None, help="Partition whose GPUs to plan for [site default].")
@json_option
@click.pass_context
def plan(ctx: click.Context, /, nodes: int, gpus_per_node: int | None, partition: str | None, as_json: bool,
         **opts: Any) -> None:
    """Estimate per-GPU memory (model states + activations) and suggest the smallest ZeRO stage and
    node count that fit."""
    from hpc_aidc.errors import SpecError
    from hpc_aidc.render.table import format_table
    from hpc_aidc.spec.memory import estimate, suggest

    site = site_from(ctx)
    config = load_config(opts)
    part = site.partition(partition)
    gpus = part.gpus_per_node if gpus_per_node is None else gpus_per_node
    if nodes < 1 or gpus < 1:
        raise SpecError(f"Expected --nodes >= 1 and GPUs per node >= 1. Got {nodes} and {gpus}.")
    gpu = site.gpu_types.get(part.gpu_type or "")
    memory = gpu.memory_gib if gpu and gpu.memory_gib else None
    dp = nodes * gpus // config.train.pipeline_stages
    rows = []
    for stage in (0, 1, 2, 3):
        for off in ("none", "optimizer", "optimizer+params"):
            if (off != "none" and stage == 0) or (off == "optimizer+params" and stage != 3):
                continue
            e = estimate(config, dp, stage, off)
            rows.append({"zero": stage, "offload": off, "params_gib": e.params_gib, "grads_gib": e.grads_gib,
                         "optimizer_gib": e.optimizer_gib, "activations_gib": e.activations_gib,
                         "total_gib": e.total_gib, "cpu_gib": e.cpu_gib,
                         "fits": memory is None or e.total_gib <= 0.9 * memory})
    best = suggest(config, gpus, memory, part.nodes) if memory else None
    if as_json:
        echo_json({"params": config.model.n_params, "data_parallel": dp, "gpu_memory_gib": memory, "rows": rows,
                   "suggestion": None if best is None else dict(zip(("nodes", "zero", "offload"), best,
                                                                     strict=True))})
        return
    click.echo(f"{config.model.n_params / 1e6:,.1f}M parameters, {config.train.precision}, micro-batch "
               f"{config.train.micro_batch}, {nodes} node(s) x {gpus} GPU(s) = {dp} data-parallel ranks")
    click.echo(format_table(
        ["ZERO", "OFFLOAD", "PARAMS", "GRADS", "OPTIM", "ACTIV", "TOTAL GiB/GPU", "CPU GiB", "FITS"],
        [(r["zero"], r["offload"], f"{r['params_gib']:.2f}", f"{r['grads_gib']:.2f}", f"{r['optimizer_gib']:.2f}",
          f"{r['activations_gib']:.2f}", f"{r['total_gib']:.2f}", f"{r['cpu_gib']:.2f}",
          "yes" if r["fits"] else "no") for r in rows], right=(2, 3, 4, 5, 6, 7)))
    if memory:
        click.echo(f"suggestion: {best[0]} node(s), ZeRO-{best[1]}, offload {best[2]} ({memory:.0f} GiB GPUs)"
                   if best else f"nothing fits {part.nodes} nodes of {memory:.0f} GiB GPUs; shorten seq_len or "
                   "micro-batch, or use pipeline stages")
