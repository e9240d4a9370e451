"""Read benchmark for packed token datasets: one run, the same bytes, side by side.

    .venv/bin/python bench/data_read/run.py --size-mb 1024

Full-shuffle epochs (median of --repeat interleaved rounds) of 2048-token uint16 sequences (batch 64),
page cache warm and evicted
(posix_fadvise DONTNEED per file; the script checks that it takes effect), for: numpy memmap of the
raw token file (the limit, without and with the same DataLoader), our loader (0 and 2 workers),
zarr-python single-sample reads on our store (a sample of reads: a full epoch takes minutes),
WebDataset (tar shards, shuffle buffer) and MosaicML Streaming (if it imports). Also pack throughput
next to `cp` of the raw bytes. Prints a table and writes bench/results/data_read.json."""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hpc_aidc.data.dataset import ResumableLoader, ShardedDataset, ShardedSampler, collate
from hpc_aidc.data.pack import PackOptions, finalize_pack, pack_local, pack_task, prepare_pack

BATCH = 64


def evict(paths: Iterable[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd) if os.access(path, os.W_OK) else None
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def read_seconds(path: Path) -> float:
    start = time.perf_counter()
    with path.open("rb") as fh:
        while fh.read(16 << 20):
            pass
    return time.perf_counter() - start


class MemmapDataset(Dataset[Any]):
    """The common hand-rolled baseline: a map-style dataset over np.memmap of the raw tokens."""

    def __init__(self, path: Path, seq_len: int) -> None:
        self.path, self.seq_len = path, seq_len
        self.n = path.stat().st_size // 2 // seq_len
        self.mm: np.ndarray[Any, Any] | None = None

    def __len__(self) -> int:
        return self.n

    def _arr(self) -> np.ndarray[Any, Any]:
        if self.mm is None:
            self.mm = np.memmap(self.path, dtype=np.uint16, mode="r", shape=(self.n, self.seq_len))
        return self.mm

    def __getitem__(self, i: int) -> Any:
        return np.array(self._arr()[i])

    def __getitems__(self, idx: list[int]) -> Any:
        return list(self._arr()[np.asarray(idx)])


def timed_epoch(batches: Iterable[Any], sample_bytes: int) -> dict[str, Any]:
    start = time.perf_counter()
    samples = 0
    for batch in batches:
        samples += len(batch)
    dt = time.perf_counter() - start
    return {"samples": samples, "seconds": round(dt, 3), "samples_per_s": round(samples / dt, 1),
            "mb_per_s": round(samples * sample_bytes / dt / 1e6, 1)}


def memmap_direct(raw: Path, seq_len: int, seed: int) -> Iterable[Any]:
    n = raw.stat().st_size // 2 // seq_len
    mm = np.memmap(raw, dtype=np.uint16, mode="r", shape=(n, seq_len))
    order = np.random.default_rng(seed).permutation(n)
    for s in range(0, n - BATCH + 1, BATCH):
        yield torch.from_numpy(mm[order[s:s + BATCH]])


def memmap_loader(raw: Path, seq_len: int, workers: int, seed: int) -> Iterable[Any]:
    ds = MemmapDataset(raw, seq_len)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=BATCH, shuffle=True, generator=gen, num_workers=workers,
                      drop_last=True, collate_fn=collate)


def ours(store: Path, workers: int, seed: int) -> Iterable[Any]:
    ds = ShardedDataset(store, local=False)
    return ResumableLoader(ds, ShardedSampler(ds, rank=0, world_size=1, seed=seed), BATCH, num_workers=workers,
                           persistent_workers=False)


def write_wds(raw: Path, seq_len: int, out: Path, shard_mb: int) -> list[Path]:
    n = raw.stat().st_size // 2 // seq_len
    mm = np.memmap(raw, dtype=np.uint16, mode="r", shape=(n, seq_len))
    per = max(1, shard_mb * (1 << 20) // (seq_len * 2))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, s in enumerate(range(0, n, per)):
        path = out / f"shard-{k:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(s, min(n, s + per)):
                data = mm[i].tobytes()
                info = tarfile.TarInfo(f"{i:09d}.tokens")
                info.size = len(data)
                import io

                tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def wds_loader(paths: list[Path], workers: int, seed: int) -> Iterable[Any]:
    import webdataset as wds

    def decode(sample: dict[str, Any]) -> Any:
        return np.frombuffer(sample["tokens"], dtype=np.uint16)

    pipeline = (wds.WebDataset([str(p) for p in paths], shardshuffle=len(paths), seed=seed,
                               nodesplitter=wds.split_by_node, empty_check=False)
                .shuffle(1000).map(decode).batched(BATCH, collation_fn=lambda b: torch.from_numpy(np.stack(b))))
    return DataLoader(pipeline, batch_size=None, num_workers=workers)


def zarr_sample(store: Path, n: int, reads: int, seed: int, sample_bytes: int) -> dict[str, Any]:
    import zarr

    arr = zarr.open_array(str(store / "samples"), mode="r")
    idx = np.random.default_rng(seed).integers(0, n, reads)
    start = time.perf_counter()
    for i in idx:
        arr[int(i)]
    dt = time.perf_counter() - start
    return {"samples": reads, "seconds": round(dt, 3), "samples_per_s": round(reads / dt, 1),
            "mb_per_s": round(reads * sample_bytes / dt / 1e6, 1), "note": f"{reads} random reads, not a full epoch"}


def streaming_base() -> Any:
    """MosaicML Streaming's `streaming.base` (MDSWriter, StreamingDataset). The package's __init__ also
    imports its vision datasets, which need torchvision, and no torchvision loads next to torch 2.13 CPU
    (PyPI's are CUDA builds); streaming.base needs none of it, so it is imported under a bare package.
    Install: pip install --no-deps mosaicml-streaming==0.13.0 (its pins would downgrade numpy)."""
    spec = importlib.util.find_spec("streaming")
    if spec is None or spec.submodule_search_locations is None:
        raise ModuleNotFoundError("mosaicml-streaming is not installed")
    if "streaming" not in sys.modules:
        package = types.ModuleType("streaming")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["streaming"] = package
    return importlib.import_module("streaming.base")


def write_mds(raw: Path, seq_len: int, out: Path, shard_mib: int) -> list[Path]:
    mds = streaming_base()
    n = raw.stat().st_size // 2 // seq_len
    mm = np.memmap(raw, dtype=np.uint16, mode="r", shape=(n, seq_len))
    with mds.MDSWriter(out=str(out), columns={"tokens": f"ndarray:uint16:{seq_len}"},
                       size_limit=f"{shard_mib}mb") as writer:
        for i in range(n):
            writer.write({"tokens": np.asarray(mm[i])})
    return sorted(out.glob("*.mds"))


def mds_loader(out: Path, workers: int, seed: int, limit: int) -> Iterable[Any]:
    """The first `limit` samples of a shuffled MDS epoch (a full epoch at its rate takes minutes)."""
    mds = streaming_base()
    mds.util.clean_stale_shared_memory()
    dataset = mds.StreamingDataset(local=str(out), shuffle=True, shuffle_seed=seed, batch_size=BATCH)
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=workers,
                        collate_fn=lambda rows: torch.from_numpy(np.stack([r["tokens"] for r in rows])))
    return itertools.islice(loader, limit // BATCH)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--shard-mib", type=float, default=256)
    ap.add_argument("--workdir", default="/tmp/hpcai-bench-data")
    ap.add_argument("--zarr-reads", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=3, help="Rounds of every read; the table has each median.")
    ap.add_argument("--mds-samples", type=int, default=16384, help="Samples read per MosaicML Streaming run.")
    ap.add_argument("--zarr-pack-mb", type=int, default=128, help="Size packed through zarr-python for the record.")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "data_read.json"))
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    seq, sample_bytes = args.seq_len, args.seq_len * 2
    n = args.size_mb * (1 << 20) // sample_bytes
    raw = work / "tokens.bin"
    rng = np.random.default_rng(0)
    with raw.open("wb") as fh:
        for s in range(0, n, 8192):
            rng.integers(0, 50257, (min(8192, n - s), seq), dtype=np.uint16).tofile(fh)
    size = raw.stat().st_size
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                           "platform": platform.platform(), "torch": torch.__version__},
                               "repeat": args.repeat,
                               "dataset": {"samples": n, "seq_len": seq, "dtype": "uint16", "bytes": size,
                                           "batch": BATCH}}
    # pack next to cp (page cache warm for the source in both)
    read_seconds(raw)
    start = time.perf_counter()
    subprocess.run(["cp", str(raw), str(work / "copy.bin")], check=True)
    cp_s = time.perf_counter() - start
    (work / "copy.bin").unlink()
    store = work / "ours.zarr"
    start = time.perf_counter()
    pack_local(PackOptions(inputs=(str(raw),), out=str(store), seq_len=seq, shard_mib=args.shard_mib))
    pack_s = time.perf_counter() - start
    small = work / "small.bin"
    with raw.open("rb") as fin, small.open("wb") as fout:
        fout.write(fin.read(args.zarr_pack_mb << 20))
    zstore = work / "zarr-engine.zarr"
    prepare_pack(PackOptions(inputs=(str(small),), out=str(zstore), seq_len=seq, shard_mib=args.shard_mib))
    start = time.perf_counter()
    pack_task(zstore, 0, 1, "zarr")
    zpack_s = time.perf_counter() - start
    finalize_pack(zstore)
    results["pack"] = {
        "cp_mb_per_s": round(size / cp_s / 1e6, 1),
        "pack_direct_mb_per_s": round(size / pack_s / 1e6, 1),
        "pack_direct_vs_cp": round(cp_s / pack_s, 3),
        "pack_zarr_engine_mb_per_s": round(small.stat().st_size / zpack_s / 1e6, 1),
        "note": "pack includes a sha256 of every shard; zarr engine measured on --zarr-pack-mb",
    }
    wds_paths = write_wds(raw, seq, work / "wds", int(args.shard_mib))

    # does eviction work here? a warm read vs a read right after DONTNEED
    warm_s = read_seconds(raw)
    evict([raw])
    cold_s = read_seconds(raw)
    results["eviction"] = {"warm_read_s": round(warm_s, 3), "after_fadvise_read_s": round(cold_s, 3),
                           "effective": cold_s > 1.5 * warm_s}

    runs: dict[str, Callable[[], Iterable[Any]]] = {
        "memmap (no DataLoader, the limit)": lambda: memmap_direct(raw, seq, 1),
        "memmap Dataset, 0 workers": lambda: memmap_loader(raw, seq, 0, 1),
        "memmap Dataset, 2 workers": lambda: memmap_loader(raw, seq, 2, 1),
        "hpc-aidc loader, 0 workers": lambda: ours(store, 0, 1),
        "hpc-aidc loader, 2 workers": lambda: ours(store, 2, 1),
        "WebDataset (shuffle 1000), 0 workers": lambda: wds_loader(wds_paths, 0, 1),
        "WebDataset (shuffle 1000), 2 workers": lambda: wds_loader(wds_paths, 2, 1),
    }
    files_of = {"memmap": [raw], "hpc-aidc": files_under(store), "WebDataset": wds_paths}
    notes: dict[str, str] = {}
    try:
        files_of["MosaicML"] = write_mds(raw, seq, work / "mds", int(args.shard_mib))
        for workers in (0, 2):
            name = f"MosaicML Streaming (MDS), {workers} workers"
            runs[name] = functools.partial(mds_loader, work / "mds", workers, 1, args.mds_samples)
            notes[name] = f"first {args.mds_samples} samples of a shuffled epoch"
        results["mosaicml_streaming"] = "run (streaming.base, without torchvision)"
    except Exception as exc:  # it fails in several ways when its dependency chain is incomplete
        results["mosaicml_streaming"] = f"not run: {type(exc).__name__}: {exc}"
    rounds: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for round_no in range(args.repeat):  # interleaved rounds, so a noisy moment hits every reader alike
        for cache in ("warm", "evicted"):
            for name, make in runs.items():
                group = next(k for k in files_of if name.startswith(k))
                if cache == "warm":
                    for p in files_of[group]:
                        read_seconds(p)
                else:
                    evict(files_of[group])
                row = timed_epoch(make(), sample_bytes)
                if name in notes:
                    row["note"] = notes[name]
                rounds.setdefault((cache, name), []).append(row)
                print(f"round {round_no + 1} {cache:8} {name:40} {row['samples_per_s']:>12,.0f} samples/s "
                      f"{row['mb_per_s']:>9,.1f} MB/s", flush=True)
            for p in files_under(store):
                read_seconds(p) if cache == "warm" else evict([p])
            zname = "zarr-python (our store), single-sample reads"
            rounds.setdefault((cache, zname), []).append(zarr_sample(store, n, args.zarr_reads, 1, sample_bytes))
    table: list[dict[str, Any]] = []
    for (cache, name), rows in sorted(rounds.items(), key=lambda kv: kv[0][0] == "evicted"):
        median = sorted(rows, key=lambda r: r["seconds"])[len(rows) // 2]
        table.append({"reader": name, "cache": cache, **median,
                      "samples_per_s_all": [r["samples_per_s"] for r in rows]})
    limit = {c: next(r["samples_per_s"] for r in table if r["cache"] == c and "limit" in r["reader"]) for c in
             ("warm", "evicted")}
    for row in table:
        row["vs_memmap_limit"] = round(row["samples_per_s"] / limit[row["cache"]], 3)
    results["reads"] = table

    print()
    print(f"{'cache':8} {'reader':48} {'samples/s':>12} {'MB/s':>9} {'x limit':>8}")
    for row in table:
        print(f"{row['cache']:8} {row['reader']:48} {row['samples_per_s']:>12,.0f} {row['mb_per_s']:>9,.1f} "
              f"{row['vs_memmap_limit']:>8.3f}")
    print(f"\npack: {results['pack']}\neviction: {results['eviction']}\nstreaming: {results['mosaicml_streaming']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
