"""`hpcai data`: pack, verify, info and stage Zarr v3 sharded datasets. numpy/zarr load inside commands."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import click

from hpc_aidc.cli.common import echo_json, json_option, site_from
from hpc_aidc.errors import ConfigError


@click.group()
def data() -> None:
    """Pack, verify, inspect and stage Zarr v3 sharded datasets."""


class _NoBar:
    def update(self, n: int) -> None:
        """Progress goes nowhere when the output is JSON."""


@contextlib.contextmanager
def _bar(length: int, label: str, quiet: bool) -> Iterator[Any]:
    if quiet or not sys.stderr.isatty():  # no bar in logs and pipes: errors stay one line
        yield _NoBar()
        return
    with click.progressbar(length=length, label=label, file=sys.stderr) as bar:
        yield bar


def _extras(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"Expected --extra NAME=FILE.npy. Got {value!r} instead. Example: --extra ids=ids.npy.")
        out[name] = path
    return out


@data.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(), help="Output store (a folder, e.g. corpus.zarr).")
@click.option("--kind", type=click.Choice(["auto", "tokens", "samples"]), default="auto", show_default=True)
@click.option("--seq-len", type=int, default=2048, show_default=True, help="Tokens per sample (token data).")
@click.option("--dtype", type=click.Choice(["auto", "uint16", "uint32"]), default="auto", show_default=True,
              help="Stored token dtype (auto: by vocabulary size).")
@click.option("--token-dtype", default="uint16", show_default=True, help="dtype of raw .bin token files.")
@click.option("--tokenizer", default=None, help="For text: 'bytes' (built in) or a local tokenizers JSON file.")
@click.option("--eos-id", type=int, default=None, help="End-of-document token id (tokenizers files).")
@click.option("--text-key", default="text", show_default=True, help="JSONL field holding the text.")
@click.option("--vocab-size", type=int, default=None, help="Vocabulary of pre-tokenized input (recorded).")
@click.option("--shard-mib", type=float, default=256.0, show_default=True, help="Target shard file size.")
@click.option("--chunk-samples", type=int, default=0, help="Samples per inner chunk (0: about 4 KiB).")
@click.option("--compression", type=click.Choice(["none", "zstd", "blosc"]), default="none", show_default=True)
@click.option("--labels", type=click.Path(), default=None, help="A .npy of per-sample labels.")
@click.option("--extra", multiple=True, metavar="NAME=FILE.npy", help="Another per-sample array (repeatable).")
@click.option("--engine", type=click.Choice(["direct", "zarr"]), default="direct", show_default=True,
              help="Shard writer: direct (fast, zarr-compatible) or through zarr-python.")
@click.option("--array", "array_tasks", type=int, default=0,
              help="Pack as a Slurm job array of N tasks, then a finalize job.")
@click.option("-A", "--account", default=None, help="Slurm account (with --array).")
@click.option("-p", "--partition", default=None, help="Slurm partition (with --array).")
@click.option("--time", "time_limit", default="01:00:00", show_default=True, help="Time per task (with --array).")
@click.option("--wait/--no-wait", default=False, help="With --array: wait for the jobs to finish.")
@json_option
@click.pass_context
def pack(ctx: click.Context, /, **options: Any) -> None:
    """Pack INPUTS (.bin/.npy tokens, .txt/.jsonl text, .npy sample stacks, image folders) into a Zarr v3
    sharded store. Re-running an interrupted pack finishes only the missing shards."""
    from hpc_aidc.data.pack import finalize_pack, pack_task, prepare_pack

    opts = pack_options(options)
    out, array_tasks, as_json = options["out"], options["array_tasks"], options["as_json"]
    engine, account, partition = options["engine"], options["account"], options["partition"]
    time_limit, wait = options["time_limit"], options["wait"]
    if array_tasks < 0:
        raise ConfigError(f"Expected --array N with N >= 1. Got {array_tasks}. Use --array 4, or leave it out.")
    plan = prepare_pack(opts)
    if array_tasks:
        from hpc_aidc.ids import current_user
        from hpc_aidc.scheduler.data_pack import plan_pack
        from hpc_aidc.scheduler.submit import submit

        site = site_from(ctx)
        tasks = min(array_tasks, plan.num_shards)
        request = plan_pack(site, out, tasks, user=current_user(), engine=engine, account=account,
                            partition=partition, time_limit=time_limit)
        done = submit(site, request)
        submitted = {"array_job": done.job_ids[0], "tasks": tasks, "finalize_job": done.job_ids[1],
                     "folder": str(request.folders[0]), "out": request.output}
        if as_json and not wait:
            echo_json(submitted)
        elif not as_json:
            click.echo(f"submitted pack array {submitted['array_job']} ({tasks} tasks) and finalize "
                       f"job {submitted['finalize_job']}; logs in {submitted['folder']}")
        if wait:
            _wait_for_pack(submitted, as_json)
        return
    with _bar(plan.num_shards, "packing shards", as_json) as bar:
        pack_task(out, 0, 1, engine, progress=bar.update)
    manifest = finalize_pack(out)
    summary: dict[str, Any] = {"path": out, "num_samples": manifest.num_samples, "num_shards": manifest.num_shards,
               "bytes": sum(f.nbytes for f in manifest.files)}
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"packed {manifest.num_samples} samples in {manifest.num_shards} shards "
                   f"({summary['bytes'] / 2**20:.1f} MiB) to {out}")


def _wait_for_pack(submitted: dict[str, Any], as_json: bool) -> None:
    """Until the finalize job ends (Slurm cancels it when a task fails); exit 1 unless the store is whole."""
    from hpc_aidc.scheduler.wait import wait_for_job

    record = wait_for_job(str(submitted["finalize_job"]))
    if as_json:
        echo_json({**submitted, "state": record.state})
    elif record.state == "COMPLETED":
        click.echo(f"packed {submitted['out']}")
    if record.state != "COMPLETED":
        click.echo(f"hpcai: error: the pack's finalize job {submitted['finalize_job']} ended {record.state}: see the "
                   f"logs in {submitted['folder']}, then run the same `hpcai data pack` again to finish it.", err=True)
        sys.exit(1)


def pack_options(o: dict[str, Any]) -> Any:
    """The PackOptions of `hpcai data pack`'s options (also a pipeline's data-pack stage)."""
    from hpc_aidc.data.pack import PackOptions

    return PackOptions(inputs=tuple(o["inputs"]), out=o["out"], kind=o["kind"], seq_len=o["seq_len"],
                       dtype=o["dtype"], token_dtype_in=o["token_dtype"], tokenizer=o["tokenizer"],
                       eos_id=o["eos_id"], text_key=o["text_key"], vocab_size=o["vocab_size"],
                       shard_mib=o["shard_mib"], chunk_samples=o["chunk_samples"], compression=o["compression"],
                       labels=o["labels"], extras=_extras(tuple(o["extra"])))


@data.command()
@click.argument("path", type=click.Path())
@click.option("--quick", is_flag=True, help="Check sizes and indexes only, not the sha256 of every shard.")
@json_option
def verify(path: str, quick: bool, as_json: bool) -> None:
    """Check every shard of a packed store (present, size, sha256, index); names any bad shard."""
    from hpc_aidc.data.spec import read_manifest
    from hpc_aidc.data.verify import raise_if_bad, verify_store

    count = len(read_manifest(path).files)
    with _bar(count, "verifying", as_json) as bar:
        report = verify_store(path, full=not quick, progress=bar.update)
    if as_json:
        echo_json({"path": path, "ok": report.ok, "checked": report.checked, "problems": list(report.problems)})
    raise_if_bad(report)  # a bad store exits 2 with one line on stderr, JSON or not
    if as_json:
        return
    click.echo(f"ok: {report.checked} shard files verified in {path}")


@data.command()
@click.argument("path", type=click.Path())
@json_option
def info(path: str, as_json: bool) -> None:
    """Summarize a packed store: samples, shards, arrays, tokenizer, size."""
    from hpc_aidc.data.verify import store_info

    summary = store_info(path)
    if as_json:
        echo_json(summary)
        return
    for key in ("path", "kind", "num_samples", "num_shards", "shard_samples", "compression", "num_tokens",
                "dropped_tokens", "num_documents"):
        click.echo(f"{key:15} {summary[key]}")
    click.echo(f"{'size':15} {summary['bytes'] / 2**20:.1f} MiB")
    for name, arr in summary["arrays"].items():
        click.echo(f"{'array':15} {name}: {arr['dtype']} {tuple(arr['sample_shape'])} per sample, "
                   f"{arr['chunk_samples']} per chunk")
    if summary["tokenizer"]:
        click.echo(f"{'tokenizer':15} {summary['tokenizer']}")


@data.command()
@click.argument("path", type=click.Path())
@click.option("--scratch", type=click.Path(), default=None,
              help="Node-local folder (default: the site profile's scratch, else $TMPDIR).")
@json_option
@click.pass_context
def stage(ctx: click.Context, path: str, scratch: str | None, as_json: bool) -> None:
    """Copy a packed store to node-local scratch for this user and job, verified; once per node per job.
    Run it on every node (e.g. `srun --ntasks-per-node=1 hpcai data stage PATH`)."""
    from hpc_aidc.data.spec import read_manifest
    from hpc_aidc.data.stage import stage as do_stage

    if scratch is None:
        with contextlib.suppress(Exception):  # no site profile here: stage.py falls back to $TMPDIR
            scratch = str(site_from(ctx).scratch)
    count = len(read_manifest(path).files)
    with _bar(count, "staging", as_json) as bar:
        local, copied = do_stage(path, scratch, progress=bar.update)
    if as_json:
        echo_json({"source": path, "local": str(local), "copied": copied})
    else:
        click.echo(str(local))
