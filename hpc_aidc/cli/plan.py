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
    """Estimate per-GPU memory at its peak (model states, gradients with DeepSpeed's fp32 copies,
    communication buckets, activations, CUDA/NCCL runtime) and host memory per node, and suggest the
    smallest ZeRO stage and node count that fit."""
    from hpc_aidc.errors import SpecError
    from hpc_aidc.render.table import format_table
    from hpc_aidc.spec.memory import FRAGMENTATION, GPU_USABLE, RUNTIME_GIB, estimate, host_gib_per_node, suggest
    from hpc_aidc.spec.train import resolve_precision

    site = site_from(ctx)
    part = site.partition(partition)
    gpus = part.gpus_per_node if gpus_per_node is None else gpus_per_node
    if nodes < 1 or gpus < 1:
        raise SpecError(f"Expected --nodes >= 1 and GPUs per node >= 1. Got {nodes} and {gpus}.")
    gpu = site.gpu_types.get(part.gpu_type or "")
    config = resolve_precision(load_config(opts), gpu.precisions if gpu else None)
    memory = gpu.memory_gib if gpu and gpu.memory_gib else None
    host = part.mem_per_node_mb / 1024 if part.mem_per_node_mb else None
    base = part.host_mb_per_rank / 1024 if part.host_mb_per_rank else None
    dp = nodes * gpus // config.train.pipeline_stages
    rows = []
    for stage in (0, 1, 2, 3):
        for off in ("none", "optimizer", "optimizer+params"):
            if (off != "none" and stage == 0) or (off == "optimizer+params" and stage != 3):
                continue
            e = estimate(config, dp, stage, off)
            host_node = host_gib_per_node(config, e, gpus, on_gpu=True, base_gib=base)
            rows.append({"zero": stage, "offload": off, "params_gib": e.params_gib, "grads_gib": e.grads_gib,
                         "optimizer_gib": e.optimizer_gib, "activations_gib": e.activations_gib,
                         "buffers_gib": e.buffers_gib, "runtime_gib": e.runtime_gib,
                         "allocated_gib": e.allocated_gib, "total_gib": e.total_gib, "cpu_gib": e.cpu_gib,
                         "peak": e.peak,
                         "host_gib_per_node": host_node,
                         "fits": (memory is None or e.fits(memory)) and (host is None or host_node <= host)})
    best = suggest(config, gpus, memory, part.nodes, host, base) if memory else None
    if as_json:
        echo_json({"params": config.model.n_params, "precision": config.train.precision, "data_parallel": dp,
                   "gpu_memory_gib": memory, "gpu_usable": GPU_USABLE, "host_memory_gib_per_node": host, "rows": rows,
                   "suggestion": None if best is None else dict(zip(("nodes", "zero", "offload"), best,
                                                                     strict=True))})
        return
    click.echo(f"{config.model.n_params / 1e6:,.1f}M parameters, {config.train.precision}, micro-batch "
               f"{config.train.micro_batch}, {nodes} node(s) x {gpus} GPU(s) = {dp} data-parallel ranks")
    click.echo(format_table(
        ["ZERO", "OFFLOAD", "PARAMS", "GRADS", "OPTIM", "ACTIV", "BUFFERS", "PEAK", "TOTAL GiB/GPU", "HOST GiB/NODE",
         "FITS"],
        [(r["zero"], r["offload"], f"{r['params_gib']:.2f}", f"{r['grads_gib']:.2f}", f"{r['optimizer_gib']:.2f}",
          f"{r['activations_gib']:.2f}", f"{r['buffers_gib']:.2f}", r["peak"], f"{r['total_gib']:.2f}",
          f"{r['host_gib_per_node']:.1f}", "yes" if r["fits"] else "no") for r in rows],
        right=(2, 3, 4, 5, 6, 8, 9)))
    within_host = f" and {host:.0f} GiB host memory per node" if host else ""
    click.echo("PEAK: the moment the parts are taken at (A: the backward pass starts, B: during it, C: the "
               "optimizer step)")
    click.echo(f"TOTAL: allocations x {1 + FRAGMENTATION:.2f} (fragmentation) + {RUNTIME_GIB} GiB CUDA/NCCL "
               f"runtime; fits: within {GPU_USABLE:.0%} of the GPU{within_host}")
    if memory:
        click.echo(f"suggestion: {best[0]} node(s), ZeRO-{best[1]}, offload {best[2]} ({memory:.0f} GiB GPUs)"
                   if best else f"nothing fits {part.nodes} nodes of {memory:.0f} GiB GPUs; shorten seq_len or "
                   "micro-batch, or use pipeline stages")
